"""The splits of a study: unlabelled pretraining images, the labelled probe split (the study's label
budget: what the kNN proxy, the linear probe and the online probe learn from), the validation split
(labelled images of the train pool the trial value and every pruning decision are measured on;
their labels train nothing) and the test split (held out of everything; read only to report the
chosen configurations)."""

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
    val_images: Tensor  # [V, C, H, W] uint8, from the train pool, disjoint from the probe split
    val_labels: Tensor  # [V] int64
    test_images: Tensor  # [T, C, H, W] uint8, never in pretraining
    test_labels: Tensor  # [T] int64
    mean: Tensor  # [C] per-channel mean of the pretraining images in [0, 1]
    std: Tensor  # [C]
    # [N] int64: the label of each pretraining image that is in the probe split, -1 for every other
    # (so the online linear probe learns from the study's label budget only).
    pretrain_labels: Tensor | None = None
    class_names: tuple[str, ...] | None = None  # label index -> name, when the source names its classes

    @property
    def channels(self) -> int:
        return self.pretrain.shape[1]

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.probe_labels, self.val_labels, self.test_labels]).max()) + 1

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """(images, labels) of the `val` or `test` split."""
        if name not in ("val", "test"):
            raise ValueError(f"expected split 'val' or 'test', got {name!r}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")

    def to(self, device) -> "Splits":
        return Splits(**{k: v.to(device) if hasattr(v, "to") else v for k, v in vars(self).items()})


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


def make_splits(images: Tensor, labels: Tensor, *, probe_size: int, val_size: int, test_size: int,
                pretrain_size: int | None, seed: int) -> Splits:
    """For a source without a test split: the test split is held out of everything; probe, validation
    and pretraining come from the rest (the pool), the validation images disjoint from the probe's.

    The probe and validation images are part of the unlabelled pretraining pool, as in the usual SSL
    protocol where the encoder has seen the (unlabelled) images the probe is later trained on; only
    the probe's labels train anything. Draws, in order: test, probe, pretraining subsample,
    validation (so adding the validation split left the pretraining images as they were).
    """
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    pool, held_out = stratified_pick(y, test_size, rng)
    if probe_size + val_size >= len(pool):
        raise ValueError(f"data: probe_size + val_size ({probe_size} + {val_size}) must be below the {len(pool)} "
                         f"images left after the test split")
    rest, probe = stratified_pick(y[pool], probe_size, rng)
    chosen = pool
    if pretrain_size is not None and pretrain_size < len(pool):
        chosen = np.sort(rng.choice(pool, size=pretrain_size, replace=False))
    val = pool[rest[stratified_pick(y[pool][rest], val_size, rng)[1]]]
    probe = pool[probe]
    pretrain_labels = torch.where(torch.from_numpy(np.isin(chosen, probe)), labels[torch.from_numpy(chosen)], -1)
    chosen, probe, val, held_out = (torch.from_numpy(i) for i in (chosen, probe, val, held_out))
    return _splits(images[chosen], images[probe], labels[probe], images[val], labels[val], images[held_out],
                   labels[held_out], pretrain_labels)


def make_train_test_splits(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], unlabeled: list[Tensor], *,
                           probe_size: int, val_size: int, test_size: int | None, pretrain_size: int | None,
                           seed: int) -> Splits:
    """For a source with a test split: the test split is a stratified subset of test (all of it when
    test_size is None), probe and validation are disjoint stratified subsets of train, pretraining is
    train plus `unlabeled`, subsampled to pretrain_size. All draws come from one generator seeded
    with `seed` (`_draw`)."""
    (train_x, train_y), (test_x, test_y) = train, test
    n_pool = len(train_y) + sum(len(t) for t in unlabeled)
    held_out, probe, chosen, val = (None if i is None else torch.from_numpy(i) for i in _draw(
        train_y.numpy(), test_y.numpy(), n_pool, probe_size=probe_size, val_size=val_size, test_size=test_size,
        pretrain_size=pretrain_size, seed=seed))
    channels = max(t.shape[1] for t in (train_x, test_x, *unlabeled))
    train_x, test_x, *unlabeled = [t.expand(-1, channels, -1, -1) for t in (train_x, test_x, *unlabeled)]
    pretrain = torch.cat([train_x, *unlabeled]) if unlabeled else train_x
    pretrain_labels = _pool_labels(train_y, probe, [len(t) for t in unlabeled])
    if chosen is not None:
        pretrain, pretrain_labels = pretrain[chosen], pretrain_labels[chosen]
    return _splits(pretrain.contiguous(), train_x[probe].contiguous(), train_y[probe], train_x[val].contiguous(),
                   train_y[val], test_x[held_out].contiguous(), test_y[held_out], pretrain_labels)


