"""Several processes (DDP ranks) training one trial together: joining the process group, and the
collectives that keep every rank's copy of the training identical step after step.

Why identical everywhere: rank 0 alone evaluates and checkpoints, so its state must be the whole
state. Each step every rank computes the gradients of its own slice of the global batch; one
all-reduce averages them (and sums the step's loss, so every rank holds the global loss), then the
same optimiser step runs everywhere. Buffers (batch-norm statistics, MoCo's queue, DINO's centre)
are broadcast from rank 0 after each step, as DistributedDataParallel does by default, and the
online probe trains on the features of the whole global batch. An explicit all-reduce, rather than
wrapping the method in DistributedDataParallel, keeps the methods (objectives/) unchanged: DDP
needs the loss to come out of `forward`, and their momentum targets update outside it.

Control (whether to stop, the trial's setup) goes over a gloo group on the CPU, so that asking
"stop now?" each step never waits for a GPU.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from hpsearch.training.online_probe import OnlineProbe

# Long enough for rank 0 to evaluate the proxies while the others wait for its decision; a peer
# that died closes its sockets and fails the collective at once, so this bounds only a hung one.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class StopTogether(Exception):
    """Raised on a follower (rank > 0) at the step where rank 0 stopped the trial (Ctrl-C, SIGTERM)."""


def check_devices(device: torch.device, devices: int) -> None:
    """One line when `training.devices` asks for more GPUs than this machine has (from `device`'s index on)."""
    if device.type == "cuda":
        first, visible = device.index or 0, torch.cuda.device_count()
        if first + devices > visible:
            raise ValueError(f"training.devices: {devices} asks for {devices} GPUs from cuda:{first}, "
                             f"but {visible} {'is' if visible == 1 else 'are'} visible")
    elif device.type != "cpu":
        raise ValueError(f"training.devices: {devices} runs on CUDA (NCCL) or the CPU (gloo), not on {device}")


def device_of(device: torch.device, rank: int) -> torch.device:
    """Rank r trains on the r-th GPU after rank 0's; on the CPU every rank does."""
    return torch.device("cuda", (device.index or 0) + rank) if device.type == "cuda" else device


@dataclass
class Ranks:
    """This process's place among the ranks of one trial, and the collectives training uses."""

    rank: int
    size: int
    control: Any  # the gloo group (the default group itself when training on the CPU)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def part(self, order: Tensor, batch: int) -> Tensor:
        """This rank's positions of an epoch's `order`: its `batch // size` images of each global
        batch of `batch`, so that the ranks together cover every full batch once."""
        steps = len(order) // batch
        return order[:steps * batch].view(steps, self.size, batch // self.size)[:, self.rank].reshape(-1)

    def augment_seed(self, seed: int, step: int) -> int:
        """The seed of this rank's augmentations at global `step`: each rank draws its own, and the
        draw is a function of (seed, step, rank), so no per-rank generator state needs saving."""
        return int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1, np.uint64)[0] >> 1)

    def average_gradients(self, parameters: list[nn.Parameter], loss: Tensor) -> Tensor:
        """Average the gradients over the ranks (one all-reduce with the loss appended); returns the
        step's global loss, the mean over ranks, the same on every rank."""
        grads = [p.grad for p in parameters if p.grad is not None]  # the same set on every rank
        flat = torch.cat([*(g.reshape(-1) for g in grads), loss.detach().reshape(1).float()])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()
        return flat[-1]

    def share_buffers(self, module: nn.Module) -> None:
        """Every rank takes rank 0's buffers (one broadcast per dtype)."""
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for buffer in module.buffers():
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            offset = 0
            for buffer in buffers:
                buffer.copy_(flat[offset:offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()

    def gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` (same shape everywhere), concatenated in rank order along dim 0."""
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def agree(self, value: bool) -> bool:
        """Rank 0's `value`, on every rank (the others' argument is ignored)."""
        flag = torch.tensor([int(value)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.control)
        return bool(flag.item())

    def share(self, obj: Any = None) -> Any:
        """Rank 0's `obj` (picklable), on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]


class SharedStop:
    """The stop request of a training loop whose ranks must stop at the same step: rank 0's.

    Each read of `requested` is a collective (rank 0 broadcasts whether it was asked to stop), so
    every rank reads it once per step, as `Pretraining.train_epoch` does. `local` is rank 0's
    StopRequest; on the followers it is None and `check()` raises StopTogether.
    """

    def __init__(self, ranks: Ranks, local=None):
        self.ranks, self.local = ranks, local

    @property
    def requested(self) -> bool:
        return self.ranks.agree(self.local is not None and self.local.requested)

    def check(self) -> None:
        if self.local is not None:
            self.local.check()  # rank 0: raises Interrupted
        raise StopTogether("rank 0 stopped the trial")


class SharedOnlineProbe(OnlineProbe):
    """The online probe of one rank, trained on the features and labels of the whole global batch
    (all-gathered), so that it is the same on every rank and rank 0's accuracy covers every image."""

    ranks: Ranks

    @classmethod
    def among(cls, ranks: Ranks, method, num_classes: int, device: torch.device) -> "SharedOnlineProbe":
        probe = cls.of(method, num_classes, device)
        probe.ranks = ranks
        return probe

    def batch(self, labels: Tensor) -> tuple[Tensor, Tensor] | None:
        pair = super().batch(labels)
        if pair is None:  # the same on every rank: the same method ran the same code
            return None
        features, labels = pair
        return self.ranks.gather(features), self.ranks.gather(labels)


def join(rank: int, size: int, host: str, port: int, device: torch.device, store=None) -> Ranks:
    """Join the trial's process group (NCCL on CUDA, gloo on the CPU) through the TCP store at
    host:port (rank 0 passes the `store` it hosts)."""
    if store is None:
        store = dist.TCPStore(host, port, size, is_master=False, timeout=COLLECTIVE_TIMEOUT)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT,
                                device_id=device)
        control = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=COLLECTIVE_TIMEOUT)
        control = dist.group.WORLD
    return Ranks(rank, size, control)


def leave() -> None:
    """Leave the process group (a peer still waiting in a collective fails at once)."""
    if dist.is_initialized():
        dist.destroy_process_group()
