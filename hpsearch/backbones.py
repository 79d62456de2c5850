"""Backbones by the name study files use (`model.backbone`); each reports its feature dimension."""

from __future__ import annotations

from typing import Callable

from torch import nn


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


BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    "small_cnn": lambda in_channels, width: SmallCNN(in_channels, width),
}


def build_backbone(name: str, in_channels: int, width: int) -> tuple[nn.Module, int]:
    """Return the backbone and its feature dimension (derived, never configured twice)."""
    backbone = BACKBONES[name](in_channels, width)
    return backbone, backbone.feature_dim
