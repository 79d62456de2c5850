"""The on-disk cache of decoded splits: uint8 tensors keyed by source, files and image size (and, for the
probe and eval subsets and pixel statistics of a streamed dataset, by the selected files)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from hpsearch.data.sources import DATASETS, _decode, first_line

CACHE_FORMAT = 1  # part of every cache key: bump it when what a cache file holds changes



def cache_dir(configured: str | None) -> Path:
    """data.cache_dir, else $HPSEARCH_CACHE, else ~/.cache/hpsearch."""
    return Path(configured or os.environ.get("HPSEARCH_CACHE") or Path.home() / ".cache" / "hpsearch").expanduser()


def cache_path(directory: Path, name: str, root: Path, split: str, image_size: int, fingerprint: list) -> Path:
    key = json.dumps([CACHE_FORMAT, name, str(root), split, image_size, fingerprint], separators=(",", ":"))
    return directory / f"{name}-{split}-{image_size}px-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def load_split(name: str, root: Path, split: str, image_size: int, *, download: bool, directory: Path) -> tuple[Tensor, Tensor]:
    """One split of a source, from the cache when an entry for these files and this size exists."""
    source = DATASETS[name]
    path = cache_path(directory, name, root, split, image_size, source.check(root, split, download))
    cached = load_or_make(path, lambda: dict(zip(("images", "labels"), source.read(root, split, image_size))))
    return cached["images"], cached["labels"]


def selection_key(indices) -> str:
    """A short stand-in for a list of positions in a cache key (a streamed set can pick millions)."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()


def load_subset(name: str, root: Path, split: str, image_size: int, files: list[str], indices, *,
                fingerprint: list, directory: Path) -> Tensor:
    """The images of `files[indices]` of one split (decoded by `decode_image`, as a whole split is),
    from the cache when an entry for these files, this selection and this size exists. Used for the
    probe and eval images when the pretraining images stream."""
    path = cache_path(directory, name, root, f"{split}-subset", image_size, [fingerprint, selection_key(indices)])
    return load_or_make(path, lambda: {"images": _decode([files[i] for i in indices], image_size)})["images"]


def load_or_make(path: Path, make: Callable[[], dict]) -> dict:
    """The dict of tensors cached at `path`; else `make()`, written there atomically (a cache that
    cannot be written only costs a warning)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        pass
    except Exception as err:  # truncated or foreign file: decode again and overwrite it
        warnings.warn(f"hpsearch: ignoring unreadable data cache {path} ({first_line(err)})", stacklevel=3)
    made = make()
    try:
        _save_atomically(made, path)
    except OSError as err:
        warnings.warn(f"hpsearch: cannot write the data cache {path} ({err.strerror or err}); continuing without it",
                      stacklevel=3)
    return made


def _save_atomically(obj, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other users of a shared cache read it too
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


