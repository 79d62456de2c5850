"""Optimisers and schedules of a trial: SGD, AdamW and LARS; warm-up then cosine lr; cosine EMA momentum."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LARS", "build_optimizer", "warmup_cosine"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, arXiv:1708.03888),
    as in solo-learn's `LARS`.

    For each parameter `p` with gradient `g` in a group with `adapt=True`:

        trust = eta * ||p|| / (||g|| + weight_decay * ||p|| + eps)   (1 when ||p|| or ||g|| is 0)
        trust = min(trust / lr, 1)                                   if clip_lr (LARC clipping)
        update = (g + weight_decay * p) * trust

    so the step is `lr * trust`, never more than `lr` when clipping. In a group with `adapt=False`
    (biases and norm parameters) the update is `g + weight_decay * p`, plain SGD. Then
    `buf = momentum * buf + update` and `p -= lr * buf`.
    """

    def __init__(self, params, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = True, eps: float = 1e-8, adapt: bool = True):
        if lr < 0:
            raise ValueError(f"LARS needs lr >= 0, but got {lr=}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS needs 0 <= momentum < 1, but got {momentum=}")
        if weight_decay < 0:
            raise ValueError(f"LARS needs weight_decay >= 0, but got {weight_decay=}")
        if eta <= 0:
            raise ValueError(f"LARS needs eta > 0, but got {eta=}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr, eps=eps,
                        adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                if group["adapt"]:
                    update.mul_(self._trust_ratio(p, p.grad, group))
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-lr)
        return loss

    @staticmethod
    def _trust_ratio(p: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        """The layer-wise lr multiplier, as a 0-d tensor (no host synchronisation on a GPU)."""
        p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
        trust = group["eta"] * p_norm / (g_norm + group["weight_decay"] * p_norm + group["eps"])
        if group["clip_lr"] and group["lr"] > 0:
            trust = (trust / group["lr"]).clamp(max=1.0)
        return torch.where((p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))


def build_optimizer(model: nn.Module, cfg, batch_size: int) -> torch.optim.Optimizer:
    """`cfg.name` (sgd, adamw or lars) at `cfg.lr * batch_size / 256`.

    Biases and norm parameters (ndim <= 1) get no weight decay and, under LARS, no adaptation.
    """
    lr = cfg.lr * batch_size / 256
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "lars":
        groups[1]["adapt"] = False
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.eta, clip_lr=cfg.clip_lr)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {cfg.name!r}; expected one of: adamw, lars, sgd")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base lr over warmup_steps, then cosine decay to 0 at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
