"""Barlow Twins (Zbontar et al., ICML 2021): drive the cross-correlation of two views' embeddings to the identity."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.registry import MethodConfig, SSLMethod, register


class BarlowTwinsConfig(MethodConfig):
    method: Literal["barlow_twins"] = "barlow_twins"
    off_diagonal_weight: float = Field(0.0051, gt=0, description="lambda, weight of the redundancy term (paper and solo-learn: 0.0051)")
    scale_loss: float = Field(0.1, gt=0, description="overall factor on the loss (solo-learn CIFAR recipe: 0.1)")


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """C_ij = sum_b z1n_bi z2n_bj / N of the batch-standardised embeddings z1, z2: [N, D] -> [D, D].

    Standardised as BatchNorm1d(affine=False) in training mode does (biased variance, eps 1e-5), so
    C is each pair of dimensions' Pearson correlation across the batch.
    """
    def standardise(z: Tensor) -> Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)

    return standardise(z1).T @ standardise(z2) / len(z1)


@float32_loss
def barlow_twins_loss(z1: Tensor, z2: Tensor, off_diagonal_weight: float = 0.0051) -> Tensor:
    """sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2 (Zbontar et al. 2021, eq. 1); z1, z2: [N, D], N >= 2."""
    if z1.shape != z2.shape:
        raise ValueError(f"expected embeddings of the same shape, but got {z1.shape=} and {z2.shape=}")
    if z1.ndim != 2 or len(z1) < 2:
        raise ValueError(f"expected [N, D] embeddings with N >= 2 (correlations need 2 samples), but got {z1.shape=}")
    c = cross_correlation(z1, z2)
    diagonal = torch.diagonal(c)
    on = (1 - diagonal).pow(2).sum()
    off = c.pow(2).sum() - diagonal.pow(2).sum()
    return on + off_diagonal_weight * off


@register
class BarlowTwins(SSLMethod):
    name = "barlow_twins"
    Config = BarlowTwinsConfig
    collapse_check = False  # the diagonal term holds every dimension's correlation at 1 by construction
    # lr per 256 images. Its recipe is LARS 0.3; plain SGD needs less (digits, 15 epochs: LARS 0.3
    # reaches kNN 0.82, SGD 0.3 stays near the random encoder's 0.70), hence an SGD-safe range.
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
        "objective.off_diagonal_weight": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
        "model.projector.output_dim": {"type": "categorical", "choices": [512, 2048]},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: BarlowTwinsConfig, projector):
        super().__init__(backbone, feature_dim)
        self.off_diagonal_weight, self.scale_loss = cfg.off_diagonal_weight, cfg.scale_loss
        # 3 layers (Linear-BN-ReLU twice, then Linear), as the paper and solo-learn.
        self.projector = mlp(feature_dim, projector.hidden_dim, projector.output_dim, n_layers=3)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return self.scale_loss * barlow_twins_loss(z1, z2, self.off_diagonal_weight)
