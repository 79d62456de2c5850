"""Tests for hpsearch.augment: batched per-sample augmentations checked against torchvision, image by image."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import load_digits
from torchvision.transforms import RandomResizedCrop

from hpsearch.augment import AugmentParams, apply, blur_kernel_size, random_views, sample_params

# Tolerances (max abs difference on [0, 1] float32 images) against torchvision on the same float input.
# Every op computes the same formula as torchvision, so differences are float32 rounding only:
# crop+resize sums the same antialiased-bilinear weights in a different order (two batched matmuls
# vs torch's two-pass kernel), blur is separable vs torchvision's 2-D kernel, contrast means reduce
# in a different order and hue uses the branch-free HSV->RGB form instead of a sextant table.
# Observed errors are <= ~3e-6; allow margin, and twice that when all ops compound.
TOL_OP = 1e-5
TOL_ALL = 2e-5


@dataclass(frozen=True)
class Cfg:
    """Stand-in for the schema's AugmentConfig: everything off, crop = whole image."""

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)
    flip_p: float = 0.0
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


OFF = Cfg()
RRC = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3))
SINGLE_OPS = {
    "crop": replace(OFF, **RRC),
    "flip": replace(OFF, flip_p=1.0),
    "brightness": replace(OFF, jitter_p=1.0, brightness=0.8),
    "contrast": replace(OFF, jitter_p=1.0, contrast=0.8),
    "saturation": replace(OFF, jitter_p=1.0, saturation=0.8),
    "hue": replace(OFF, jitter_p=1.0, hue=0.5),
    "grayscale": replace(OFF, grayscale_p=1.0),
    "blur": replace(OFF, blur_p=1.0),
    "solarize": replace(OFF, solarize_p=1.0),
}
ALL_ON = Cfg(**RRC, flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2,
             grayscale_p=0.2, blur_p=0.5, solarize_p=0.2)  # fmt: skip
SIMCLR = Cfg(**RRC, flip_p=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2)


# ------------------------------------------------------------------------------------------ images


