"""BYOL (Grill et al., NeurIPS 2020): an online network predicts a slow EMA target's projection of another view."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.momentum import cosine_momentum, ema_update, frozen_copy
from objectives.registry import MethodConfig, SSLMethod, register


class BYOLConfig(MethodConfig):
    method: Literal["byol"] = "byol"
    base_momentum: float = Field(0.99, gt=0, lt=1, description="target EMA momentum at the first step (solo-learn CIFAR: 0.99)")
    final_momentum: float = Field(1.0, gt=0, le=1, description="target EMA momentum at the last step, reached along a cosine (BYOL: 1.0)")
    predictor_hidden_dim: int | None = Field(
        None, gt=0, description="predictor hidden width; null = model.projector.hidden_dim (the paper and solo-learn use equal widths, 4096)")


@float32_loss
def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's normalised mean squared error, ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z) (Grill et al. 2020, eq. 2).

    p: [N, D] online predictions, z: [N, D] target projections of the other view (computed without
    grad). Returns the mean over the N images: 0 when aligned, 4 when opposite.
    """
    return (2 - 2 * F.cosine_similarity(p, z, dim=1)).mean()


@register
class BYOL(SSLMethod):
    name = "byol"
    Config = BYOLConfig
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 1.0, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
        "objective.base_momentum": {"type": "categorical", "choices": [0.9, 0.96, 0.99, 0.996]},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: BYOLConfig, projector):
        super().__init__(backbone, feature_dim)
        self.base_momentum, self.final_momentum = cfg.base_momentum, cfg.final_momentum
        self.projector = mlp(feature_dim, projector.hidden_dim, projector.output_dim)
        predictor_hidden = cfg.predictor_hidden_dim or projector.hidden_dim
        self.predictor = mlp(projector.output_dim, predictor_hidden, projector.output_dim)
        # The target: momentum copies of backbone and projector (no predictor), trained only by EMA.
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        p1, p2 = (self.predictor(self.projector(self.backbone(v))) for v in views)
        with torch.no_grad():
            z1, z2 = (self.target_projector(self.target_backbone(v)) for v in views)
        # Symmetrised as in the paper: each view's prediction regresses the other view's target.
        return regression_loss(p1, z2) + regression_loss(p2, z1)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)
