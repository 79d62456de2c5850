"""Per-sample augmentation parameters: one random draw per image of a batch, on the CPU from a
`torch.Generator` in a fixed order, so a seed fixes every view (`sample_params`), shipped to the
images' device in one copy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

_CROP_TRIALS = 10  # candidate boxes per sample, as torchvision's RandomResizedCrop tries 10 times

@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters drawn for one view of a batch; every field is a tensor with leading dim N."""

    crop_boxes: Tensor  # [N, 4] float (top, left, height, width) in input pixels, integer-valued
    flip: Tensor  # [N] bool
    jitter: Tensor  # [N] bool, whether colour jitter is applied to this sample
    brightness: Tensor  # [N] float factors (1.0 = unchanged)
    contrast: Tensor  # [N]
    saturation: Tensor  # [N]
    hue: Tensor  # [N] in [-0.5, 0.5]
    grayscale: Tensor  # [N] bool
    blur: Tensor  # [N] bool
    blur_sigma: Tensor  # [N] float
    solarize: Tensor  # [N] bool


def _uniform(gen: torch.Generator, shape, low: float, high: float) -> Tensor:
    # float64 so that box rounding agrees with torchvision's Python-float arithmetic
    return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low


def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's fallback when no candidate fits: the largest central box within the ratio range."""
    in_ratio = width / height
    h, w = height, width
    if in_ratio < min(ratio):
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        w = int(round(h * max(ratio)))
    return (height - h) // 2, (width - w) // 2, h, w


def _sample_crop_boxes(cfg, n: int, height: int, width: int, gen: torch.Generator) -> Tensor:
    """RandomResizedCrop.get_params, vectorised: [N, 4] float (top, left, height, width), integer-valued.

    Draws _CROP_TRIALS candidates per sample at once and keeps the first that fits, so the number of
    draws (and thus the generator stream) never depends on the outcome.
    """
    area = height * width
    target = area * _uniform(gen, (n, _CROP_TRIALS), *cfg.crop_scale)
    log_r = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    aspect = torch.exp(_uniform(gen, (n, _CROP_TRIALS), *log_r))
    w = torch.round(torch.sqrt(target * aspect))  # round-half-even, like Python's round()
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # argmax returns the first maximum
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = torch.floor(torch.rand(n, generator=gen, dtype=torch.float64) * (height - h + 1))
    left = torch.floor(torch.rand(n, generator=gen, dtype=torch.float64) * (width - w + 1))
    boxes = torch.stack([top, left, h, w], dim=1)
    fallback = torch.tensor(_central_box(height, width, cfg.crop_ratio), dtype=torch.float64)
    return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback).to(torch.float32)


def sample_params(cfg, n: int, height: int, width: int, generator: torch.Generator, device) -> AugmentParams:
    """Draw one view's parameters for N images of size height x width.

    All randomness comes from `generator` (a CPU generator) in a fixed draw order, so a seed fixes
    the views; they then reach `device` in one packed copy (`_to_device`). Factors follow ColorJitter: uniform in
    [max(0, 1 - b), 1 + b] for brightness/contrast/saturation, uniform in [-hue, hue] for hue.
    """
    g = generator

    def coin(p: float) -> Tensor:  # rand is in [0, 1), so p=0 is never and p=1 always
        return torch.rand(n, generator=g) < p

    def factor(b: float) -> Tensor:
        return _uniform(g, n, max(0.0, 1.0 - b), 1.0 + b).float()

    fields = dict(
        crop_boxes=_sample_crop_boxes(cfg, n, height, width, g),
        flip=coin(cfg.flip_p),
        jitter=coin(cfg.jitter_p),
        brightness=factor(cfg.brightness),
        contrast=factor(cfg.contrast),
        saturation=factor(cfg.saturation),
        hue=_uniform(g, n, -cfg.hue, cfg.hue).float(),
        grayscale=coin(cfg.grayscale_p),
        blur=coin(cfg.blur_p),
        blur_sigma=_uniform(g, n, *cfg.blur_sigma).float(),
        solarize=coin(cfg.solarize_p),
    )
    return _to_device(fields, torch.device(device))


# Rows of the packed buffer: crop_boxes takes 4 (its columns), every other field 1.
_ROWS = {name: 4 if name == "crop_boxes" else 1 for name in AugmentParams.__dataclass_fields__}


def _to_device(fields: dict[str, Tensor], device: torch.device) -> AugmentParams:
    """The drawn parameters on `device`, from one float32 buffer [14, N] copied once.

    Eleven small copies per view, each from pageable memory, are eleven blocking host-to-device
    transfers on CUDA; one buffer in pinned memory is one asynchronous copy. Every value survives
    the packing exactly (float32 fields, box coordinates that are small integers, bools as 0/1).
    """
    n = len(fields["flip"])
    rows = [v.to(torch.float32).reshape(n, -1).T for v in fields.values()]
    packed = torch.empty((sum(_ROWS.values()), n), dtype=torch.float32, pin_memory=device.type == "cuda")
    torch.cat(rows, out=packed)
    packed = packed.to(device, non_blocking=True)
    params, row = {}, 0
    for name, value in fields.items():
        part = packed[row:row + _ROWS[name]]
        row += _ROWS[name]
        part = part.T if name == "crop_boxes" else part[0]  # [N, 4] (a view) or [N]
        params[name] = part.to(value.dtype)  # bool <- 0/1: exact, and on the device
    return AugmentParams(**params)
