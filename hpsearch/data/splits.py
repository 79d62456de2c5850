"""The three splits of a study: unlabelled pretraining, labelled probe, held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from hpsearch.data.cache import cache_dir, load_split
from hpsearch.data.sources import DATASETS


@dataclass
class Splits:
    pretrain: Tensor  # [N, C, H, W] uint8, unlabelled
    probe_images: Tensor  # [P, C, H, W] uint8
    probe_labels: Tensor  # [P] int64
    eval_images: Tensor  # [E, C, H, W] uint8
    eval_labels: Tensor  # [E] int64
    mean: Tensor  # [C] per-channel mean of the pretraining images in [0, 1]
    std: Tensor  # [C]

    @property
    def channels(self) -> int:
        return self.pretrain.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.probe_labels, self.eval_labels]).max()) + 1

    def to(self, device) -> "Splits":
        return Splits(**{k: v.to(device) for k, v in vars(self).items()})





def stratified_pick(labels: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..len(labels)-1 into (rest, picked) with `size` picked, each class in proportion.

    Per-class quotas use largest remainders, so they sum to exactly `size`.
    """
    classes, class_counts = np.unique(labels, return_counts=True)
    exact = class_counts * size / len(labels)
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(quotas - exact)[: size - quotas.sum()]] += 1
    picked = np.concatenate([rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quotas)])
    return np.setdiff1d(np.arange(len(labels)), picked), np.sort(picked)


def make_splits(images: Tensor, labels: Tensor, *, probe_size: int, eval_size: int,
                pretrain_size: int | None, seed: int) -> Splits:
    """For a source without a test split: eval is held out of everything; probe and pretrain come from the rest.

    The probe set is a labelled subset of the pretraining pool, as in the usual SSL protocol where
    the encoder has seen the (unlabelled) images the probe is later trained on.
    """
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    pool, held_out = stratified_pick(y, eval_size, rng)
    if probe_size >= len(pool):
        raise ValueError(f"probe_size {probe_size} must be smaller than the {len(pool)} images left after the eval split")
    _, probe = stratified_pick(y[pool], probe_size, rng)
    probe = pool[probe]
    if pretrain_size is not None and pretrain_size < len(pool):
        pool = np.sort(rng.choice(pool, size=pretrain_size, replace=False))
    pool, probe, held_out = (torch.from_numpy(i) for i in (pool, probe, held_out))
    return _splits(images[pool], images[probe], labels[probe], images[held_out], labels[held_out])


def make_train_test_splits(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], unlabeled: list[Tensor], *,
                           probe_size: int, eval_size: int | None, pretrain_size: int | None, seed: int) -> Splits:
    """For a source with a test split: eval is a stratified subset of test (all of it when eval_size is
    None), probe a stratified subset of train, pretraining is train plus `unlabeled`, subsampled to
    pretrain_size. All draws come from one generator seeded with `seed`, in that order."""
    rng = np.random.default_rng(seed)
    (train_x, train_y), (test_x, test_y) = train, test
    held_out = np.arange(len(test_y)) if eval_size is None else stratified_pick(test_y.numpy(), eval_size, rng)[1]
    probe = torch.from_numpy(stratified_pick(train_y.numpy(), probe_size, rng)[1])
    channels = max(t.shape[1] for t in (train_x, test_x, *unlabeled))
    train_x, test_x, *unlabeled = [t.expand(-1, channels, -1, -1) for t in (train_x, test_x, *unlabeled)]
    pretrain = torch.cat([train_x, *unlabeled]) if unlabeled else train_x
    if pretrain_size is not None and pretrain_size < len(pretrain):
        pretrain = pretrain[torch.from_numpy(np.sort(rng.choice(len(pretrain), size=pretrain_size, replace=False)))]
    held_out = torch.from_numpy(held_out)
    return _splits(pretrain.contiguous(), train_x[probe].contiguous(), train_y[probe],
                   test_x[held_out].contiguous(), test_y[held_out])


def _splits(pretrain: Tensor, probe_images: Tensor, probe_labels: Tensor, eval_images: Tensor, eval_labels: Tensor) -> Splits:
    """Assemble Splits with the pretraining images' per-channel mean and std, computed exactly from a
    histogram of the uint8 values (~7x faster than converting 50,000 CIFAR images to float)."""
    counts = torch.stack([torch.bincount(pretrain[:, c].reshape(-1), minlength=256) for c in range(pretrain.shape[1])])
    counts, value = counts.double(), torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(dim=1)
    mean = counts @ value / n
    std = ((counts @ value.square() - n * mean.square()) / (n - 1)).clamp_min(0).sqrt()
    return Splits(pretrain=pretrain, probe_images=probe_images, probe_labels=probe_labels, eval_images=eval_images,
                  eval_labels=eval_labels, mean=mean.float(), std=std.float().clamp_min(1e-3))


def load_splits(data_cfg) -> Splits:
    """Load `data_cfg.dataset` at `data_cfg.image_size` and split it as the study file says.

    Raises ValueError with a one-line message naming the field and what was expected when the
    data is missing or the split sizes do not fit it.
    """
    name = data_cfg.dataset.lower()
    source = DATASETS[name]
    size, eval_size, probe_size = data_cfg.image_size, data_cfg.eval_size, data_cfg.probe_size
    if not source.has_test_split:
        images, labels = source.read(None, "all", size)
        if eval_size is None:
            raise ValueError(f"data.eval_size: {source.title} has no test split; expected the number of images to hold out, got null")
        if eval_size + probe_size >= len(labels):
            raise ValueError(f"data: eval_size + probe_size ({eval_size} + {probe_size}) must be below "
                             f"the {len(labels)} images of {source.title!r}")
        return make_splits(images, labels, probe_size=probe_size, eval_size=eval_size,
                           pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
    if data_cfg.root is None:
        raise ValueError(f"data.root: required for dataset {name!r}; expected a folder holding {source.layout('<root>')}")
    root = Path(data_cfg.root).expanduser().resolve()
    where = dict(download=data_cfg.download, directory=cache_dir(data_cfg.cache_dir))
    train = load_split(name, root, "train", size, **where)
    test = load_split(name, root, "test", size, **where)
    if eval_size is not None and eval_size > len(test[1]):
        raise ValueError(f"data.eval_size: expected at most the {len(test[1])} test images of {source.title} "
                         f"(or null for all of them), got {eval_size}")
    if probe_size > len(train[1]):
        raise ValueError(f"data.probe_size: expected at most the {len(train[1])} labelled train images of {source.title}, "
                         f"got {probe_size}")
    unlabeled = [load_split(name, root, split, size, **where)[0] for split in source.pretrain_only_splits(root)]
    return make_train_test_splits(train, test, unlabeled, probe_size=probe_size, eval_size=eval_size,
                                  pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
