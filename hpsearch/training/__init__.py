"""Pretraining one trial's method: backbones by name, optimisers and schedules, the epoch loop on the
training device, the online linear probe, and atomic checkpoints to continue it bit for bit."""

from hpsearch.training import checkpoint
from hpsearch.training.backbones import BACKBONES, build_backbone
from hpsearch.training.optim import LARS, build_optimizer, warmup_cosine
from hpsearch.training.pretrain import Diverged, EpochStats, Pretraining, resolve_device

__all__ = ["BACKBONES", "Diverged", "EpochStats", "LARS", "Pretraining", "build_backbone", "build_optimizer",
           "checkpoint", "resolve_device", "warmup_cosine"]
