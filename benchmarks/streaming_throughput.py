"""Streaming throughput: pretraining batches decoded from JPEG files (data.stream) vs sliced from the in-memory cache.

    python benchmarks/streaming_throughput.py            # 5,000 CIFAR-10 train JPEGs at 32 px, 5 rounds
    python benchmarks/streaming_throughput.py --quick    # 200 test images, 1 round (a smoke run, not a figure)

The CIFAR-10 JPEGs of the shared archive are written to a temporary ImageFolder (`--images` train
images, 10 test images per class), and `hpsearch.data.load_splits` loads it twice: `stream: never`
(the uint8 tensor cache, moved to the training device) and `stream: always` (`StreamedImages`). Each
contender fetches one epoch of batch `--batch` in a fresh seeded shuffle through
`hpsearch.data.pretrain_batches`, exactly what `Pretraining.train_epoch` does before augmenting:
- `memory`: index the device tensor;
- `stream, 0 workers`: PIL-decode each batch in this process, then copy it to the device;
- `stream, N workers`: the same in `--workers` DataLoader processes (persistent; pinned memory and
  asynchronous copies on CUDA).
Decoding the cache and the streamed set's one-time pixel statistics happen before timing. On CUDA
the epoch ends with a synchronize. The figure is images per second (median over rounds that
alternate the contenders) and the ratio of medians against `memory`, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCHIVE, CLASSES, alternate, machine, median, spread, table  # noqa: E402

import torch  # noqa: E402

from hpsearch.data import load_splits, pretrain_batches  # noqa: E402
from hpsearch.training.pretrain import resolve_device  # noqa: E402
from hpsearch.config.schema import DataConfig  # noqa: E402


def extract(root: Path, train_per_class: int, test_per_class: int) -> int:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg, the first images of each class; the
    JPEG files byte for byte as the archive holds them. Returns the number of train images."""
    if not ARCHIVE.is_file():
        raise SystemExit(f"benchmark data not found: {ARCHIVE} (the shared CIFAR-10 JPEG archive)")
    wanted = {"train": train_per_class, "test": test_per_class}
    written = 0
    with tarfile.open(ARCHIVE, "r|gz") as archive:
        for member in archive:
            parts = member.name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if len(parts) != 4 or not member.isfile() or int(parts[3][:4]) >= wanted[parts[1]]:
                continue
            target = root / parts[1] / parts[2] / parts[3]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
            written += parts[1] == "train"
            if written == train_per_class * len(CLASSES):
                break  # the archive lists test before train
    return written


def epoch(images, batch: int, device: torch.device, generator: torch.Generator) -> int:
    order = torch.randperm(len(images), generator=generator)
    n = 0
    for fetched in pretrain_batches(images, order, 0, batch):
        fetched = fetched.to(device, non_blocking=True)  # as train_epoch does (a no-op when already there)
        n += len(fetched)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert fetched.dtype == torch.uint8 and fetched.device.type == device.type
    return n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 train images (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the second streamed contender")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.batch = 200, 1, 64
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="hpsearch-stream-bench-") as tmp:
        root = Path(tmp) / "cifar10"
        n = extract(root, args.images // len(CLASSES), 10)
        os.environ["HPSEARCH_CACHE"] = str(Path(tmp) / "cache")  # a cold, private cache
        base = dict(dataset="imagefolder", root=str(root), image_size=32, probe_size=50)
        memory = load_splits(DataConfig(**base, stream="never")).pretrain.to(device)
        streamed = {w: load_splits(DataConfig(**base, stream="always", workers=w)).pretrain.to(device)
                    for w in sorted({0, args.workers})}
        print(machine())
        print(f"{n} CIFAR-10 train JPEGs at 32 px, batch {args.batch}, device {device}, "
              f"{args.rounds} rounds (+1 warm-up)")
        generator = torch.Generator().manual_seed(0)
        contenders = {"memory": lambda: epoch(memory, args.batch, device, generator)}
        for w, images in streamed.items():
            contenders[f"stream, {w} workers"] = lambda images=images: epoch(images, args.batch, device, generator)
        rates = alternate(contenders, rounds=args.rounds)

    base_rate = median(rates["memory"])
    rows = [[name, f"{median(r):,.0f}", spread(r), f"{median(r) / base_rate:.3f}"] for name, r in rates.items()]
    print(table(["batches from", "images/s (median)", "range", "vs memory"], rows))
    for w in streamed:
        print(f"ratio stream({w} workers)/memory: {median(rates[f'stream, {w} workers']) / base_rate:.4f}")
    if args.workers != 0:
        ratio = median(rates[f"stream, {args.workers} workers"]) / median(rates["stream, 0 workers"])
        print(f"ratio stream({args.workers} workers)/stream(0 workers): {ratio:.2f}")


if __name__ == "__main__":
    main()
