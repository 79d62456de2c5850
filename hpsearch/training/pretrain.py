"""One trial's pretraining: model, optimiser and data on the training device, an epoch at a time."""

from __future__ import annotations

import math
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from hpsearch import augment
from hpsearch.config.schema import StudyConfig
from hpsearch.data import Splits, pretrain_batches
from hpsearch.training.backbones import build_backbone
from hpsearch.training.distributed import Ranks, SharedOnlineProbe
from hpsearch.training.online_probe import OnlineProbe
from hpsearch.training.optim import build_optimizer, warmup_cosine
from objectives import METHODS


class Diverged(Exception):
    """The SSL loss became NaN or infinite."""


class StopCheck(Protocol):
    """What the training loop needs of a stop request (hpsearch.study.interrupt.StopRequest): whether
    one is pending, and `check()`, which raises at a step boundary when it is."""

    @property
    def requested(self) -> bool: ...

    def check(self) -> None: ...


def resolve_device(name: str) -> torch.device:
    """`auto` trains on the GPU when one is present, on the CPU otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def use_bf16_autocast(device: torch.device, precision: str) -> bool:
    """Whether training on `device` runs under bf16 autocast (`training.precision`).

    Only on CUDA (the CPU always trains in float32, bit-exact for a seed). `bf16` asks for it;
    `auto` takes it only where the GPU computes bf16 natively (compute capability 8.0, Ampere, and
    newer): `is_bf16_supported()` also says yes on older GPUs (T4, V100) that merely emulate it,
    where bf16 convolutions fall back to slow kernels, so `auto` trains those in float32.
    """
    if device.type != "cuda" or precision == "fp32":
        return False
    return precision == "bf16" or torch.cuda.is_bf16_supported(including_emulation=False)


@dataclass
class EpochStats:
    epoch: int
    ssl_loss: float
    lr: float
    epoch_time: float
    online_accuracy: float | None = None  # the online linear probe's over the epoch (None: no labels)


class Pretraining:
    """Builds the method for a trial config and trains it, an epoch at a time (hpsearch.evaluation
    measures it).

    All randomness (init, shuffling, augmentation) flows from `seed`, so the same seed gives the
    same result on the CPU.

    With `ranks` (one of several DDP processes training the trial together), each rank trains on
    its own `batch_size // ranks.size` images of every global batch and the collectives of
    hpsearch.training.distributed keep the whole state the same on every rank.
    """

    def __init__(self, cfg: StudyConfig, splits: Splits, device: torch.device, seed: int, ranks: Ranks | None = None):
        self.cfg, self.splits, self.device, self.seed, self.ranks = cfg, splits, device, seed, ranks
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        backbone, feature_dim = build_backbone(cfg.model, splits.channels, cfg.data.image_size)
        method_cls = METHODS[cfg.objective.method]
        self.method = method_cls(backbone, feature_dim, cfg.objective, cfg.model.projector).to(device)
        # GPU speed features; on the CPU none of them applies, so CPU results stay bit-exact.
        on_cuda = device.type == "cuda"
        self.autocast = use_bf16_autocast(device, cfg.training.precision)
        self.memory_format = torch.channels_last if on_cuda else torch.contiguous_format
        self.method.to(memory_format=self.memory_format)
        if cfg.training.compile and on_cuda:
            self.method.backbone.compile()
        elif cfg.training.compile:
            # Inductor's CPU kernels sum in another order (measured: loss 4.888 vs 4.889, kNN 0.765 vs
            # 0.760), which would void "the same seed gives the same results on the CPU".
            warnings.warn("training.compile applies on CUDA only: training on the CPU without torch.compile",
                          stacklevel=2)
        n_images = len(splits.pretrain)
        # A batch never exceeds the data, and the last partial batch is dropped: contrastive
        # losses degrade on a tiny batch and every step should cost the same. Split between ranks,
        # the global batch is rounded down to a multiple of their number.
        world = ranks.size if ranks is not None else 1
        self.local_batch = min(cfg.training.batch_size, n_images) // world
        if self.local_batch < 2:
            raise ValueError(f"training.batch_size {cfg.training.batch_size} split between training.devices {world} "
                             f"leaves {self.local_batch} image(s) per process; SSL losses need at least 2")
        self.batch_size = self.local_batch * world
        self.steps_per_epoch = n_images // self.batch_size
        self.optimizer = build_optimizer(self.method, cfg.training.optimizer, self.batch_size)
        self.total_steps = cfg.training.epochs * self.steps_per_epoch
        self.scheduler = warmup_cosine(self.optimizer, cfg.training.warmup_epochs * self.steps_per_epoch,
                                       self.total_steps)
        self.epoch = 0  # completed epochs
        self._order: Tensor | None = None  # the running epoch's shuffle; None between epochs
        labels = splits.pretrain_labels
        self.online_probe: OnlineProbe | None = None
        if labels is not None and bool((labels >= 0).any()):  # ranks: one probe on the whole global batch
            self.online_probe = (OnlineProbe.of(self.method, splits.num_classes, device) if ranks is None
                                 else SharedOnlineProbe.among(ranks, self.method, splits.num_classes, device))
        # The probe's labels and the epoch's order live on the training device, so that each step
        # slices its labels there: a CPU index copied over would be a blocking copy every step.
        self._labels = labels.to(device) if self.online_probe is not None else None
        self._order_on_device: Tensor | None = None
        self._batch_order: Tensor | None = None  # this rank's part of the epoch's order (all of it alone)
        # Alone, augmentations draw from `generator` (as they always have); ranks reseed this one
        # each step, so that they augment differently while `generator` stays the same on all.
        self._augment_generator = torch.Generator() if ranks is not None else self.generator

    def train_epoch(self, stop: StopCheck | None = None) -> EpochStats:
        """Train to the end of the current epoch; raises Diverged on a non-finite loss.

        With `stop`, checks after every step whether a stop was requested and raises Interrupted
        there; the epoch's position is part of `state_dict`, so training resumes mid-epoch.
        """
        start = time.perf_counter()
        self.method.train()
        self._begin_epoch()
        loss_sum = self._loss_sum.to(self.device)  # summed on device: no host sync per step
        # In memory or streamed from the files (data.stream): the same batches, from the same position.
        for images in pretrain_batches(self.splits.pretrain, self._batch_order, self._position, self.local_batch):
            loss_sum += self.train_step(images)
            self._position += 1
            if stop is not None and stop.requested:
                self._loss_sum, self._elapsed = loss_sum.cpu(), self._elapsed + time.perf_counter() - start
                stop.check()
        mean_loss = loss_sum.item() / self.steps_per_epoch  # with ranks, every rank sums the global loss
        self.epoch += 1
        self._order = self._batch_order = None
        if not math.isfinite(mean_loss):
            raise Diverged(f"SSL loss is {mean_loss} at epoch {self.epoch}")
        online = self.online_probe.epoch_accuracy() if self.online_probe is not None else None
        return EpochStats(self.epoch, mean_loss, self._epoch_lr, self._elapsed + time.perf_counter() - start, online)

    def _begin_epoch(self) -> None:
        """Draw a new epoch's order, unless resuming one that was interrupted; put it on the device."""
        if self._order is None:
            self._order = torch.randperm(len(self.splits.pretrain), generator=self.generator)
            self._position, self._loss_sum, self._elapsed = 0, torch.zeros(()), 0.0
            self._epoch_lr = self.optimizer.param_groups[0]["lr"]
        self._batch_order = self._order if self.ranks is None else self.ranks.part(self._order, self.batch_size)
        if self.online_probe is not None:  # one copy per epoch; the CPU order stays for checkpoints
            self._order_on_device = self._batch_order.to(self.device)

    def train_step(self, images: Tensor) -> Tensor:
        """One optimiser step on the batch at the epoch's current position; returns its loss,
        detached, on the device. Nothing here reads a value back to the host (a GPU never waits;
        tests/training/test_host_sync.py)."""
        images = images.to(self.device, non_blocking=True)  # already there unless the splits were not moved
        if self.ranks is not None:
            self._augment_generator.manual_seed(self.ranks.augment_seed(self.seed, self.scheduler.last_epoch))
        views = self.method.make_views(images, self.cfg.augment, self.cfg.data.image_size, self._augment_generator)
        mixed = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast else nullcontext()
        with mixed:
            views = augment.normalise(views, self.splits.mean, self.splits.std, self.memory_format)
            loss = self.method.training_loss(views).float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.ranks is not None:
            loss = self.ranks.average_gradients([p for p in self.method.parameters() if p.requires_grad], loss)
        self.optimizer.step()
        self.scheduler.step()
        self.method.on_step_end(self.scheduler.last_epoch, self.total_steps)
        if self.ranks is not None:
            self.ranks.share_buffers(self.method)
        if self.online_probe is not None:
            rows = self._order_on_device[self._position * self.local_batch:(self._position + 1) * self.local_batch]
            self.online_probe.step(self._labels[rows])
        return loss.detach()

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
            _restore_cuda_rng(state["cuda_rng"])
        mid = state.get("mid_epoch")
        if mid is not None:
            self._order, self._position, self._loss_sum = mid["order"], mid["position"], mid["loss_sum"]
            self._elapsed, self._epoch_lr = mid["elapsed"], mid["lr"]


def _restore_cuda_rng(states: list[Tensor]) -> None:
    """Each visible GPU's generator from the state saved for the GPU of the same index.

    A checkpoint written where more GPUs were visible (another machine, CUDA_VISIBLE_DEVICES, a
    retry on a smaller node) restores the GPUs that exist: `set_rng_state_all` would raise
    IndexError at the first missing one and fail the resumed trial. Nothing in training draws
    from a CUDA generator today (augmentation and shuffling use the CPU generator), so the states
    are kept only for code that may.
    """
    for index, state in enumerate(states[:torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, index)


def _numpy_rng_state() -> tuple:
    # As plain values and a tensor: checkpoints are loaded with weights_only=True, which refuses ndarrays.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached


def _set_numpy_rng_state(state: tuple) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
