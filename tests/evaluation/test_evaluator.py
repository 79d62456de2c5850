"""The Evaluator measures what its names say: the embedding proxies on images of every class, the
final metric on the split asked for."""

import torch

from hpsearch.data import Splits
from hpsearch.evaluation import Evaluator
from hpsearch.study.studyfile import load_study
from hpsearch.training.pretrain import Pretraining
from tests.helpers import tiny_study


def class_sorted_splits(n_per_class: int = 60, classes: int = 10) -> Splits:
    """Probe images listed class by class, as an ImageFolder lists them; each class its own grey level."""
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = (labels * 25).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 12, 12).contiguous()
    return Splits(pretrain=images, probe_images=images, probe_labels=labels, val_images=images[:20],
                  val_labels=labels[:20], test_images=images[-20:], test_labels=labels[-20:],
                  mean=torch.full((1,), 0.5), std=torch.full((1,), 0.25))


def test_embedding_proxies_see_every_class_of_a_class_sorted_probe_split(tmp_path):
    splits = class_sorted_splits()
    evaluator = Evaluator(load_study(tiny_study(tmp_path))[0], splits, seed=0)
    subset = evaluator.view_subset(256)
    # Rule: a stratified subset, 25-26 images of each of the 10 classes (the first 256 would be 4 classes).
    assert set(torch.bincount(splits.probe_labels[subset], minlength=10).tolist()) == {25, 26}
    assert len(subset) == 256 and len(set(subset.tolist())) == 256
    assert torch.equal(subset, Evaluator(evaluator.cfg, splits, seed=5).view_subset(256))  # fixed, not per trial


def test_the_final_metric_is_measured_on_the_split_asked_for(tmp_path):
    cfg, _ = load_study(tiny_study(tmp_path))
    splits = class_sorted_splits()
    session = Pretraining(cfg, splits, torch.device("cpu"), seed=0)
    evaluator = Evaluator.of(session)
    val = evaluator.final_metric(session.method.backbone, "val").scores
    test = evaluator.final_metric(session.method.backbone, "test").scores
    assert sum(val.support.values()) == 20 and set(val.per_class) <= {0}  # val: class 0's images
    assert sum(test.support.values()) == 20 and set(test.per_class) <= {9}  # test: class 9's
