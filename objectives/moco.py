"""MoCo v2 (He et al., CVPR 2020; Chen et al. 2020): contrast against a queue of keys from a momentum encoder."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from objectives.precision import float32_loss, float32_region
from objectives.momentum import cosine_momentum, ema_update, frozen_copy
from objectives.registry import MethodConfig, SSLMethod, register


class MoCoConfig(MethodConfig):
    method: Literal["moco"] = "moco"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (MoCo v2 and solo-learn CIFAR: 0.2)")
    queue_size: int = Field(4096, gt=0, description="negative keys kept from past batches (solo-learn CIFAR: 32768; smaller for small datasets)")
    base_momentum: float = Field(0.99, gt=0, lt=1, description="key-encoder EMA momentum at the first step (solo-learn CIFAR: 0.99)")
    final_momentum: float = Field(0.999, gt=0, le=1, description="key-encoder momentum at the last step, along a cosine (solo-learn CIFAR: 0.999)")


@float32_loss
def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """InfoNCE of each query against its key (the positive) and the queue (the negatives) (He et al. 2020, eq. 1).

    q: [N, D] queries, k: [N, D] keys of the other view, queue: [K, D] past keys; all L2-normalised.
    valid: optional [K] bool, the queue entries that hold keys (the others are left out).
    Returns the mean over N of -log(exp(q.k/T) / (exp(q.k/T) + sum_j exp(q.queue_j/T))).
    """
    positive = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
    negatives = q @ queue.T  # [N, K]
    if valid is not None:
        negatives = negatives.masked_fill(~valid, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's head: Linear-ReLU-Linear, no BatchNorm (Chen et al. 2020)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@register
class MoCo(SSLMethod):
    """MoCo v2 made symmetric as solo-learn's `mocov2plus`: both views are queries and keys, and both
    views' keys are enqueued (so the queue holds queue_size / (2 * batch) past steps).

    Single-device caveat: without MoCo's shuffled BatchNorm across GPUs, the key encoder's batch
    statistics are shared by a query's positive key but not by the queued negatives.
    """

    name = "moco"
    Config = MoCoConfig
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 1.0, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
        "objective.temperature": {"type": "float", "low": 0.07, "high": 0.5, "log": True},
        "objective.base_momentum": {"type": "categorical", "choices": [0.9, 0.99, 0.996]},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: MoCoConfig, projector):
        super().__init__(backbone, feature_dim)
        self.temperature = cfg.temperature
        self.base_momentum, self.final_momentum = cfg.base_momentum, cfg.final_momentum
        self.projector = projection_head(feature_dim, projector.hidden_dim, projector.output_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        # Buffers, so checkpoints capture them. MoCo starts from random unit vectors as negatives;
        # they reward collapsing every embedding onto one direction (alignment with nothing to push
        # away from), which an lr of 0.3 does within a few steps (measured on digits: kNN stayed
        # below the random encoder's for 100 steps). So an entry counts as a negative only once a
        # real key has been written there.
        self.register_buffer("queue", torch.zeros(cfg.queue_size, projector.output_dim))
        self.register_buffer("queue_valid", torch.zeros(cfg.queue_size, dtype=torch.bool))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: Tensor | None = None  # this step's keys, enqueued in on_step_end

    def training_loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        with torch.no_grad():
            y1, y2 = (self.key_projector(self.key_backbone(v)) for v in views)
        with float32_region(z1):  # normalised in float32: the logits q.k / T are part of the loss
            q1, q2, k1, k2 = (F.normalize(z.float(), dim=1) for z in (z1, z2, y1, y2))
        # Enqueueing here would modify `queue` in place while autograd still holds it for backward.
        self._pending_keys = torch.cat([k1, k2])
        t, queue, valid = self.temperature, self.queue, self.queue_valid
        return (info_nce(q1, k2, queue, t, valid) + info_nce(q2, k1, queue, t, valid)) / 2

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        momentum = cosine_momentum(step, total_steps, self.base_momentum, self.final_momentum)
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_projector, self.projector, momentum)
        if self._pending_keys is not None:
            self._enqueue(self._pending_keys)
            self._pending_keys = None

    def _enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest entries with `keys` [B, D], wrapping around; the pointer stays on the
        device (index arithmetic on tensors, no `.item()`). Only the newest queue_size keys fit."""
        size = len(self.queue)
        keys = keys[-size:]
        index = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % size
        self.queue.index_copy_(0, index, keys.to(self.queue.dtype))
        self.queue_valid.index_fill_(0, index, True)
        self.queue_ptr.copy_((self.queue_ptr + len(keys)) % size)
