"""SimSiam (Chen & He, CVPR 2021): a predictor matches the other view's projection, which gets no gradient."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.registry import MethodConfig, SSLMethod, register


class SimSiamConfig(MethodConfig):
    method: Literal["simsiam"] = "simsiam"
    predictor_hidden_dim: int | None = Field(
        None, gt=0, description="predictor bottleneck width; null = model.projector.output_dim // 4 (the paper's 2048 -> 512)")


@float32_loss
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """D(p, stopgrad(z)) = -cos(p, z), averaged over the batch (Chen & He 2021, eqs. 1 and 3).

    p: [N, D] predictions, z: [N, D] projections of the other view. z is detached here: the
    stop-gradient is what keeps SimSiam from collapsing, so it belongs to the loss. Minimum -1.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


@register
class SimSiam(SSLMethod):
    name = "simsiam"
    Config = SimSiamConfig
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 1.0, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SimSiamConfig, projector):
        super().__init__(backbone, feature_dim)
        out = projector.output_dim
        # The paper's projector: 3 layers, BN on every layer including the output (no ReLU there).
        self.projector = nn.Sequential(mlp(feature_dim, projector.hidden_dim, out, n_layers=3), nn.BatchNorm1d(out))
        self.predictor = mlp(out, cfg.predictor_hidden_dim or max(1, out // 4), out)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
