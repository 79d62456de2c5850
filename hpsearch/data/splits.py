"""The three splits of a study: unlabelled pretraining, labelled probe, held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from hpsearch.data.cache import cache_dir, cache_path, load_or_make, load_split, load_subset, selection_key
from hpsearch.data.sources import DATASETS, Source
from hpsearch.data.streaming import StreamedImages, pixel_summary


@dataclass
class Splits:
    pretrain: Tensor | StreamedImages  # [N, C, H, W] uint8, unlabelled; fetch batches with pretrain_batches
    probe_images: Tensor  # [P, C, H, W] uint8
    probe_labels: Tensor  # [P] int64
    eval_images: Tensor  # [E, C, H, W] uint8
    eval_labels: Tensor  # [E] int64
    mean: Tensor  # [C] per-channel mean of the pretraining images in [0, 1]
    std: Tensor  # [C]
    pretrain_labels: Tensor | None = None  # [N] int64, -1 where unlabelled: only the online linear probe reads it

    @property
    def channels(self) -> int:
        return self.pretrain.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.probe_labels, self.eval_labels]).max()) + 1

    def to(self, device) -> "Splits":
        return Splits(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


def pretrain_batches(pretrain: Tensor | StreamedImages, order: Tensor, start: int, batch_size: int) -> Iterator[Tensor]:
    """The pretraining batches of one epoch, uint8 [batch_size, C, H, W] on the images' device: the
    images at `order` (the epoch's shuffle), from batch `start` to the last full batch. The same
    batches whether the images are held in memory or stream from their files."""
    if isinstance(pretrain, Tensor):
        order = order.to(pretrain.device)
        return (pretrain[order[i * batch_size:(i + 1) * batch_size]] for i in range(start, len(order) // batch_size))
    return pretrain.batches(order, start, batch_size)


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
    return _splits(images[pool], images[probe], labels[probe], images[held_out], labels[held_out], labels[pool])


def make_train_test_splits(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], unlabeled: list[Tensor], *,
                           probe_size: int, eval_size: int | None, pretrain_size: int | None, seed: int) -> Splits:
    """For a source with a test split: eval is a stratified subset of test (all of it when eval_size is
    None), probe a stratified subset of train, pretraining is train plus `unlabeled`, subsampled to
    pretrain_size. All draws come from one generator seeded with `seed`, in that order (`_draw`)."""
    (train_x, train_y), (test_x, test_y) = train, test
    n_pool = len(train_y) + sum(len(t) for t in unlabeled)
    held_out, probe, chosen = (None if i is None else torch.from_numpy(i) for i in _draw(
        train_y.numpy(), test_y.numpy(), n_pool, probe_size=probe_size, eval_size=eval_size,
        pretrain_size=pretrain_size, seed=seed))
    channels = max(t.shape[1] for t in (train_x, test_x, *unlabeled))
    train_x, test_x, *unlabeled = [t.expand(-1, channels, -1, -1) for t in (train_x, test_x, *unlabeled)]
    pretrain = torch.cat([train_x, *unlabeled]) if unlabeled else train_x
    pretrain_labels = _pool_labels(train_y, [len(t) for t in unlabeled])
    if chosen is not None:
        pretrain, pretrain_labels = pretrain[chosen], pretrain_labels[chosen]
    return _splits(pretrain.contiguous(), train_x[probe].contiguous(), train_y[probe],
                   test_x[held_out].contiguous(), test_y[held_out], pretrain_labels)


def _pool_labels(train_y, unlabeled_sizes: list[int]) -> Tensor:
    """Labels of the pretraining pool, train then unlabelled images (-1)."""
    return torch.cat([torch.as_tensor(train_y, dtype=torch.int64), torch.full((sum(unlabeled_sizes),), -1)])


def _draw(train_y: np.ndarray, test_y: np.ndarray, n_pool: int, *, probe_size: int, eval_size: int | None,
          pretrain_size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Positions of the eval images in test, of the probe images in train, and of the pretraining
    images in train + unlabelled (`n_pool` images; None = all of them), drawn in that order."""
    rng = np.random.default_rng(seed)
    held_out = np.arange(len(test_y)) if eval_size is None else stratified_pick(test_y, eval_size, rng)[1]
    probe = stratified_pick(train_y, probe_size, rng)[1]
    chosen = None
    if pretrain_size is not None and pretrain_size < n_pool:
        chosen = np.sort(rng.choice(n_pool, size=pretrain_size, replace=False))
    return held_out, probe, chosen


def _splits(pretrain: Tensor, probe_images: Tensor, probe_labels: Tensor, eval_images: Tensor, eval_labels: Tensor,
            pretrain_labels: Tensor) -> Splits:
    """Assemble Splits with the pretraining images' per-channel mean and std, computed exactly from a
    histogram of the uint8 values (~7x faster than converting 50,000 CIFAR images to float)."""
    counts = torch.stack([torch.bincount(pretrain[:, c].reshape(-1), minlength=256) for c in range(pretrain.shape[1])])
    mean, std = _mean_std(counts)
    return Splits(pretrain=pretrain, probe_images=probe_images, probe_labels=probe_labels, eval_images=eval_images,
                  eval_labels=eval_labels, mean=mean, std=std, pretrain_labels=pretrain_labels)


def _mean_std(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std in [0, 1] from [C, 256] counts of each uint8 value."""
    counts, value = counts.double(), torch.arange(256, dtype=torch.float64) / 255
    n = counts.sum(dim=1)
    mean = counts @ value / n
    std = ((counts @ value.square() - n * mean.square()) / (n - 1)).clamp_min(0).sqrt()
    return mean.float(), std.float().clamp_min(1e-3)


def _check_sizes(source: Source, n_train: int, n_test: int, eval_size: int | None, probe_size: int) -> None:
    if eval_size is not None and eval_size > n_test:
        raise ValueError(f"data.eval_size: expected at most the {n_test} test images of {source.title} "
                         f"(or null for all of them), got {eval_size}")
    if probe_size > n_train:
        raise ValueError(f"data.probe_size: expected at most the {n_train} labelled train images of {source.title}, "
                         f"got {probe_size}")


def should_stream(data_cfg, source: Source, n_pool: int) -> bool:
    """Whether the pretraining images stream (data.stream): `always`, or `auto` when the decoded
    images, N x 3 x image_size^2 bytes (colour assumed), would exceed data.memory_limit_gb."""
    if not source.streams or data_cfg.stream == "never":
        return False
    n = n_pool if data_cfg.pretrain_size is None else min(n_pool, data_cfg.pretrain_size)
    return data_cfg.stream == "always" or n * 3 * data_cfg.image_size ** 2 > data_cfg.memory_limit_gb * 1e9


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
    directory = cache_dir(data_cfg.cache_dir)
    if source.streams and data_cfg.stream != "never":
        listed = {split: source.files(root, split) for split in ("train", "test", *source.pretrain_only_splits(root))}
        n_pool = sum(len(labels) for split, (_, labels) in listed.items() if split != "test")
        if should_stream(data_cfg, source, n_pool):
            return _streamed_splits(data_cfg, name, root, listed, directory)
    where = dict(download=data_cfg.download, directory=directory)
    train = load_split(name, root, "train", size, **where)
    test = load_split(name, root, "test", size, **where)
    _check_sizes(source, len(train[1]), len(test[1]), eval_size, probe_size)
    unlabeled = [load_split(name, root, split, size, **where)[0] for split in source.pretrain_only_splits(root)]
    return make_train_test_splits(train, test, unlabeled, probe_size=probe_size, eval_size=eval_size,
                                  pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)


def _streamed_splits(data_cfg, name: str, root: Path, listed: dict[str, tuple[list[str], list[int]]],
                     directory: Path) -> Splits:
    """Splits whose pretraining images stream from their files. The same images, in the same order,
    as `make_train_test_splits` gives in memory: the draws are `_draw`'s, the probe and eval images
    are decoded into memory (and cached), and the mean and std come from an exact count of the
    pretraining images' values, made once in DataLoader workers and cached."""
    source, size = DATASETS[name], data_cfg.image_size
    (train_files, train_y), (test_files, test_y) = listed["train"], listed["test"]
    _check_sizes(source, len(train_y), len(test_y), data_cfg.eval_size, data_cfg.probe_size)
    pool = [f for split, (files, _) in listed.items() if split != "test" for f in files]
    held_out, probe, chosen = _draw(np.asarray(train_y), np.asarray(test_y), len(pool), probe_size=data_cfg.probe_size,
                                    eval_size=data_cfg.eval_size, pretrain_size=data_cfg.pretrain_size,
                                    seed=data_cfg.split_seed)
    fingerprints = {split: source.check(root, split, False) for split in listed}
    pool_labels = _pool_labels(train_y, [len(files) for split, (files, _) in listed.items() if split not in ("train", "test")])
    if chosen is not None:
        pool_labels = pool_labels[torch.from_numpy(chosen)]
    if chosen is None:
        pretrain_files, others = pool, test_files
    else:
        picked = np.zeros(len(pool), dtype=bool)
        picked[chosen] = True
        pretrain_files = [pool[i] for i in chosen]
        others = [f for f, p in zip(pool, picked) if not p] + test_files
    stats_path = cache_path(directory, name, root, "pretrain-stats", size,
                            [fingerprints, None if chosen is None else selection_key(chosen)])

    def summarise() -> dict:
        channels, counts = pixel_summary(pretrain_files, others, size, data_cfg.workers)
        return {"channels": torch.tensor(channels), "counts": counts}

    stats = load_or_make(stats_path, summarise)
    channels = int(stats["channels"])
    subset = dict(image_size=size, directory=directory)
    probe_images = load_subset(name, root, "train", files=train_files, indices=probe,
                               fingerprint=fingerprints["train"], **subset)
    eval_images = load_subset(name, root, "test", files=test_files, indices=held_out,
                              fingerprint=fingerprints["test"], **subset)
    mean, std = _mean_std(stats["counts"])
    return Splits(pretrain=StreamedImages(pretrain_files, size, channels, data_cfg.workers),
                  probe_images=probe_images.expand(-1, channels, -1, -1).contiguous(),
                  probe_labels=torch.tensor(train_y, dtype=torch.int64)[torch.from_numpy(probe)],
                  eval_images=eval_images.expand(-1, channels, -1, -1).contiguous(),
                  eval_labels=torch.tensor(test_y, dtype=torch.int64)[torch.from_numpy(held_out)], mean=mean, std=std,
                  pretrain_labels=pool_labels)
