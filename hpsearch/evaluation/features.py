"""Frozen backbone features of images, the input of every probe and proxy."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def extract_features(backbone: nn.Module, images: Tensor, mean: Tensor, std: Tensor, batch_size: int = 1024) -> Tensor:
    """Backbone features [N, D] of uint8 images [N, C, H, W], in eval mode (BatchNorm uses running stats)."""
    was_training = backbone.training
    backbone.eval()
    scale = std.view(1, -1, 1, 1)
    shift = mean.view(1, -1, 1, 1)
    features = [backbone((chunk.float().div(255) - shift) / scale) for chunk in images.split(batch_size)]
    backbone.train(was_training)
    return torch.cat(features).float()
