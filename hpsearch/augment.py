"""Batched SSL augmentations in which every image of a batch draws its own random parameters.

torchvision's transforms applied to a batch share one parameter draw across the whole batch, which
collapses the diversity SSL objectives rely on. Here `sample_params` draws per-sample parameters on
the CPU (reproducible from a `torch.Generator`) and `apply` runs them as batched tensor ops on the
images' device: no loop over images, no `.item()`, no branching on tensor values.

`apply` order (fixed): crop+resize, horizontal flip, colour jitter (brightness, contrast,
saturation, hue), grayscale, gaussian blur, solarize. Unlike torchvision's ColorJitter, which
permutes the four jitter ops randomly per call, the jitter order here is always the one above.
Each op matches the corresponding `torchvision.transforms.v2.functional` call on float images to
float32 rounding (see tests/test_augment.py for the tolerances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentParams", "sample_params", "apply", "random_views", "blur_kernel_size"]

_CROP_TRIALS = 10  # candidate boxes per sample, as torchvision's RandomResizedCrop tries 10 times
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision
DEFAULT_BLUR_SIGMA_MAX = 2.0  # sigma range top of the SimCLR/BYOL recipes; sizes the default kernel


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


# ----------------------------------------------------------------------------------------- sampling


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
    the views; tensors are then moved to `device`. Factors follow ColorJitter: uniform in
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
    return AugmentParams(**{k: v.to(device, non_blocking=True) for k, v in fields.items()})


# ------------------------------------------------------------------------------------------- geometry


def _resize_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """[N, out_size, in_size] matrices resampling the span [start, start+length) of each sample.

    Reproduces torch's antialiased bilinear interpolation (what resized_crop(antialias=True) calls):
    a triangle filter centred on each output pixel, stretched by the scale when downsampling,
    restricted to the crop and renormalised. Upsampling reduces to plain bilinear with edge clamping.
    """
    scale = (length / out_size)[:, None, None]
    i = torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None]
    j = torch.arange(in_size, device=start.device, dtype=torch.float32)[None, None, :]
    center = start[:, None, None] + scale * (i + 0.5)
    weight = (1 - ((j + 0.5 - center) / scale.clamp(min=1.0)).abs()).clamp(min=0)
    inside = (j >= start[:, None, None]) & (j < (start + length)[:, None, None])
    weight = weight * inside
    return weight / weight.sum(dim=-1, keepdim=True)  # never 0: the nearest pixel has weight >= 0.5


def _resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """[N, C, H, W] -> [N, C, size, size]: per-sample crop, resize and optional horizontal flip.

    Crop+resize is separable, so it is two batched matmuls, rows then columns; flipping the output
    columns is reversing the rows of the column matrix, so the flip costs nothing extra.
    """
    top, left, h, w = boxes.unbind(dim=1)
    rows = _resize_weights(top, h, x.shape[-2], size)  # [N, size, H]
    cols = _resize_weights(left, w, x.shape[-1], size)  # [N, size, W]
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


# ---------------------------------------------------------------------------------------------- colour


def _per_sample(v: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, 1], to broadcast over images."""
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    r, g, b = x.unbind(dim=1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """x * ratio + other * (1 - ratio), clamped to [0, 1]; ratio [N]. Ratio 1 is an exact no-op."""
    r = _per_sample(ratio)
    return (x * r + other * (1 - r)).clamp(0, 1)


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """[N, 3, H, W] in [0, 1] -> h, s, v each [N, H, W], h in [0, 1)."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    grey = delta == 0  # hue and saturation undefined: set both to 0, avoiding 0/0
    s = delta / torch.where(grey, torch.ones_like(maxc), maxc)
    d = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), h)
    return torch.remainder(h / 6.0, 1.0), s, maxc


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """h, s, v each [N, H, W] -> [N, 3, H, W]; the branch-free form of the sextant table."""
    # R, G, B phase offsets 5, 3, 1; arange, not torch.tensor, to avoid a blocking host->device copy
    n = (5.0 - 2.0 * torch.arange(3, device=h.device, dtype=h.dtype)).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0, 1)
    return v.unsqueeze(1) * (1 - s.unsqueeze(1) * ramp)


def _shift_hue(x: Tensor, hue: Tensor) -> Tensor:
    """[N, 3, H, W] with per-sample hue offsets [N] (fractions of a turn)."""
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + hue.view(-1, 1, 1), 1.0), s, v)


def _color_jitter(x: Tensor, p: AugmentParams) -> Tensor:
    """Brightness, contrast, saturation, hue in that fixed order on samples with p.jitter set.

    Unjittered samples get factor 1 (an exact no-op) instead of a masked select, except for hue whose
    HSV round trip is not bit-exact, so it is masked (also where the drawn hue is exactly 0).
    """
    on = p.jitter
    one = torch.ones_like(p.brightness)
    x = (x * _per_sample(torch.where(on, p.brightness, one))).clamp(0, 1)
    # contrast blends towards the image's mean luma (channel mean for 1 channel), as torchvision
    luma = _gray(x) if x.shape[1] == 3 else x
    x = _blend(x, luma.mean(dim=(1, 2, 3), keepdim=True), torch.where(on, p.contrast, one))
    if x.shape[1] == 1:  # saturation and hue need colour; torchvision skips them too
        return x
    x = _blend(x, _gray(x), torch.where(on, p.saturation, one))
    return torch.where(_per_sample(on & (p.hue != 0)), _shift_hue(x, p.hue), x)


def _grayscale(x: Tensor, on: Tensor) -> Tensor:
    """Replace masked samples by their luma on all 3 channels; 1-channel images pass through."""
    if x.shape[1] == 1:
        return x
    return torch.where(_per_sample(on), _gray(x).expand_as(x), x)


# ----------------------------------------------------------------------------------- blur, solarize


def blur_kernel_size(sigma_max: float, size: int) -> int:
    """Odd kernel covering +-3 sigma_max, capped to the largest odd number <= size."""
    return max(1, min(2 * math.ceil(3 * sigma_max) + 1, size if size % 2 else size - 1))


def _gaussian_kernels(sigma: Tensor, k: int) -> Tensor:
    """[N] sigmas -> [N, k] normalised 1-D gaussians, sampled at integer offsets as torchvision."""
    offsets = torch.arange(k, device=sigma.device, dtype=torch.float32) - k // 2
    sigma = sigma.clamp(min=1e-3)[:, None]  # sigma -> 0 is the identity; avoid dividing by 0
    return torch.softmax(-(offsets**2) / (2 * sigma**2), dim=1)


def _blur(x: Tensor, on: Tensor, sigma: Tensor, k: int) -> Tensor:
    """Per-sample gaussian blur with reflect padding, as a separable depthwise (N*C groups) conv."""
    n, c, height, width = x.shape
    limit = min(height, width)  # reflect padding needs k // 2 < the image side
    k = max(1, min(k | 1, limit if limit % 2 else limit - 1))
    kern = _gaussian_kernels(sigma, k).repeat_interleave(c, dim=0)  # [N*C, k]
    pad = k // 2
    y = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kern[:, None, None, :], groups=n * c)  # horizontal pass
    y = F.conv2d(y, kern[:, None, :, None], groups=n * c)  # vertical pass
    return torch.where(_per_sample(on), y.reshape(n, c, height, width), x)


def _solarize(x: Tensor, on: Tensor) -> Tensor:
    """Invert pixels >= 0.5 (128 for uint8 input) on masked samples."""
    return torch.where(_per_sample(on) & (x >= 0.5), 1 - x, x)


# ------------------------------------------------------------------------------------------ public


def _to_float(images: Tensor) -> Tensor:
    """uint8 0..255 or float [0, 1] -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images.float()


def apply(images: Tensor, params: AugmentParams, size: int, blur_kernel: int | None = None) -> Tensor:
    """Augment a batch: images [N, C, H, W] uint8 or float in [0, 1], C in {1, 3} -> float32 [N, C, size, size].

    Order: crop+resize (antialiased bilinear), flip, jitter (brightness, contrast, saturation, hue;
    fixed order), grayscale, blur, solarize. Saturation, hue and grayscale are skipped when C == 1.
    `blur_kernel` is the gaussian kernel width (odd, capped to `size`); None sizes it for
    DEFAULT_BLUR_SIGMA_MAX. `random_views` sizes it from `cfg.blur_sigma` instead.
    Note: on GPUs with TF32 matmuls enabled, the crop+resize matmuls lose precision to ~1e-3.
    """
    if blur_kernel is None:
        blur_kernel = blur_kernel_size(DEFAULT_BLUR_SIGMA_MAX, size)
    x = _resized_crop_flip(_to_float(images), params.crop_boxes, params.flip, size)
    x = _color_jitter(x, params)
    x = _grayscale(x, params.grayscale)
    x = _blur(x, params.blur, params.blur_sigma, blur_kernel)
    # resampling and HSV round trips can overshoot [0, 1] by an ulp; the contract is [0, 1]
    return _solarize(x, params.solarize).clamp(0, 1)


def random_views(images: Tensor, cfg, size: int, generator: torch.Generator, n_views: int = 2) -> list[Tensor]:
    """n_views independent augmentations of images [N, C, H, W], each [N, C, size, size] float32."""
    n, _, height, width = images.shape
    kernel = blur_kernel_size(cfg.blur_sigma[1], size)
    return [
        apply(images, sample_params(cfg, n, height, width, generator, images.device), size, kernel)
        for _ in range(n_views)
    ]
