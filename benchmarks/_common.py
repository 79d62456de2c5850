"""Shared helpers of the benchmark scripts: CIFAR-10 from the shared JPEG archive, A/B timing, tables.

Timing protocol (GUIDE section 7): the machines are shared and noisy, so every figure is a ratio
against a baseline measured in the same process, the contenders alternate A, B, A, B, ... and each
one's median over the rounds is reported.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
import tarfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))


def load_cifar10(split: str = "train", per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, 3, 32, 32] images and int64 [N] labels of one split of the shared CIFAR-10 JPEG archive.

    `per_class` keeps the first that many images of each class (None = all: 5,000 for train, 1,000
    for test). The JPEGs are decoded straight from the archive's stream (PIL, in memory), which is the
    extraction to a temporary folder without the folder; the archive lists test before train, so a
    small test subset is read without decompressing the whole file.
    """
    from PIL import Image

    if not ARCHIVE.is_file():
        raise SystemExit(f"benchmark data not found: {ARCHIVE} (the shared CIFAR-10 JPEG archive)")
    limit = per_class if per_class is not None else 10**9
    counts = dict.fromkeys(CLASSES, 0)
    images, labels = [], []
    prefix = f"cifar10/{split}/"
    with tarfile.open(ARCHIVE, "r|gz") as archive:  # streaming: members in archive order
        for member in archive:
            if not (member.isfile() and member.name.startswith(prefix)):
                if images and not member.name.startswith(prefix):
                    break  # past this split
                continue
            name = member.name[len(prefix):].split("/")[0]
            if counts[name] >= limit:
                if all(c >= limit for c in counts.values()):
                    break
                continue
            with Image.open(io.BytesIO(archive.extractfile(member).read())) as img:
                images.append(np.asarray(img.convert("RGB")))
            labels.append(CLASSES.index(name))
            counts[name] += 1
    if not images:
        raise SystemExit(f"no images of split {split!r} in {ARCHIVE}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def alternate(contenders: dict[str, Callable[[], float]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Call each contender in turn (A, B, A, B, ...) `rounds` times after `warmup` untimed rounds.

    A contender returns the work it did (e.g. images); the result is its rate (work per second) in
    every timed round.
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(warmup + rounds):
        for name, run in contenders.items():
            start = time.perf_counter()
            work = run()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                rates[name].append(work / elapsed)
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min-max of a list of rates, as a relative range around the median, e.g. '-4%/+6%'."""
    m = median(values)
    return f"-{100 * (1 - min(values) / m):.0f}%/+{100 * (max(values) / m - 1):.0f}%"


def table(header: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table (pastes into benchmarks/README.md as is)."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def machine() -> str:
    """One line: date, CPU count, torch threads, load average (the machine is shared; say how busy it was)."""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    return (f"{time.strftime('%Y-%m-%d %H:%M')} | {cpu} | {os.cpu_count()} CPUs | "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads | load average {load}")
