"""Momentum (EMA) target networks shared by BYOL, MoCo and DINO.

A method declares its momentum pairs by building `target = frozen_copy(online)` in `__init__` and
calling `ema_update(target, online, cosine_momentum(step, total_steps, base, final))` in
`on_step_end`. The target is a registered submodule (it moves with `.to(device)` and is saved in
the state dict) whose parameters never require grad, so the optimiser never sees them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

# The schedule lives with the optimiser's (BYOL's cosine, base -> final); re-exported for the methods.
from hpsearch.optim import cosine_momentum

__all__ = ["cosine_momentum", "ema_update", "frozen_copy"]


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
