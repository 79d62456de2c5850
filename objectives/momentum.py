"""Momentum (EMA) target networks shared by BYOL, MoCo and DINO.

A method declares its momentum pairs by building `target = frozen_copy(online)` in `__init__` and
calling `ema_update(target, online, cosine_momentum(step, total_steps, base, final))` in
`on_step_end`. The target is a registered submodule (it moves with `.to(device)` and is saved in
the state dict) whose parameters never require grad, so the optimiser never sees them.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["cosine_momentum", "ema_update", "frozen_copy"]


def cosine_momentum(step: int, total_steps: int, base: float, final: float) -> float:
    """EMA momentum rising from `base` at step 0 to `final` at `total_steps` along a half cosine
    (BYOL, Grill et al. 2020: tau = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2 with final = 1;
    DINO's teacher uses the same schedule). Steps past `total_steps` stay at `final`."""
    if total_steps < 1:
        raise ValueError(f"cosine_momentum needs total_steps >= 1, but got {total_steps=}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters do not require grad: the initial momentum target."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, for every parameter.

    Buffers (BatchNorm running statistics) are not averaged: the target keeps its own, as solo-learn
    does. One fused foreach kernel instead of a Python loop of small ones; no host sync.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError(f"target and online networks differ: {len(target_params)=} but {len(online_params)=}")
    torch._foreach_lerp_(target_params, online_params, 1.0 - momentum)
