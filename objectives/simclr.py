"""SimCLR (Chen et al., ICML 2020): contrast two views of each image against the rest of the batch."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from objectives.heads import mlp
from objectives.precision import float32_loss
from objectives.registry import MethodConfig, SSLMethod, register


class SimCLRConfig(MethodConfig):
    method: Literal["simclr"] = "simclr"
    temperature: float = Field(0.2, gt=0, description="NT-Xent softmax temperature (solo-learn CIFAR recipe: 0.2)")


@float32_loss
def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Normalised-temperature cross entropy over a batch of positive pairs.

    z1, z2: [N, D] projections of two views; row i of z1 and row i of z2 are positives, every
    other one of the 2N rows is a negative. Returns the mean loss over the 2N anchors. Runs in
    float32 under autocast (objectives.precision).
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    # An embedding is trivially most similar to itself: remove self-pairs from the softmax.
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    n = len(z1)
    # Built on the device: a CPU index copied over would be a blocking host-to-device copy every step.
    positives = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(logits, positives)


@register
class SimCLR(SSLMethod):
    name = "simclr"
    Config = SimCLRConfig
    # GUIDE ranges at CIFAR scale; lr is per 256 images for the default SGD optimiser.
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 3.0, "log": True},
        "objective.temperature": {"type": "float", "low": 0.07, "high": 0.5, "log": True},
        "augment.crop_scale.0": {"type": "float", "low": 0.08, "high": 0.35},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: SimCLRConfig, projector):
        super().__init__(backbone, feature_dim)
        self.temperature = cfg.temperature
        self.projector = mlp(feature_dim, projector.hidden_dim, projector.output_dim)

    def training_loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return nt_xent(z1, z2, self.temperature)
