"""VICReg (Bardes, Ponce & LeCun, ICLR 2022): invariance, variance and covariance terms on two views' embeddings."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.registry import MethodConfig, SSLMethod, register


class VICRegConfig(MethodConfig):
    method: Literal["vicreg"] = "vicreg"
    invariance_weight: float = Field(25.0, gt=0, description="lambda, weight of the invariance (MSE) term (paper and solo-learn: 25)")
    variance_weight: float = Field(25.0, gt=0, description="mu, weight of the variance hinge (paper and solo-learn: 25)")
    covariance_weight: float = Field(1.0, gt=0, description="nu, weight of the covariance term (paper and solo-learn: 1)")


def invariance_loss(z1: Tensor, z2: Tensor) -> Tensor:
    """s(Z, Z'): mean squared distance between the two views' embeddings, z1, z2: [N, D] (eq. 5)."""
    return F.mse_loss(z1, z2)


def variance_loss(z: Tensor, eps: float = 1e-4) -> Tensor:
    """v(Z): mean over dimensions of max(0, 1 - sqrt(Var(z_j) + eps)), z: [N, D], unbiased variance (eq. 1)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1 - std).mean()


def covariance_loss(z: Tensor) -> Tensor:
    """c(Z): sum of squared off-diagonal entries of the covariance matrix of z: [N, D], divided by D (eq. 4)."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


@float32_loss
def vicreg_loss(z1: Tensor, z2: Tensor, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0) -> Tensor:
    """The weighted sum of the three terms over z1, z2: [N, D], N >= 2.

    As the official code: the variance term is averaged over the two views, the covariance term summed.
    """
    if z1.shape != z2.shape:
        raise ValueError(f"expected embeddings of the same shape, but got {z1.shape=} and {z2.shape=}")
    if z1.ndim != 2 or len(z1) < 2:
        raise ValueError(f"expected [N, D] embeddings with N >= 2 (variances need 2 samples), but got {z1.shape=}")
    return (invariance_weight * invariance_loss(z1, z2)
            + variance_weight * (variance_loss(z1) + variance_loss(z2)) / 2
            + covariance_weight * (covariance_loss(z1) + covariance_loss(z2)))


@register
class VICReg(SSLMethod):
    name = "vicreg"
    Config = VICRegConfig
    collapse_check = False  # the variance term holds each dimension's std at 1 by construction
    # lr per 256 images. Its recipe is LARS 0.3; under plain SGD the large loss scale diverges there
    # (VICReg on digits, SGD 0.3: non-finite features; 0.1 trains), hence an SGD-safe range.
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
        "objective.invariance_weight": {"type": "float", "low": 5.0, "high": 50.0, "log": True},
        "model.projector.output_dim": {"type": "categorical", "choices": [512, 2048]},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: VICRegConfig, projector):
        super().__init__(backbone, feature_dim)
        self.weights = (cfg.invariance_weight, cfg.variance_weight, cfg.covariance_weight)
        # The paper's expander: 3 layers (Linear-BN-ReLU twice, then Linear), as lightly and solo-learn.
        self.projector = mlp(feature_dim, projector.hidden_dim, projector.output_dim, n_layers=3)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return vicreg_loss(z1, z2, *self.weights)
