"""Streaming pretraining images from their files, for image-file datasets too large to hold decoded.

`StreamedImages` stands where the in-memory uint8 tensor stands in `Splits.pretrain`: it has a
length, a shape and a device, and `pretrain_batches` fetches the same batches from either. Batches
follow the caller's shuffle (`order`, from `start`), so a seed gives the same batches, and a
checkpoint taken mid-epoch resumes at the same image, whether the images stream or not. DataLoader
worker processes only decode (`decode_image`, the cache's own decode, so a streamed image equals
the cached one bit for bit); augmentation stays on the training device.
"""

from __future__ import annotations

import copy
import os
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from hpsearch.data.sources import as_chw, decode_image, is_colour


class ImageFiles(Dataset):
    """Files -> uint8 [C, S, S] tensors. A file that cannot be decoded gives its one-line error as a
    string (raised by the caller: an exception from a worker would arrive wrapped in a traceback)."""

    def __init__(self, files: list[str], image_size: int, channels: int):
        # One numpy bytes array, not a list of str: forked workers touching a million Python objects
        # would copy the pages their reference counts live on.
        self.paths = np.array([os.fsencode(f) for f in files])
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor | str:
        try:
            return as_chw(decode_image(os.fsdecode(self.paths[i]), self.image_size), self.channels)
        except ValueError as err:
            return str(err)


def _stack(items: list[Tensor | str]) -> Tensor | str:
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else torch.stack(items)


class _OrderedBatches(Sampler):
    """The batch sampler: full batches of `order` from batch `start` on (the last partial one dropped,
    as in memory). Set before each pass; a persistent DataLoader reads it anew at every `iter`."""

    def __init__(self):
        super().__init__()
        self.order, self.start, self.batch_size = np.zeros(0, dtype=np.int64), 0, 1

    def __len__(self) -> int:
        return max(0, len(self.order) // self.batch_size - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        order, start, size = self.order, self.start, self.batch_size
        return (order[i * size:(i + 1) * size].tolist() for i in range(start, len(order) // size))


def _init_worker(_: int) -> None:
    """Workers decode with one thread, in a process group of their own: a Ctrl-C (or a SIGTERM sent
    to the trainer's process group) reaches only the trainer, which finishes its step and writes its
    checkpoint with the workers still there. They stop with the trainer: DataLoader shutdown at
    exit, or PyTorch's watchdog (within seconds) when the trainer is killed outright."""
    torch.set_num_threads(1)
    os.setpgrp()


class StreamedImages:
    """Unlabelled pretraining images decoded from their files batch by batch, in `workers` DataLoader
    processes (0: in this process). Kept across epochs and trials: the workers persist."""

    dtype = torch.uint8

    def __init__(self, files: list[str], image_size: int, channels: int, workers: int,
                 device: torch.device | str = "cpu"):
        self.dataset = ImageFiles(files, image_size, channels)
        self.workers, self.device = workers, torch.device(device)
        self._loader: DataLoader | None = None  # made at the first pass; its workers then persist
        self._sampler = _OrderedBatches()

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> torch.Size:
        size = self.dataset.image_size
        return torch.Size((len(self.dataset), self.dataset.channels, size, size))

    def to(self, device) -> "StreamedImages":
        """The same images delivered to `device` (pinned host memory and asynchronous copies on CUDA)."""
        if torch.device(device) == self.device:
            return self
        moved = copy.copy(self)  # shares the file list, not the loader and its workers
        moved.device, moved._loader, moved._sampler = torch.device(device), None, _OrderedBatches()
        return moved

    def batches(self, order: Tensor, start: int, batch_size: int) -> Iterator[Tensor]:
        """uint8 [batch_size, C, S, S] batches of the images at `order`, from batch `start` to the last full one."""
        self._sampler.order, self._sampler.start = order.cpu().numpy(), start
        self._sampler.batch_size = batch_size
        try:
            for batch in self._loader_once():
                if isinstance(batch, str):
                    raise ValueError(batch)
                yield batch.to(self.device, non_blocking=True)
        except Exception:
            self._loader = None  # whatever broke, the next pass starts afresh
            raise

    def _loader_once(self) -> DataLoader:
        # A worker killed since the last pass (the OOM killer, a crash) failed that pass's trial;
        # the next one starts with fresh workers.
        running = getattr(self._loader, "_iterator", None)
        if running is not None and not all(w.is_alive() for w in getattr(running, "_workers", ())):
            self._loader = None
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset, batch_sampler=self._sampler, num_workers=self.workers, collate_fn=_stack,
                pin_memory=self.device.type == "cuda", worker_init_fn=_init_worker,
                persistent_workers=self.workers > 0,
                generator=torch.Generator(),  # the loader's seed draw must not advance the global RNG
            )
        return self._loader


# --- pixel statistics of a streamed set -----------------------------------------------------------


class _Summary(Dataset):
    """Per file: whether it decodes to colour, and for the files of `decode` the counts of each uint8
    value, [4, 256]: row 0 for a grey image, rows 1-3 for R, G, B of a colour one."""

    def __init__(self, files: list[str], decode: np.ndarray, image_size: int):
        self.paths, self.decode, self.image_size = np.array([os.fsencode(f) for f in files]), decode, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, bool] | str:
        path, counts = os.fsdecode(self.paths[i]), np.zeros((4, 256), dtype=np.int64)
        try:
            if not self.decode[i]:
                return torch.from_numpy(counts), is_colour(path)
            image = decode_image(path, self.image_size)
        except ValueError as err:
            return str(err)
        if image.ndim == 2:
            counts[0] = np.bincount(image.ravel(), minlength=256)
        else:
            offset = np.array([0, 256, 512])  # one bincount for the three channels
            counts[1:] = np.bincount((image.reshape(-1, 3) + offset).ravel(), minlength=768).reshape(3, 256)
        return torch.from_numpy(counts), image.ndim == 3


def _sum(items: list) -> tuple[Tensor, bool] | str:
    errors = [item for item in items if isinstance(item, str)]
    return errors[0] if errors else (torch.stack([c for c, _ in items]).sum(0), any(colour for _, colour in items))


def pixel_summary(decoded: list[str], headers: list[str], image_size: int, workers: int) -> tuple[int, Tensor]:
    """The channel count of a dataset (3 if any of its files is colour, else 1) and the per-channel
    counts of each uint8 value, [C, 256], over the images of `decoded` as the cache would hold them
    (grey images repeated into 3 channels in a colour dataset). `headers` are the dataset's other
    files: only their headers are read, for the channel count."""
    decode = np.concatenate([np.ones(len(decoded), dtype=bool), np.zeros(len(headers), dtype=bool)])
    loader = DataLoader(_Summary(decoded + headers, decode, image_size), batch_size=256, num_workers=workers,
                        collate_fn=_sum, worker_init_fn=_init_worker, generator=torch.Generator())
    total, colour = torch.zeros(4, 256, dtype=torch.int64), False
    for part in loader:
        if isinstance(part, str):
            raise ValueError(part)
        total += part[0]
        colour |= part[1]
    if colour:
        return 3, total[1:] + total[0]
    return 1, total[:1]
