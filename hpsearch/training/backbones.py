"""Backbones by the name study files use (`model.backbone`).

Each registry entry builds a module that maps `[N, C, H, W]` images to `[N, feature_dim]` features
and carries `feature_dim`, read off the built module (never configured). Every backbone is built
from scratch (`weights=None`: nothing is downloaded) for the data's channels and image size.

Which `model.*` fields each backbone reads (the others are ignored, so that a study may search
over backbones with one fixed `model` section):
- `small_cnn`: `width`.
- `resnet18`, `resnet34`, `resnet50`: `cifar_stem`.
- `vit_tiny`, `vit_small`: `patch_size`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

from torch import nn

from hpsearch.config.schema import ModelConfig, check_patch_size

# Below this image size a ResNet gets the CIFAR stem when `model.cifar_stem` is null: the ImageNet
# stem divides the resolution by 4 before the first block, leaving a 32 px image 1x1 at layer4.
CIFAR_STEM_MAX_SIZE = 64


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks (widths w, 2w, 4w, 8w; the last three halve the resolution), then
    global average pooling. Cheap enough to pretrain on 2 CPU cores; feature_dim = 8 * width."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        blocks, prev = [], in_channels
        for i, w in enumerate(widths):
            blocks += [
                nn.Conv2d(prev, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ]
            prev = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = prev

    def forward(self, x):
        return self.features(x)


def uses_cifar_stem(model: ModelConfig, image_size: int) -> bool:
    """`model.cifar_stem`, or when null, whether the image is small enough to need it."""
    return image_size <= CIFAR_STEM_MAX_SIZE if model.cifar_stem is None else model.cifar_stem


def resnet(depth: int, model: ModelConfig, in_channels: int, image_size: int) -> nn.Module:
    """A torchvision ResNet without its classifier (features after global average pooling).

    The CIFAR stem (solo-learn, SimCLR's CIFAR variant) is a 3x3 stride-1 conv1 and no max-pool;
    the ImageNet stem keeps the 7x7 stride-2 conv1 and the max-pool, with conv1 rebuilt only when
    the data do not have 3 channels.
    """
    from torchvision import models  # lazily: torchvision takes seconds to import and study-file checks need none

    net = getattr(models, f"resnet{depth}")(weights=None)
    if uses_cifar_stem(model, image_size):
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    net.feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def vit(hidden_dim: int, num_heads: int, model: ModelConfig, in_channels: int, image_size: int) -> nn.Module:
    """A torchvision ViT (12 blocks, MLP 4x wide) whose features are the final class token."""
    from torchvision.models.vision_transformer import VisionTransformer

    check_patch_size(model, image_size)
    net = VisionTransformer(image_size=image_size, patch_size=model.patch_size, num_layers=12, num_heads=num_heads,
                            hidden_dim=hidden_dim, mlp_dim=4 * hidden_dim)
    if in_channels != 3:  # torchvision hard-codes RGB in the patch embedding; same init as its own
        net.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=model.patch_size, stride=model.patch_size)
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / (in_channels * model.patch_size ** 2)))
        nn.init.zeros_(net.conv_proj.bias)
    net.heads = nn.Identity()
    net.feature_dim = hidden_dim
    return net


# name -> factory(model_cfg, in_channels, image_size); each returned module has `feature_dim`.
# Keyed by exactly hpsearch.config.names.BACKBONES, which the schema validates against.
BACKBONES: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "small_cnn": lambda model, in_channels, image_size: SmallCNN(in_channels, model.width),
    "resnet18": partial(resnet, 18),
    "resnet34": partial(resnet, 34),
    "resnet50": partial(resnet, 50),
    "vit_tiny": partial(vit, 192, 3),  # ViT-Ti/S sizes of DeiT (Touvron et al. 2021)
    "vit_small": partial(vit, 384, 6),
}


def build_backbone(model: ModelConfig, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    """The backbone `model.backbone` for `in_channels` x `image_size` x `image_size` inputs, and its
    feature dimension."""
    backbone = BACKBONES[model.backbone](model, in_channels, image_size)
    return backbone, backbone.feature_dim