def digits(n: int = 24) -> torch.Tensor:
    """[n, 1, 32, 32] uint8 handwritten digits, bilinearly upsampled from 8x8."""
    x = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16
    return (F.interpolate(x, size=32, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def colour_images(n: int = 24, seed: int = 0) -> torch.Tensor:
    """[n, 3, 32, 32] uint8: random colour gradients, a tinted digit on top, and mild noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, 32)
    yy, xx = ramp[:, None], ramp[None, :]
    a, b, c = (torch.rand(3, n, 3, 1, 1, generator=g) * 2 - 1).unbind(0)
    base = 0.5 + 0.35 * (a * yy + b * xx) + 0.15 * c
    digit = digits(n).float() / 255
    tint = torch.rand(n, 3, 1, 1, generator=g)
    x = base * (1 - digit) + tint * digit + 0.03 * torch.randn(n, 3, 32, 32, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


IMAGES = {"digits": digits, "colour": colour_images}


# -------------------------------------------------------------------------------------- reference


def reference(image: torch.Tensor, p: AugmentParams, n: int, size: int, kernel: int) -> torch.Tensor:
    """torchvision on one float image [C, H, W] with sample n's parameters, in apply's order."""
    top, left, h, w = (int(v) for v in p.crop_boxes[n])
    y = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    colour = image.shape[0] == 3
    if p.flip[n]:
        y = TF.horizontal_flip(y)
    if p.jitter[n]:
        y = TF.adjust_brightness(y, float(p.brightness[n]))
        y = TF.adjust_contrast(y, float(p.contrast[n]))
        if colour:
            y = TF.adjust_saturation(y, float(p.saturation[n]))
            y = TF.adjust_hue(y, float(p.hue[n]))
    if p.grayscale[n] and colour:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if p.blur[n]:
        y = TF.gaussian_blur(y, [kernel, kernel], [float(p.blur_sigma[n])] * 2)
    if p.solarize[n]:
        y = TF.solarize(y, 0.5)
    return y


def oracle_error(images: torch.Tensor, cfg: Cfg, size: int, seed: int = 0) -> float:
    p = sample_params(cfg, len(images), images.shape[-2], images.shape[-1], torch.Generator().manual_seed(seed), "cpu")
    kernel = blur_kernel_size(cfg.blur_sigma[1], size)
    out = apply(images, p, size, kernel)
    as_float = images.float() / 255
    return max((out[n] - reference(as_float[n], p, n, size, kernel)).abs().max().item() for n in range(len(images)))


@pytest.mark.parametrize("images", IMAGES)
@pytest.mark.parametrize("op", SINGLE_OPS)
def test_oracle_single_op(op, images):
    # size 24 from 32x32: whole-image crops downsample (antialias active), small crops upsample
    assert oracle_error(IMAGES[images](), SINGLE_OPS[op], size=24) <= TOL_OP


@pytest.mark.parametrize("size", [16, 32, 48])
@pytest.mark.parametrize("images", IMAGES)
def test_oracle_all_ops(images, size):
    assert oracle_error(IMAGES[images](), ALL_ON, size, seed=size) <= TOL_ALL


def test_uint8_input_matches_float_input():
    x = colour_images()
    p = sample_params(ALL_ON, len(x), 32, 32, torch.Generator().manual_seed(1), "cpu")
    torch.testing.assert_close(apply(x, p, 24), apply(x.float() / 255, p, 24), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------- crops


def test_crop_boxes_fit_and_follow_scale_and_ratio():
    p = sample_params(Cfg(**RRC), 4000, 40, 30, torch.Generator().manual_seed(0), "cpu")
    top, left, h, w = p.crop_boxes.unbind(1)
    assert torch.equal(p.crop_boxes, p.crop_boxes.round())  # integer boxes, as torchvision
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 30).all()
    assert (h >= 1).all() and (w >= 1).all()
    # rounding to whole pixels moves area and ratio a little outside the drawn ranges
    area = h * w / (40 * 30)
    assert area.min() >= 0.08 * 0.7 and area.max() <= 1.0


def test_crop_distribution_matches_torchvision():
    n, height, width = 3000, 32, 32
    ours = sample_params(Cfg(**RRC), n, height, width, torch.Generator().manual_seed(0), "cpu").crop_boxes
    torch.manual_seed(0)
    img = torch.zeros(1, height, width)
    theirs = torch.tensor([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]).float()

    def stats(b: torch.Tensor) -> torch.Tensor:  # mean area fraction, mean log aspect, mean centre
        top, left, h, w = b.unbind(1)
        return torch.stack([(h * w).mean() / (height * width), (w / h).log().mean(), (top + h / 2).mean() / height])

    # standard errors are ~0.005 for these means over 3000 draws
    torch.testing.assert_close(stats(ours), stats(theirs), atol=0.03, rtol=0)


def test_crop_falls_back_to_central_box_like_torchvision():
    # no 4:1..5:1 box with >= 90% of a square's area fits: torchvision falls back to a central w x w/4 box
    cfg = Cfg(crop_scale=(0.9, 1.0), crop_ratio=(4.0, 5.0))
    p = sample_params(cfg, 5, 32, 32, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(p.crop_boxes, torch.tensor([[12.0, 0.0, 8.0, 32.0]]).expand(5, 4))


# ------------------------------------------------------------------------------- per-sample draws


def test_each_image_draws_its_own_parameters():
    same = colour_images(1).expand(32, 3, 32, 32)  # one image repeated: any difference is the draw
    views = random_views(same, ALL_ON, 24, torch.Generator().manual_seed(0))
    p = sample_params(ALL_ON, 32, 32, 32, torch.Generator().manual_seed(0), "cpu")
    assert len({tuple(b.tolist()) for b in p.crop_boxes}) > 24
    assert p.brightness.unique().numel() == 32 and p.hue.unique().numel() == 32
    flat = views[0].flatten(1)
    distinct = (flat[:, None] - flat[None]).abs().amax(-1) > 1e-3
    assert distinct.sum() == 32 * 31  # every pair of outputs differs (only the diagonal is equal)
    assert ((views[0] - views[1]).flatten(1).abs().amax(1) > 1e-3).all()  # the two views differ per image


def test_same_seed_same_views_different_seed_different_views():
    x = colour_images()

    def views(seed):
        return random_views(x, ALL_ON, 24, torch.Generator().manual_seed(seed), n_views=3)

    a, b, c = views(5), views(5), views(6)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(not torch.equal(u, v) for u, v in zip(a, c))


# --------------------------------------------------------------------------------- identity, dtypes


@pytest.mark.parametrize("images", IMAGES)
def test_everything_off_is_identity_or_plain_resize(images):
    x = IMAGES[images]()
    as_float = x.float() / 255
    same = random_views(x, OFF, 32, torch.Generator().manual_seed(0))
    assert all(torch.equal(v, as_float) for v in same)
    smaller = random_views(x, OFF, 20, torch.Generator().manual_seed(0))[0]
    expected = TF.resize(as_float, [20, 20], antialias=True)
    torch.testing.assert_close(smaller, expected, atol=TOL_OP, rtol=0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_output_dtype_shape_range(dtype, channels):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, channels, 28, 36, generator=g)
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    for cfg in (ALL_ON, replace(ALL_ON, blur_p=1.0, solarize_p=1.0, jitter_p=1.0, hue=0.5)):
        views = random_views(x, cfg, 24, g, n_views=3)
        assert len(views) == 3
        for v in views:
            assert v.dtype == torch.float32 and v.shape == (10, channels, 24, 24)
            assert v.min() >= 0 and v.max() <= 1 and torch.isfinite(v).all()


def test_params_shapes_and_device():
    p = sample_params(ALL_ON, 7, 32, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert p.crop_boxes.shape == (7, 4) and p.crop_boxes.dtype == torch.float32
    for name in ("flip", "jitter", "grayscale", "blur", "solarize"):
        assert getattr(p, name).shape == (7,) and getattr(p, name).dtype == torch.bool
    for name in ("brightness", "contrast", "saturation", "hue", "blur_sigma"):
        assert getattr(p, name).shape == (7,) and getattr(p, name).dtype == torch.float32
    assert (p.hue.abs() <= 0.2).all() and (p.brightness >= 0.6).all() and (p.brightness <= 1.4).all()


def test_params_reach_the_device_in_one_copy_with_every_value_intact():
    # Issue 14, item 3: eleven small pageable copies per view were eleven blocking transfers on
    # CUDA. On `meta` (a device without data, standing in for the GPU) every copy still dispatches.
    from tests.training.sync_guard import HostSyncGuard

    with HostSyncGuard() as guard:
        sample_params(ALL_ON, 7, 32, 32, torch.Generator().manual_seed(0), torch.device("meta"))
    assert len(guard.uploads) == 1, guard.uploads
    # The packing keeps every value and dtype: the same draws as unpacked, field by field.
    packed = sample_params(ALL_ON, 7, 32, 32, torch.Generator().manual_seed(0), "cpu")
    g = torch.Generator().manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:  # the draws without packing, to compare with
        patch.setattr("hpsearch.augment.params._to_device", lambda fields, device: AugmentParams(**fields))
        plain = sample_params(ALL_ON, 7, 32, 32, g, "cpu")
    for name in AugmentParams.__dataclass_fields__:
        a, b = getattr(packed, name), getattr(plain, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_blur_kernel_size_is_odd_and_capped():
    assert blur_kernel_size(2.0, 224) == 13
    assert blur_kernel_size(2.0, 8) == 7 and blur_kernel_size(2.0, 9) == 9
    assert blur_kernel_size(0.1, 32) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu_without_host_sync():
    x = colour_images()
    p = sample_params(ALL_ON, len(x), 32, 32, torch.Generator().manual_seed(0), "cpu")
    expected = apply(x, p, 24)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 matmuls would cost crop precision (~1e-3)
    # Copied before the check: a blocking host-to-device copy is itself a sync (in training the
    # images are on the device already). One warm-up call initialises the pinned-memory pool.
    x_gpu = x.cuda()
    sample_params(ALL_ON, len(x), 32, 32, torch.Generator().manual_seed(0), "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync raises
    try:
        views = random_views(x_gpu, ALL_ON, 24, torch.Generator().manual_seed(0))
        p_gpu = sample_params(ALL_ON, len(x), 32, 32, torch.Generator().manual_seed(0), "cuda")
        out = apply(x_gpu, p_gpu, 24)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert views[0].device.type == "cuda"
    torch.testing.assert_close(out.cpu(), expected, atol=TOL_OP, rtol=0)
    assert math.isfinite(views[1].sum().item())


# ------------------------------------------------------------------------------- fast paths


def test_random_views_equal_apply_with_the_same_draws():
    # random_views skips the ops its config switches off (here blur, solarize, brightness); skipping
    # an identity may only change float32 rounding
    cfg = replace(SIMCLR, brightness=0.0)
    x = colour_images()
    views = random_views(x, cfg, 32, torch.Generator().manual_seed(3), n_views=2)
    g = torch.Generator().manual_seed(3)
    for view in views:
        p = sample_params(cfg, len(x), 32, 32, g, "cpu")
        torch.testing.assert_close(view, apply(x, p, 32, blur_kernel_size(cfg.blur_sigma[1], 32)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [32, 40])
def test_bilinear_and_matmul_resampling_agree_when_no_crop_shrinks(size):
    # images no larger than the output take the grid_sample path; the dense antialiasing matmuls
    # compute the same bilinear weights there
    from hpsearch.augment.crop import _resample_bilinear, _resample_matmul

    x = colour_images().float() / 255
    p = sample_params(ALL_ON, len(x), 32, 32, torch.Generator().manual_seed(size), "cpu")
    fast = _resample_bilinear(x, p.crop_boxes, p.flip, size)
    torch.testing.assert_close(fast, _resample_matmul(x, p.crop_boxes, p.flip, size), atol=1e-6, rtol=0)


def test_augmenting_leaves_torch_thread_count_as_it_was():
    threads = torch.get_num_threads()
    random_views(colour_images(), ALL_ON, 24, torch.Generator().manual_seed(0))
    apply(colour_images(), sample_params(ALL_ON, 24, 32, 32, torch.Generator().manual_seed(0), "cpu"), 24)
    assert torch.get_num_threads() == threads  # CPU augmentation narrows threads only while it runs
