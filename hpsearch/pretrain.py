"""One trial's pretraining: model, optimiser and data on the training device, an epoch at a time."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np

import torch
from torch import Tensor

from hpsearch.backbones import build_backbone
from hpsearch.data import Splits, pretrain_batches
from hpsearch.optim import build_optimizer, warmup_cosine
from hpsearch.probes import (ClassAccuracy, class_accuracy, extract_features, finetune_predict, knn_accuracy,
                             knn_predict, linear_probe_predict)
from hpsearch.proxies import alignment, alpha_req, normalised_std, rankme, uniformity
from hpsearch import augment
from hpsearch.interrupt import StopRequest
from hpsearch.online_probe import OnlineProbe
from hpsearch.schema import StudyConfig
from objectives import METHODS


class Diverged(Exception):
    """The SSL loss became NaN or infinite."""


# evaluation.final_metric -> the MLflow metric of its overall accuracy (the trial's value)
FINAL_METRIC_KEYS = {"linear_probe": "linear_probe_accuracy", "knn": "knn_final_accuracy",
                     "finetune": "finetune_accuracy"}


@dataclass(frozen=True)
class FinalMetric:
    """The delayed metric of a trained backbone: which one, and its overall and per-class accuracy."""

    name: str  # evaluation.final_metric
    scores: ClassAccuracy

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy

    def metrics(self) -> dict[str, float]:
        """For MLflow: the overall accuracy under FINAL_METRIC_KEYS, `worst_class_accuracy` and
        `class_accuracy/<class index>` for each class of the held-out split."""
        return {FINAL_METRIC_KEYS[self.name]: self.scores.accuracy,
                "worst_class_accuracy": self.scores.worst_accuracy,
                **{f"class_accuracy/{c}": a for c, a in self.scores.per_class.items()}}


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
    online_accuracy: float | None = None  # the online linear probe's over the epoch (None: no labels)


class Pretraining:
    """Builds the method for a trial config and trains it; evaluates its backbone on demand.

    All randomness (init, shuffling, augmentation) flows from `seed`, so the same seed gives the
    same result on the CPU.
    """

    def __init__(self, cfg: StudyConfig, splits: Splits, device: torch.device, seed: int):
        self.cfg, self.splits, self.device, self.seed = cfg, splits, device, seed
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        backbone, feature_dim = build_backbone(cfg.model, splits.channels, cfg.data.image_size)
        method_cls = METHODS[cfg.objective.method]
        self.method = method_cls(backbone, feature_dim, cfg.objective, cfg.model.projector).to(device)
        # GPU speed features; on the CPU none of them applies, so CPU results stay bit-exact.
        on_cuda = device.type == "cuda"
        self.autocast = on_cuda and cfg.training.precision in ("auto", "bf16")
        self.memory_format = torch.channels_last if on_cuda else torch.contiguous_format
        self.method.to(memory_format=self.memory_format)
        if cfg.training.compile:
            self.method.backbone.compile()
        n_images = len(splits.pretrain)
        # A batch never exceeds the data, and the last partial batch is dropped: contrastive
        # losses degrade on a tiny batch and every step should cost the same.
        self.batch_size = min(cfg.training.batch_size, n_images)
        self.steps_per_epoch = n_images // self.batch_size
        self.optimizer = build_optimizer(self.method, cfg.training.optimizer, self.batch_size)
        self.total_steps = cfg.training.epochs * self.steps_per_epoch
        self.scheduler = warmup_cosine(self.optimizer, cfg.training.warmup_epochs * self.steps_per_epoch,
                                       self.total_steps)
        self.epoch = 0  # completed epochs
        self._order: Tensor | None = None  # the running epoch's shuffle; None between epochs
        labels = splits.pretrain_labels
        self.online_probe = (OnlineProbe(self.method.backbone, feature_dim, splits.num_classes, device)
                             if labels is not None and bool((labels >= 0).any()) else None)

    def _normalise(self, views: list[Tensor]) -> list[Tensor]:
        mean = self.splits.mean.view(1, -1, 1, 1)
        std = self.splits.std.view(1, -1, 1, 1)
        return [((v - mean) / std).contiguous(memory_format=self.memory_format) for v in views]

    def train_epoch(self, stop: StopRequest | None = None) -> EpochStats:
        """Train to the end of the current epoch; raises Diverged on a non-finite loss.

        With `stop`, checks after every step whether a stop was requested and raises Interrupted
        there; the epoch's position is part of `state_dict`, so training resumes mid-epoch.
        """
        start = time.perf_counter()
        self.method.train()
        if self._order is None:  # a new epoch (else: resuming one that was interrupted)
            self._order = torch.randperm(len(self.splits.pretrain), generator=self.generator)
            self._position, self._loss_sum, self._elapsed = 0, torch.zeros(()), 0.0
            self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = self._loss_sum.to(self.device)  # summed on device: no host sync per step
        size = self.cfg.data.image_size
        # In memory or streamed from the files (data.stream): the same batches, from the same position.
        for images in pretrain_batches(self.splits.pretrain, self._order, self._position, self.batch_size):
            images = images.to(self.device, non_blocking=True)  # already there unless the splits were not moved
            views = self.method.make_views(images, self.cfg.augment, size, self.generator)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.method.training_loss(self._normalise(views)).float()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.method.on_step_end(self.scheduler.last_epoch, self.total_steps)
            if self.online_probe is not None:
                batch = self._order[self._position * self.batch_size:(self._position + 1) * self.batch_size]
                self.online_probe.step(self.splits.pretrain_labels[batch.to(self.splits.pretrain_labels.device)].to(self.device))
            loss_sum += loss.detach()
            self._position += 1
            if stop is not None and stop.requested:
                self._loss_sum, self._elapsed = loss_sum.cpu(), self._elapsed + time.perf_counter() - start
                stop.check()
        mean_loss = loss_sum.item() / self.steps_per_epoch
        self.epoch += 1
        self._order = None
        if not math.isfinite(mean_loss):
            raise Diverged(f"SSL loss is {mean_loss} at epoch {self.epoch}")
        online = self.online_probe.epoch_accuracy() if self.online_probe is not None else None
        return EpochStats(self.epoch, mean_loss, self._epoch_lr, self._elapsed + time.perf_counter() - start, online)

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit: weights (targets, queues and centres are
        submodules or buffers of the method), optimiser, schedule, epoch position and RNG states."""
        state = {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "numpy_rng": _numpy_rng_state(),
        }
        if self.online_probe is not None:
            state["online_probe"] = self.online_probe.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self._order is not None:  # interrupted mid-epoch
            state["mid_epoch"] = {"order": self._order, "position": self._position, "loss_sum": self._loss_sum,
                                  "elapsed": self._elapsed, "lr": self._epoch_lr}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        if self.online_probe is not None and "online_probe" in state:
            self.online_probe.load_state_dict(state["online_probe"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        _set_numpy_rng_state(state["numpy_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        mid = state.get("mid_epoch")
        if mid is not None:
            self._order, self._position, self._loss_sum = mid["order"], mid["position"], mid["loss_sum"]
            self._elapsed, self._epoch_lr = mid["elapsed"], mid["lr"]

    def _features(self, images: Tensor) -> Tensor:
        return extract_features(self.method.backbone, images, self.splits.mean, self.splits.std)

    @torch.no_grad()
    def proxies(self, subset: int = 256) -> dict[str, float]:
        """The kNN proxy plus representation diagnostics, from one pass over the probe split and
        two augmented views of its first `subset` images (views drawn from a fixed, separate
        generator, so evaluating never changes training)."""
        knn = self.cfg.evaluation.knn
        features = self._features(self.splits.probe_images)
        if not torch.isfinite(features).all():  # a finite loss can hide exploded BatchNorm statistics
            raise Diverged(f"non-finite backbone features at epoch {self.epoch}")
        images = self.splits.probe_images[:subset]
        views = augment.random_views(images, self.cfg.augment, self.cfg.data.image_size,
                                     torch.Generator().manual_seed(0), 2)
        was_training = self.method.training
        self.method.eval()
        z1, z2 = (self.method.embed(v) for v in self._normalise(views))
        self.method.train(was_training)
        values = {
            "knn_accuracy": knn_accuracy(features, self.splits.probe_labels, knn.k, knn.temperature, self.splits.num_classes),
            "rankme": rankme(features),
            "alpha_req": alpha_req(features),
            "alignment": alignment(z1, z2),
            "uniformity": uniformity(z1),
            "normalised_std": normalised_std(z1),
        }
        return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))  # one host sync

    def linear_probe(self) -> float:
        """The linear probe on frozen features, trained on the probe split and measured on the
        held-out split (the default final metric, and the random-init baseline's)."""
        return (self._linear_probe_predictions() == self.splits.eval_labels).float().mean().item()

    def final_metric(self) -> FinalMetric:
        """The delayed true metric `evaluation.final_metric`, trained on the probe split and measured
        on the held-out split, overall and per class. Never changes the trained model."""
        name = self.cfg.evaluation.final_metric
        predict = {"linear_probe": self._linear_probe_predictions, "knn": self._knn_predictions,
                   "finetune": self._finetune_predictions}[name]
        return FinalMetric(name, class_accuracy(predict(), self.splits.eval_labels, self.splits.num_classes))

    def _linear_probe_predictions(self) -> Tensor:
        probe = self.cfg.evaluation.linear_probe
        return linear_probe_predict(
            self._features(self.splits.probe_images), self.splits.probe_labels,
            self._features(self.splits.eval_images),
            self.splits.num_classes, probe.steps, probe.lr, probe.weight_decay,
        )

    def _knn_predictions(self) -> Tensor:
        """Weighted kNN of each held-out image among the probe split's features (evaluation.knn)."""
        knn = self.cfg.evaluation.knn
        return knn_predict(self._features(self.splits.probe_images), self.splits.probe_labels,
                           self._features(self.splits.eval_images), knn.k, knn.temperature, self.splits.num_classes)

    def _finetune_predictions(self) -> Tensor:
        """Fine-tunes a copy of the backbone (evaluation.finetune), seeded with the trial's seed."""
        tune = self.cfg.evaluation.finetune
        return finetune_predict(
            self.method.backbone, self.splits.probe_images, self.splits.probe_labels, self.splits.eval_images,
            self.splits.mean, self.splits.std, self.splits.num_classes, blocks=tune.blocks, epochs=tune.epochs,
            batch_size=tune.batch_size, lr=tune.lr, weight_decay=tune.weight_decay, flip_p=tune.flip_p,
            seed=self.seed, autocast=self.autocast, memory_format=self.memory_format, name=self.cfg.model.backbone,
        )


def _numpy_rng_state() -> tuple:
    # As plain values and a tensor: checkpoints are loaded with weights_only=True, which refuses ndarrays.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
