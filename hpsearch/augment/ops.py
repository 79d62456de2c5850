"""Batched SSL augmentations in which every image of a batch draws its own random parameters.

torchvision's transforms applied to a batch share one parameter draw across the whole batch, which
collapses the diversity SSL objectives rely on. Here `sample_params` draws per-sample parameters on
the CPU (reproducible from a `torch.Generator`) and `apply` runs them as batched tensor ops on the
images' device: no loop over images, no `.item()`, no branching on tensor values.

`apply` order (fixed): crop+resize, horizontal flip, colour jitter (brightness, contrast,
saturation, hue), grayscale, gaussian blur, solarize. Unlike torchvision's ColorJitter, which
permutes the four jitter ops randomly per call, the jitter order here is always the one above.
Each op matches the corresponding `torchvision.transforms.v2.functional` call on float images to
float32 rounding (see tests/augment/test_augment.py for the tolerances).

Speed (benchmarks/augment_throughput.py): `random_views` skips the ops its config switches off;
crops that never shrink (images no larger than the output, as hpsearch's data always are) use one
bilinear `grid_sample` instead of dense resampling matmuls; colour ops run in place, select samples
arithmetically and never build HSV; on the CPU the work runs on one intra-op thread (_CPU_THREADS).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hpsearch.augment.crop import resized_crop_flip
from hpsearch.augment.params import AugmentParams, sample_params

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision
DEFAULT_BLUR_SIGMA_MAX = 2.0  # sigma range top of the SimCLR/BYOL recipes; sizes the default kernel
# Intra-op threads while augmenting on the CPU. The ops are ~60 memory-bound passes of 0.1-0.5 ms
# over a batch: a second thread gains ~1.5x when the other core is idle, but when another process
# keeps it busy every op's fork/join waits for a descheduled thread, 10-20x slower (measured on
# this project's 2 shared cores; benchmarks/README.md). One thread per augmenting process is also
# what DataLoader workers use. Only OpenMP builds: there the count is per calling thread.
_CPU_THREADS = 1


# ---------------------------------------------------------------------------------------------- colour
# Every op below works in place on the float batch that the crop produced (which apply owns).
# Samples are selected arithmetically (factor 1, or a 0/1 lerp weight) rather than with
# torch.where on full-size boolean masks, which is several times slower on the CPU.


def _per_sample(v: Tensor) -> Tensor:
    """[N] -> [N, 1, 1, 1], to broadcast over images."""
    return v.view(-1, 1, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma, in torchvision's operation order."""
    r, g, b = x.unbind(dim=1)
    return r.mul(_GRAY[0]).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2]).unsqueeze(1)


