"""Per-trial checkpoints: atomic, checksummed, the newest two kept, loadable without running code.

File format: the bytes of `torch.save(state)` followed by their 32-byte SHA-256. A file cut short
(a worker killed mid-write on a filesystem without atomic rename, a full disk) or damaged fails
the checksum, and loading falls back to the previous checkpoint with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

DIGEST_BYTES = 32
KEEP = 2  # the newest and, in case it is damaged, the one before


class CorruptCheckpoint(Exception):
    pass


def checkpoint_path(directory: Path, epoch: int, step: int) -> Path:
    return directory / f"epoch{epoch:05d}-step{step:07d}.pt"


def save(directory: Path, epoch: int, step: int, state: dict[str, Any]) -> Path:
    """Write atomically (temporary file, fsync, rename), then drop all but the newest KEEP files."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    target = checkpoint_path(directory, epoch, step)
    temporary = target.with_suffix(".tmp")
    with open(temporary, "wb") as handle:
        handle.write(payload)
        handle.write(hashlib.sha256(payload).digest())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    _fsync_directory(directory)
    for old in _newest_first(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return target


def load_latest(directory: Path, map_location="cpu") -> dict[str, Any] | None:
    """The newest checkpoint that passes its checksum (warning about any skipped), or None.

    On the CPU by default, whatever device trained it: the RNG states in it must be CPU byte
    tensors to be restored, and `load_state_dict` moves weights to wherever the model lives.
    """
    for path in _newest_first(directory):
        try:
            return _load(path, map_location)
        except CorruptCheckpoint as err:
            warnings.warn(f"{path}: {err}; falling back to the previous checkpoint", stacklevel=2)
    return None


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def _load(path: Path, map_location) -> dict[str, Any]:
    data = path.read_bytes()
    payload, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if len(data) <= DIGEST_BYTES or hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpoint("checksum mismatch (truncated or damaged)")
    # weights_only: a checkpoint file can hold tensors and plain containers, never code to run.
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def _newest_first(directory: Path) -> list[Path]:
    return sorted(directory.glob("epoch*-step*.pt"), reverse=True) if directory.exists() else []


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
