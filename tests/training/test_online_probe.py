"""The online linear probe: trained from the SSL step's own forward pass, never changing training,
on features paired with their own images' labels for every method."""

import dataclasses

import pytest
import torch

import hpsearch
from tests.helpers import tiny_study
from hpsearch.data import load_splits
from hpsearch.training.online_probe import OnlineProbe
from hpsearch.training.pretrain import Pretraining
from hpsearch.config.study_attrs import proxy_history
from hpsearch.config.schema import AugmentConfig, ProjectorConfig, StudyConfig
from objectives import METHODS


def session(tmp_path, splits=None, epochs=3):
    cfg = StudyConfig.model_validate(tiny_study(tmp_path, training={"epochs": epochs, "batch_size": 128}))
    splits = splits or load_splits(cfg.data)
    return Pretraining(cfg, splits, torch.device("cpu"), seed=0), splits


def test_learns_above_chance_from_the_labelled_pretraining_images(tmp_path):
    run, _ = session(tmp_path, epochs=8)
    accuracies = [run.train_epoch().online_accuracy for _ in range(8)]
    assert all(0 <= a <= 1 for a in accuracies)
    assert accuracies[-1] > 0.25  # 10 digit classes: chance is 0.1 (measured: 0.09 -> 0.37 in 8 epochs)
    assert accuracies[-1] > accuracies[0]


def test_never_changes_what_the_backbone_learns(tmp_path):
    with_probe, splits = session(tmp_path)
    without, _ = session(tmp_path, dataclasses.replace(splits, pretrain_labels=None))
    assert without.online_probe is None and with_probe.online_probe is not None
    for run in (with_probe, without):
        run.train_epoch()
    for a, b in zip(with_probe.method.state_dict().values(), without.method.state_dict().values()):
        assert torch.equal(a, b)


def test_unlabelled_images_are_skipped():
    # One step on a batch with unlabelled rows (-1) equals one step on its labelled rows alone.
    features = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, -1, 2, 1, -1, -1, 2, 0])
    mixed, alone = (OnlineProbe(torch.nn.Identity(), 5, 3, torch.device("cpu")) for _ in range(2))
    for probe, x, y in ((mixed, features, labels), (alone, features[labels >= 0], labels[labels >= 0])):
        probe._capture(torch.nn.Identity(), (), x)
        probe.step(y)
    assert torch.allclose(mixed.head.weight, alone.head.weight) and torch.allclose(mixed.head.bias, alone.head.bias)
    assert int(mixed.seen) == 5 and int(mixed.correct) == int(alone.correct)
    unlabelled = OnlineProbe(torch.nn.Identity(), 5, 3, torch.device("cpu"))
    unlabelled._capture(torch.nn.Identity(), (), features)
    unlabelled.step(torch.full((8,), -1))
    assert torch.isfinite(unlabelled.head.weight).all() and unlabelled.epoch_accuracy() is None


def test_its_accuracy_is_a_proxy_kept_with_the_trial(tmp_path):
    study = hpsearch.run_study(tiny_study(tmp_path / "runs", n_trials=1))
    history = proxy_history(study.trials[0])
    assert all(0 <= entry["online_linear_accuracy"] <= 1 for entry in history)


class MeanBrightness(torch.nn.Module):
    """A backbone whose feature is each image's mean pixel: a constant image keeps its identity
    through crops and rotations, so a feature row says which image it came from."""

    feature_dim = 1

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.mean(dim=(2, 3)) * self.scale


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_pairs_each_feature_with_its_own_image_label(name):
    # Issue 10, item 3: rotation reorders its batch before the backbone, and the probe paired
    # image i's label with another image's features (online accuracy at chance).
    n, size = 32, 16
    shades = torch.arange(n, dtype=torch.uint8) * 8  # image i is the constant 8 * i
    images = shades.view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    method_cls = METHODS[name]
    method = method_cls(MeanBrightness(), 1, method_cls.Config(), ProjectorConfig(hidden_dim=16, output_dim=8))
    probe = OnlineProbe.of(method, num_classes=n, device=torch.device("cpu"))
    # Crops (and DINO's local crops) only: every view of a constant image is that constant.
    crops_only = AugmentConfig(flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0)
    views = method.make_views(images, crops_only, size, torch.Generator().manual_seed(0))
    method.train()
    method.training_loss([(v - 0.5) / 0.25 for v in views])
    features, labels = probe.batch(torch.arange(n))  # label i = image i
    # The rule: the feature row the probe trains with label j is image j's.
    expected = (shades.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(features[:, 0], expected[labels], atol=1e-4, rtol=0)
    assert sorted(labels.tolist()) == list(range(n))  # every image once


def test_pretraining_gives_the_probe_the_methods_order(tmp_path):
    cfg = StudyConfig.model_validate(tiny_study(tmp_path, objective={"method": "rotation"}))
    run = Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), seed=0)
    # The rule: the trainer's probe reads the method's declared order (the same wiring as above).
    assert run.online_probe._order() == run.method.first_call_order


def test_a_session_is_freed_by_reference_counting(tmp_path):
    # Issue 14, item 7: a reference cycle (the backbone's hook holds the probe; the probe must not
    # hold the method strongly) would keep a trial's model on the GPU until a full collection.
    import gc
    import weakref

    cfg = StudyConfig.model_validate(tiny_study(tmp_path, objective={"method": "rotation"}))
    splits = load_splits(cfg.data)
    Pretraining(cfg, splits, torch.device("cpu"), seed=0)  # the first of a process may be held by torch's lazy imports
    gc.collect()
    gc.disable()
    try:
        run = Pretraining(cfg, splits, torch.device("cpu"), seed=0)
        run.train_epoch()
        model = weakref.ref(run.method)
        del run
        # The rule: dropping the last reference frees the model at once, without the collector.
        assert model() is None
    finally:
        gc.enable()
