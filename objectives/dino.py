"""DINO (Caron et al., ICCV 2021): a student matches a centred, sharpened EMA teacher over multi-crop views."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from hpsearch import augment
from objectives.precision import float32_loss, float32_region
from objectives.momentum import cosine_momentum, ema_update, frozen_copy
from objectives.registry import MethodConfig, SSLMethod, register


class DINOConfig(MethodConfig):
    method: Literal["dino"] = "dino"
    temperature: float = Field(0.1, gt=0, description="student softmax temperature (paper: 0.1)")
    teacher_temperature: float = Field(0.07, gt=0, description="teacher temperature after warm-up (paper: 0.04-0.07)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, description="teacher temperature at the first step (paper: 0.04)")
    warmup_teacher_fraction: float = Field(0.3, ge=0, le=1, description="share of the steps the teacher temperature warms up over (paper: 30 of 100 epochs)")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="EMA momentum of the teacher-output centre (paper: 0.9)")
    base_momentum: float = Field(0.996, gt=0, lt=1, description="teacher EMA momentum at the first step (paper: 0.996)")
    final_momentum: float = Field(1.0, gt=0, le=1, description="teacher EMA momentum at the last step, along a cosine (paper: 1.0)")
    out_dim: int = Field(1024, gt=0, description="prototypes K (paper: 65536; small here for CPU runs)")
    n_local_crops: int = Field(2, ge=0, description="small local views seen by the student only (paper: 6-10)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="area range of local crops (paper: 0.05-0.4)")

    @field_validator("local_crop_scale")
    @classmethod
    def _ordered_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"expected 0 < low <= high <= 1, got {list(value)}")
        return value


@float32_loss
def teacher_distribution(logits: Tensor, center: Tensor, temperature: Tensor | float) -> Tensor:
    """Centre, then sharpen: softmax((logits - center) / temperature) over the K prototypes; logits [..., K]."""
    return F.softmax((logits - center) / temperature, dim=-1)


@float32_loss
def dino_loss(student_logits: Tensor, teacher_probs: Tensor, student_temperature: float) -> Tensor:
    """Cross-entropy H(P_t, P_s) averaged over every (teacher view, other student view) pair (Caron et al. 2021, eq. 3).

    student_logits: [V, N, K] head outputs of all V views (the G global ones first);
    teacher_probs: [G, N, K] the teacher's distributions for the global views. The pairs where
    student and teacher see the same view are left out. Returns the mean over the G*V - G pairs
    and the N images. Runs in float32 under autocast (objectives.precision).
    """
    g, v, n = len(teacher_probs), len(student_logits), student_logits.shape[1]
    if v < 2 or not 1 <= g <= v:
        raise ValueError(f"expected 1 <= G <= V and V >= 2 views, but got {g=} and {v=}")
    log_p = F.log_softmax(student_logits / student_temperature, dim=-1)
    cross_entropy = -torch.einsum("gnk,vnk->gv", teacher_probs, log_p) / n  # [G, V], mean over images
    # The G*(V-1) pairs of different views, gathered by an index computed on the device: a boolean
    # mask would call nonzero, a host sync every step. Row r keeps columns 0..V-1 except r, in the
    # order the mask kept them, so the mean is bit for bit the masked one.
    k = torch.arange(g * (v - 1), device=cross_entropy.device)
    row, col = k // (v - 1), k % (v - 1)
    return cross_entropy.flatten()[row * v + col + (col >= row).long()].mean()


class DINOHead(nn.Module):
    """MLP (Linear-GELU x2, Linear to the bottleneck), L2 normalisation, then K prototypes whose
    weights are normalised on every forward (weight norm with its gain fixed at 1, the paper's
    `norm_last_layer`). The prototype logits are float32 under autocast: the loss divides them by
    temperatures down to 0.04, where bf16's rounding (~0.4% of a logit) would be ~0.1 in the softmax."""

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        z = self.mlp(x)
        with float32_region(z):
            return F.linear(F.normalize(z.float(), dim=-1), F.normalize(self.prototypes.weight, dim=1))


@register
class DINO(SSLMethod):
    name = "dino"
    Config = DINOConfig
    n_views = 2  # global views; make_views adds cfg.n_local_crops local ones after them
    search_space = {
        "training.optimizer.lr": {"type": "float", "low": 0.03, "high": 1.0, "log": True},
        "training.optimizer.weight_decay": {"type": "float", "low": 1e-6, "high": 5e-4, "log": True},
        "objective.teacher_temperature": {"type": "float", "low": 0.03, "high": 0.08},
        "objective.base_momentum": {"type": "categorical", "choices": [0.99, 0.996]},
    }

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg: DINOConfig, projector):
        super().__init__(backbone, feature_dim)
        self.cfg = cfg
        self.head = DINOHead(feature_dim, projector.hidden_dim, projector.output_dim, cfg.out_dim)
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        # Buffers, so checkpoints capture them; both change only in on_step_end.
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.register_buffer("teacher_temperature", torch.tensor(cfg.warmup_teacher_temperature))
        self._pending_center: Tensor | None = None  # this batch's mean teacher output

    def make_views(self, images: Tensor, augment_cfg, size: int, generator: torch.Generator) -> list[Tensor]:
        """2 global views at `size` with the study's crops, then local views at max(8, size // 2)."""
        views = augment.random_views(images, augment_cfg, size, generator, self.n_views)
        if self.cfg.n_local_crops:
            local_cfg = augment_cfg.model_copy(update={"crop_scale": self.cfg.local_crop_scale})
            views += augment.random_views(images, local_cfg, max(8, size // 2), generator, self.cfg.n_local_crops)
        return views

    def embed(self, x: Tensor) -> Tensor:
        """The head's bottleneck, the last embedding before the prototypes (for collapse proxies)."""
        return self.head.mlp(self.backbone(x))

    def training_loss(self, views: list[Tensor]) -> Tensor:
        n, n_global = len(views[0]), self.n_views
        # Views of one resolution go through the network in one batch, as the paper's multi-crop wrapper.
        student = [self.head(self.backbone(torch.cat(views[:n_global])))]
        if len(views) > n_global:
            student.append(self.head(self.backbone(torch.cat(views[n_global:]))))
        student_logits = torch.cat(student).view(len(views), n, -1)
        with torch.no_grad():
            teacher_logits = self.teacher_head(self.teacher_backbone(torch.cat(views[:n_global])))
            self._pending_center = teacher_logits.mean(dim=0)  # float32 even under autocast (DINOHead)
            teacher_probs = teacher_distribution(teacher_logits, self.center, self.teacher_temperature)
        return dino_loss(student_logits, teacher_probs.view(n_global, n, -1), self.cfg.temperature)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        cfg = self.cfg
        momentum = cosine_momentum(step, total_steps, cfg.base_momentum, cfg.final_momentum)
        ema_update(self.teacher_backbone, self.backbone, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self._pending_center is not None:
            self.center.lerp_(self._pending_center, 1 - cfg.center_momentum)
            self._pending_center = None
        # Linear warm-up of the teacher temperature, then constant; the value for the next step.
        warmup_steps = cfg.warmup_teacher_fraction * total_steps
        progress = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
        self.teacher_temperature.fill_(
            cfg.warmup_teacher_temperature + progress * (cfg.teacher_temperature - cfg.warmup_teacher_temperature))