def _pool_labels(train_y, probe: Tensor, unlabeled_sizes: list[int]) -> Tensor:
    """Labels of the pretraining pool (train, then unlabelled images): a train image's label when it
    is in the probe split (`probe`: positions in train), -1 for every other image."""
    labels = torch.full((len(train_y) + sum(unlabeled_sizes),), -1, dtype=torch.int64)
    labels[probe] = torch.as_tensor(train_y, dtype=torch.int64)[probe]
    return labels


def _draw(train_y: np.ndarray, test_y: np.ndarray, n_pool: int, *, probe_size: int, val_size: int,
          test_size: int | None, pretrain_size: int | None,
          seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Positions of the test images in test, of the probe images in train, of the pretraining images
    in train + unlabelled (`n_pool` images; None = all of them) and of the validation images in
    train (disjoint from the probe's), drawn in that order: adding the validation split, drawn
    last, left the other splits as they were."""
    rng = np.random.default_rng(seed)
    held_out = np.arange(len(test_y)) if test_size is None else stratified_pick(test_y, test_size, rng)[1]
    rest, probe = stratified_pick(train_y, probe_size, rng)
    chosen = None
    if pretrain_size is not None and pretrain_size < n_pool:
        chosen = np.sort(rng.choice(n_pool, size=pretrain_size, replace=False))
    val = rest[stratified_pick(train_y[rest], val_size, rng)[1]]
    return held_out, probe, chosen, val


def _splits(pretrain: Tensor, probe_images: Tensor, probe_labels: Tensor, val_images: Tensor, val_labels: Tensor,
            test_images: Tensor, test_labels: Tensor, pretrain_labels: Tensor) -> Splits:
    """Assemble Splits with the pretraining images' per-channel mean and std, computed exactly from a
    histogram of the uint8 values (~7x faster than converting 50,000 CIFAR images to float)."""
    counts = torch.stack([torch.bincount(pretrain[:, c].reshape(-1), minlength=256) for c in range(pretrain.shape[1])])
    mean, std = _mean_std(counts)
    return Splits(pretrain=pretrain, probe_images=probe_images, probe_labels=probe_labels, val_images=val_images,
                  val_labels=val_labels, test_images=test_images, test_labels=test_labels, mean=mean, std=std,
                  pretrain_labels=pretrain_labels)


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


def val_size(data_cfg, n_labelled: int, n_test: int) -> int:
    """`data.val_size`, or when null as many images as the test split has (`n_test`), capped at the
    `n_labelled` labelled pool images outside the probe split. Raises ValueError naming the field."""
    room = n_labelled - data_cfg.probe_size
    if data_cfg.val_size is None:
        if room < 1:
            raise ValueError(f"data.probe_size: {data_cfg.probe_size} leaves none of the {n_labelled} labelled "
                             f"images for the validation split; expected at most {n_labelled - 1}")
        return min(n_test, room)
    if data_cfg.val_size > room:
        raise ValueError(f"data.val_size: expected at most {room} (the {n_labelled} labelled images not in the "
                         f"probe split), got {data_cfg.val_size}")
    return data_cfg.val_size


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
        return make_splits(images, labels, probe_size=probe_size, val_size=val_size(data_cfg, len(labels) - eval_size, eval_size),
                           test_size=eval_size, pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
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
    n_test = len(test[1]) if eval_size is None else eval_size
    splits = make_train_test_splits(train, test, unlabeled, probe_size=probe_size,
                                    val_size=val_size(data_cfg, len(train[1]), n_test), test_size=eval_size,
                                    pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
    splits.class_names = source.class_names(root)
    return splits


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
    n_test = len(test_y) if data_cfg.eval_size is None else data_cfg.eval_size
    held_out, probe, chosen, val = _draw(np.asarray(train_y), np.asarray(test_y), len(pool),
                                         probe_size=data_cfg.probe_size, val_size=val_size(data_cfg, len(train_y), n_test),
                                         test_size=data_cfg.eval_size, pretrain_size=data_cfg.pretrain_size,
                                         seed=data_cfg.split_seed)
    fingerprints = {split: source.check(root, split, False) for split in listed}
    pool_labels = _pool_labels(train_y, torch.from_numpy(probe),
                               [len(files) for split, (files, _) in listed.items() if split not in ("train", "test")])
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
    decoded = {}
    for split_name, split, files, indices in (("probe", "train", train_files, probe), ("val", "train", train_files, val),
                                              ("test", "test", test_files, held_out)):
        images = load_subset(name, root, split, files=files, indices=indices, fingerprint=fingerprints[split], **subset)
        labels = torch.tensor(train_y if split == "train" else test_y, dtype=torch.int64)[torch.from_numpy(indices)]
        decoded[f"{split_name}_images"] = images.expand(-1, channels, -1, -1).contiguous()
        decoded[f"{split_name}_labels"] = labels
    mean, std = _mean_std(stats["counts"])
    return Splits(pretrain=StreamedImages(pretrain_files, size, channels, data_cfg.workers), **decoded,
                  mean=mean, std=std, pretrain_labels=pool_labels, class_names=source.class_names(root))
