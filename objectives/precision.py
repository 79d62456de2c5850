"""SSL losses in float32 under mixed precision.

On CUDA the trainer runs the whole step under bf16 autocast. That suits the networks, but not the
losses: logits divided by temperatures of 0.04-0.2 (NT-Xent, InfoNCE, DINO), cross-correlation and
covariance matrices summed over thousands of squared entries (Barlow Twins, VICReg) lose 2-3% of
their gradient to bf16's 8-bit mantissa. So every loss term runs on float32 copies of its inputs
with autocast switched off (`float32_loss`; float64 inputs stay float64), and code that is part of a loss but outside a loss
function (a normalisation, DINO's prototype logits) runs in a `float32_region`.

Without autocast (every CPU run) both are no-ops: `.float()` of a float32 tensor is the tensor
itself, so CPU results are bit for bit what they were.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Callable, TypeVar

import torch
from torch import Tensor

__all__ = ["float32_loss", "float32_region"]

F = TypeVar("F", bound=Callable)


def float32_region(like: Tensor):
    """A context in which autocast is off for `like`'s device type (a no-op context on devices
    without autocast, such as `meta`). Cast its inputs with `.float()` inside."""
    device_type = like.device.type
    if not torch.amp.is_autocast_available(device_type):
        return nullcontext()
    return torch.autocast(device_type, enabled=False)


def _at_least_float32(value):
    """bf16 / fp16 tensors as float32; float32 and float64 (the reference tests') stay as they are."""
    if isinstance(value, Tensor) and value.is_floating_point() and torch.finfo(value.dtype).bits < 32:
        return value.float()
    return value


def float32_loss(loss: F) -> F:
    """Decorator: run `loss` with autocast off and its half-precision tensor arguments in float32.

    Gradients still flow back to the (bf16) embeddings through the casts.
    """

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is None:
            return loss(*args, **kwargs)
        with float32_region(first):
            return loss(*map(_at_least_float32, args), **{k: _at_least_float32(v) for k, v in kwargs.items()})

    return wrapper  # type: ignore[return-value]
