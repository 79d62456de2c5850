"""The online linear probe: trained from the SSL step's own forward pass, never changing training."""

import dataclasses

import torch

import hpsearch
from tests.helpers import tiny_study
from hpsearch.data import load_splits
from hpsearch.training.online_probe import OnlineProbe
from hpsearch.training.pretrain import Pretraining
from hpsearch.config.schema import StudyConfig


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
    history = study.trials[0].user_attrs["proxy_history"]
    assert all(0 <= entry["online_linear_accuracy"] <= 1 for entry in history)
