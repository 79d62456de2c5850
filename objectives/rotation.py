"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018): classify which of 4 rotations an image shows."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.registry import MethodConfig, SSLMethod, register


class RotationConfig(MethodConfig):
    method: Literal["rotation"] = "rotation"


def rotation_order(n: int, device: torch.device) -> Tensor:
    """The image of a batch of n that each row of `rotate_batch`'s output shows: 0, 4, 8, ..., then
    1, 5, 9, ..., then 2, ... and 3, ... (on `device`, built there: no copy)."""
    return torch.cat([torch.arange(k, n, 4, device=device) for k in range(4)])


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate image i of x: [N, C, H, H] by k_i * 90 degrees counter-clockwise, k_i = i % 4.

    Returns (rotated [N, C, H, H], k [N] long), reordered as the images with k = 0, then 1, 2, 3
    (row r shows image rotation_order(N)[r]).
    training_loss receives no generator, so k comes from the position in the batch; the runner
    draws a fresh batch order every epoch, so each image still sees every rotation over training
    while every batch stays balanced across the 4 classes. Slices, not per-image ops: no sync.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square images, but got {x.shape=}")
    parts = [torch.rot90(x[k::4], k, dims=(-2, -1)) for k in range(4)]
    labels = torch.cat([torch.full((len(p),), k, dtype=torch.long, device=x.device) for k, p in enumerate(parts)])
    return torch.cat(parts), labels


@float32_loss
def rotation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the 4-way rotation classifier; logits [N, 4], labels [N] in 0..3."""
    return F.cross_entropy(logits, labels)


@register
class Rotation(SSLMethod):
    name = "rotation"
    Config = RotationConfig
    n_views = 1
    collapse_check = False  # no embedding to collapse: a classifier on the backbone features
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 1.0, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: RotationConfig, projector):
        super().__init__(backbone, feature_dim)
        # A hidden layer keeps the rotation-specific decision out of the backbone's last features.
        self.classifier = mlp(feature_dim, projector.hidden_dim, 4)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        rotated, labels = rotate_batch(views[0])
        return rotation_loss(self.classifier(self.backbone(rotated)), labels)

    def first_call_order(self, n: int, device: torch.device) -> Tensor:
        return rotation_order(n, device)  # the backbone sees the batch grouped by rotation
