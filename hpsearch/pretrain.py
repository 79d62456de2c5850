"""One trial's pretraining: model, optimiser and data on the training device, an epoch at a time."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from hpsearch.backbones import build_backbone
from hpsearch.data import Splits
from hpsearch.optim import build_optimizer, warmup_cosine
from hpsearch.probes import extract_features, knn_accuracy, linear_probe_accuracy
from hpsearch.schema import StudyConfig
from objectives import METHODS


class Diverged(Exception):
    """The SSL loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """`auto` trains on the GPU when one is present, on the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class EpochStats:
    epoch: int
    ssl_loss: float
    lr: float
    epoch_time: float


class Pretraining:
    """Builds the method for a trial config and trains it; evaluates its backbone on demand.

    All randomness (init, shuffling, augmentation) flows from `seed`, so the same seed gives the
    same result on the CPU.
    """

    def __init__(self, cfg: StudyConfig, splits: Splits, device: torch.device, seed: int):
        self.cfg, self.splits, self.device = cfg, splits, device
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        backbone, feature_dim = build_backbone(cfg.model.backbone, splits.channels, cfg.model.width)
        method_cls = METHODS[cfg.objective.method]
        self.method = method_cls(backbone, feature_dim, cfg.objective, cfg.model.projector).to(device)
        n_images = len(splits.pretrain)
        # A batch never exceeds the data, and the last partial batch is dropped: contrastive
        # losses degrade on a tiny batch and every step should cost the same.
        self.batch_size = min(cfg.training.batch_size, n_images)
        self.steps_per_epoch = n_images // self.batch_size
        self.optimizer = build_optimizer(self.method, cfg.training.optimizer, self.batch_size)
        self.total_steps = cfg.training.epochs * self.steps_per_epoch
        self.scheduler = warmup_cosine(self.optimizer, cfg.training.warmup_epochs * self.steps_per_epoch,
                                       self.total_steps)
        self.epoch = 0

    def _normalise(self, views: list[Tensor]) -> list[Tensor]:
        mean = self.splits.mean.view(1, -1, 1, 1)
        std = self.splits.std.view(1, -1, 1, 1)
        return [(v - mean) / std for v in views]

    def train_epoch(self) -> EpochStats:
        """One pass over the pretraining split; raises Diverged on a non-finite loss."""
        start = time.perf_counter()
        self.method.train()
        lr = self.optimizer.param_groups[0]["lr"]
        order = torch.randperm(len(self.splits.pretrain), generator=self.generator).to(self.device)
        loss_sum = torch.zeros((), device=self.device)  # summed on device: no host sync per step
        size = self.cfg.data.image_size
        for step in range(self.steps_per_epoch):
            images = self.splits.pretrain[order[step * self.batch_size:(step + 1) * self.batch_size]]
            views = self.method.make_views(images, self.cfg.augment, size, self.generator)
            loss = self.method.training_loss(self._normalise(views))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.method.on_step_end(self.scheduler.last_epoch, self.total_steps)
            loss_sum += loss.detach()
        self.epoch += 1
        mean_loss = loss_sum.item() / self.steps_per_epoch
        if not torch.isfinite(torch.tensor(mean_loss)):
            raise Diverged(f"SSL loss is {mean_loss} at epoch {self.epoch}")
        return EpochStats(self.epoch, mean_loss, lr, time.perf_counter() - start)

    def _features(self, images: Tensor) -> Tensor:
        return extract_features(self.method.backbone, images, self.splits.mean, self.splits.std)

    def knn_proxy(self) -> float:
        """Weighted cosine kNN accuracy (leave-one-out) of backbone features on the labelled probe split."""
        knn = self.cfg.evaluation.knn
        features = self._features(self.splits.probe_images)
        return knn_accuracy(features, self.splits.probe_labels, knn.k, knn.temperature, self.splits.num_classes).item()

    def linear_probe(self) -> float:
        """The delayed true metric: a linear probe on frozen features, trained on the probe split and
        measured on the held-out split."""
        probe = self.cfg.evaluation.linear_probe
        return linear_probe_accuracy(
            self._features(self.splits.probe_images), self.splits.probe_labels,
            self._features(self.splits.eval_images), self.splits.eval_labels,
            self.splits.num_classes, probe.steps, probe.lr, probe.weight_decay,
        ).item()
