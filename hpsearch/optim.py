"""Optimiser and learning-rate schedule of a trial."""

from __future__ import annotations

import math

import torch
from torch import nn


def build_optimizer(model: nn.Module, cfg, batch_size: int) -> torch.optim.Optimizer:
    """SGD or AdamW at `cfg.lr * batch_size / 256`; biases and norm weights get no weight decay."""
    lr = cfg.lr * batch_size / 256
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base lr over warmup_steps, then cosine decay to 0 at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
