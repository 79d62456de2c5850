"""Datasets by the name study files use (`data.dataset`) and the three splits a study needs.

A study sees its data as three splits: an unlabelled pretraining set (labels never used), a small
labelled probe set (for the kNN proxy and for training the final linear probe) and a held-out
evaluation set (only the final metric is measured on it). Images stay uint8 until augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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


def load_digits(image_size: int) -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 handwritten digit scans (16 grey levels), upsampled to image_size."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return images.clamp(0, 1).mul(255).round().to(torch.uint8), torch.from_numpy(digits.target).long()


DATASETS: dict[str, Callable[[int], tuple[Tensor, Tensor]]] = {
    "digits": load_digits,
}


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
    """Stratified, seeded splits: eval is held out from everything; probe and pretrain come from the rest.

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
    pretrain = images[torch.from_numpy(pool)]
    as_float = pretrain.float().div(255)
    return Splits(
        pretrain=pretrain,
        probe_images=images[torch.from_numpy(probe)],
        probe_labels=labels[torch.from_numpy(probe)],
        eval_images=images[torch.from_numpy(held_out)],
        eval_labels=labels[torch.from_numpy(held_out)],
        mean=as_float.mean(dim=(0, 2, 3)),
        std=as_float.std(dim=(0, 2, 3)).clamp_min(1e-3),
    )


def load_splits(data_cfg) -> Splits:
    """Load `data_cfg.dataset` at `data_cfg.image_size` and split it as the study file says."""
    images, labels = DATASETS[data_cfg.dataset](data_cfg.image_size)
    total = len(labels)
    if data_cfg.eval_size + data_cfg.probe_size >= total:
        raise ValueError(
            f"data: eval_size + probe_size ({data_cfg.eval_size} + {data_cfg.probe_size}) must be below "
            f"the {total} images of {data_cfg.dataset!r}"
        )
    return make_splits(images, labels, probe_size=data_cfg.probe_size, eval_size=data_cfg.eval_size,
                       pretrain_size=data_cfg.pretrain_size, seed=data_cfg.split_seed)