def _mean_luma(x: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, 1, 1, 1]: mean luma (channel mean for 1 channel). The mean of a weighted sum
    is the weighted sum of the channel means: one reduction, no luma image."""
    means = x.mean(dim=(2, 3))
    if x.shape[1] == 1:
        return _per_sample(means[:, 0])
    return _per_sample(_GRAY[0] * means[:, 0] + _GRAY[1] * means[:, 1] + _GRAY[2] * means[:, 2])


def _blend_(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    """In place: x * ratio + other * (1 - ratio), clamped to [0, 1]; ratio [N]. Ratio 1 is an exact no-op.

    `other` is [N, 1, 1, 1] (a value per image) or [N, 1, H, W]; on the CPU, lerp_ is the faster
    form for the latter and ~6x slower for the former, hence the two forms.
    """
    r = _per_sample(ratio)
    if other.shape[-2:] == (1, 1):
        x.mul_(r).add_(other * (1 - r))
    else:
        x.lerp_(other, 1 - r)
    return x.clamp_(0, 1)


def _shift_hue(x: Tensor, hue: Tensor) -> Tensor:
    """[N, 3, H, W] in [0, 1] with its hue rotated by hue [N] (fractions of a turn), via HSV.

    S and V never change, so only the hue is computed: with delta = max - min = V*S and the hue h in
    sextants, each channel of the rotated pixel is max - delta * clamp(2 - d, 0, 1), d = the distance
    on the 6-sextant circle from h to the channel's offset (3, 5, 1 for R, G, B) -- torchvision's
    HSV->RGB sextant table in branch-free form, evaluated as (max + delta) - delta * clamp(e, 1, 2)
    with e = ||h - offset| - 3| = 3 - d. Grey pixels (delta = 0) come back unchanged.
    Selections are lerps with 0/1 weights (sign of max - channel), exact and faster than torch.where.
    """
    r, g, b = x.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    delta = maxc - minc
    below_r, below_g, below_b = maxc - r, maxc - g, maxc - b  # 0 exactly for the max channel(s)
    # hue * delta: g - b where red is the max, else 2 delta + b - r where green, else 4 delta + r - g
    h_red = below_b - below_g
    h = torch.lerp((below_r - below_b).add_(delta, alpha=2), (below_g - below_r).add_(delta, alpha=4), below_g.sign_())
    h = torch.lerp(h_red, h, below_r.sign_())
    h.div_(delta.clamp_min(torch.finfo(h.dtype).tiny))  # grey: 0 / tiny = 0
    h.add_(6 * hue.view(-1, 1, 1))
    h.sub_(torch.mul(h, 1 / 6).floor_(), alpha=6)  # mod 6, into [0, 6); torch.remainder is ~5x slower on the CPU
    # arange, not torch.tensor: no blocking host->device copy
    offset = (3.0 + 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).remainder_(6).view(1, 3, 1, 1)
    e = (h.unsqueeze(1) - offset).abs_().sub_(3).abs_().clamp_(1, 2)
    return torch.addcmul((maxc + delta).unsqueeze(1), delta.unsqueeze(1), e, value=-1)


def _color_jitter(x: Tensor, p: AugmentParams, ops: "_Ops") -> Tensor:
    """Brightness, contrast, saturation, hue in that fixed order on samples with p.jitter set.

    Unjittered samples get factor 1 (an exact no-op), except for hue whose HSV round trip is not
    bit-exact, so it is masked (also where the drawn hue is exactly 0).
    """
    on = p.jitter
    one = torch.ones_like(p.brightness)
    if ops.brightness:
        x = x.mul_(_per_sample(torch.where(on, p.brightness, one))).clamp_(0, 1)
    if ops.contrast:  # blends towards the image's mean luma (channel mean for 1 channel), as torchvision
        x = _blend_(x, _mean_luma(x), torch.where(on, p.contrast, one))
    if x.shape[1] == 1:  # saturation and hue need colour; torchvision skips them too
        return x
    if ops.saturation:
        x = _blend_(x, _gray(x), torch.where(on, p.saturation, one))
    if ops.hue:
        x = x.lerp_(_shift_hue(x, p.hue), _per_sample((on & (p.hue != 0)).to(x.dtype)))
    return x


def _grayscale(x: Tensor, on: Tensor) -> Tensor:
    """Replace masked samples by their luma on all 3 channels; 1-channel images pass through."""
    if x.shape[1] == 1:
        return x
    return x.lerp_(_gray(x), _per_sample(on.to(x.dtype)))  # weight 1 gives the luma exactly, 0 leaves x


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


@dataclass(frozen=True)
class _Ops:
    """Which ops can change some image, known from the config alone (never from drawn values, so
    no host sync): an op whose probability or strength is 0 everywhere is skipped, not computed
    and masked. `apply`, which sees parameters only, runs them all."""

    brightness: bool = True
    contrast: bool = True
    saturation: bool = True
    hue: bool = True
    grayscale: bool = True
    blur: bool = True
    solarize: bool = True

    @classmethod
    def of(cls, cfg) -> "_Ops":
        jitter = cfg.jitter_p > 0  # a zero strength draws factor 1 (hue 0): the op is the identity
        return cls(brightness=jitter and cfg.brightness > 0, contrast=jitter and cfg.contrast > 0,
                   saturation=jitter and cfg.saturation > 0, hue=jitter and cfg.hue > 0,
                   grayscale=cfg.grayscale_p > 0, blur=cfg.blur_p > 0, solarize=cfg.solarize_p > 0)


def _to_float(images: Tensor) -> Tensor:
    """uint8 0..255 or float [0, 1] -> float32 [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


@contextmanager
def _cpu_threads(device: torch.device):
    """Run the body with _CPU_THREADS intra-op threads when augmenting on the CPU (see _CPU_THREADS)."""
    saved = torch.get_num_threads()
    if device.type != "cpu" or saved <= _CPU_THREADS or not torch.backends.openmp.is_available():
        yield
        return
    torch.set_num_threads(_CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _apply(images: Tensor, params: AugmentParams, size: int, blur_kernel: int, ops: _Ops) -> Tensor:
    x = resized_crop_flip(_to_float(images), params.crop_boxes, params.flip, size)  # a new tensor: ours to modify
    x = _color_jitter(x, params, ops)
    if ops.grayscale:
        x = _grayscale(x, params.grayscale)
    if ops.blur:
        x = _blur(x, params.blur, params.blur_sigma, blur_kernel)
    if ops.solarize:
        x = _solarize(x, params.solarize)
    # resampling and HSV round trips can overshoot [0, 1] by an ulp; the contract is [0, 1]
    return x.clamp_(0, 1)


def apply(images: Tensor, params: AugmentParams, size: int, blur_kernel: int | None = None) -> Tensor:
    """Augment a batch: images [N, C, H, W] uint8 or float in [0, 1], C in {1, 3} -> float32 [N, C, size, size].

    Order: crop+resize (antialiased bilinear), flip, jitter (brightness, contrast, saturation, hue;
    fixed order), grayscale, blur, solarize. Saturation, hue and grayscale are skipped when C == 1.
    `blur_kernel` is the gaussian kernel width (odd, capped to `size`); None sizes it for
    DEFAULT_BLUR_SIGMA_MAX. `random_views` sizes it from `cfg.blur_sigma` instead.
    Note: on GPUs with TF32 matmuls enabled, the crop+resize matmuls (used when the images are
    larger than `size`) lose precision to ~1e-3.
    """
    if blur_kernel is None:
        blur_kernel = blur_kernel_size(DEFAULT_BLUR_SIGMA_MAX, size)
    with _cpu_threads(images.device):
        return _apply(images, params, size, blur_kernel, _Ops())


def random_views(images: Tensor, cfg, size: int, generator: torch.Generator, n_views: int = 2) -> list[Tensor]:
    """n_views independent augmentations of images [N, C, H, W], each [N, C, size, size] float32.

    Equal to `apply` with freshly sampled parameters, except that ops `cfg` switches off entirely
    are skipped rather than computed as identities.
    """
    n, _, height, width = images.shape
    kernel = blur_kernel_size(cfg.blur_sigma[1], size)
    ops = _Ops.of(cfg)
    with _cpu_threads(images.device):
        return [
            _apply(images, sample_params(cfg, n, height, width, generator, images.device), size, kernel, ops)
            for _ in range(n_views)
        ]


def normalise(views: list[Tensor], mean: Tensor, std: Tensor, memory_format=torch.contiguous_format) -> list[Tensor]:
    """Views standardised with the data's per-channel `mean` and `std` ([C] each), in `memory_format`
    (channels_last on CUDA): what an encoder is fed, in training and in evaluation alike."""
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    return [((v - mean) / std).contiguous(memory_format=memory_format) for v in views]
