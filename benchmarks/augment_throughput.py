"""Augmentation throughput: hpsearch's per-sample batched views vs torchvision v2 in a 2-worker DataLoader.

    python benchmarks/augment_throughput.py            # 5,000 CIFAR-10 train images, 7 rounds (~2 min)
    python benchmarks/augment_throughput.py --quick    # 256 test images, 1 round (a smoke run, not a figure)
    python benchmarks/augment_throughput.py --baseline-augment /tmp/augment_before.py

Both sides make 2 views of every image with the SimCLR recipe at 32 px (random resized crop scale
0.08-1, flip 0.5, colour jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale 0.2, no blur) from the same
uint8 [N, 3, 32, 32] images, batch 512:
- `hpsearch`: shuffle, slice a uint8 batch, `hpsearch.augment.random_views(batch, cfg, 32, gen, 2)`
  in the main process (torch's default threads);
- `torchvision`: the usual pipeline, `torchvision.transforms.v2` applied image by image in a
  `DataLoader(num_workers=2, batch_size=512, shuffle=True, persistent_workers=True)`, 2 views per
  image, ending in `ToDtype(float32, scale=True)`.
`--baseline-augment FILE` adds a third contender: `random_views` from another copy of augment.py
(e.g. `git show HEAD~1:hpsearch/augment.py > /tmp/augment_before.py`), for before/after figures.

The figure is unique images per second (each with its 2 views), the median over rounds that
alternate the contenders, and the ratio of medians hpsearch / torchvision.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, load_cifar10, machine, median, spread, table  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from hpsearch import augment  # noqa: E402
from hpsearch.config.schema import AugmentConfig  # noqa: E402

# The SimCLR recipe at 32 px (GUIDE section 2); everything else is the schema's default.
RECIPE = AugmentConfig(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8, brightness=0.4,
                       contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)


def torchvision_pipeline(cfg: AugmentConfig, size: int):
    import torchvision.transforms.v2 as v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.grayscale_p),
        v2.ToDtype(torch.float32, scale=True),
    ])


class TwoViews(Dataset):
    """Image i of a uint8 tensor -> two independently augmented float views."""

    def __init__(self, images: torch.Tensor, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        return self.transform(image), self.transform(image)


def dataloader_epoch(loader: DataLoader) -> int:
    n = 0
    for view1, _ in loader:
        n += len(view1)
    return n


def batched_epoch(random_views, images: torch.Tensor, cfg, size: int, batch: int, generator: torch.Generator) -> int:
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(images), batch):
        views = random_views(images[order[start:start + batch]], cfg, size, generator, 2)
    assert views[0].shape[-1] == size
    return len(images)


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("augment_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 train images (a multiple of 10)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--baseline-augment", help="another augment.py to time as a third contender")
    args = parser.parse_args(argv)
    if args.quick:
        images, _ = load_cifar10("test", per_class=26)
        images, args.rounds, args.batch = images[:256], 1, 64
    else:
        images, _ = load_cifar10("train", per_class=args.images // 10)
    size = images.shape[-1]
    print(machine())
    print(f"{len(images)} CIFAR-10 images, batch {args.batch}, 2 views each, {args.rounds} rounds (+1 warm-up)")

    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(TwoViews(images, torchvision_pipeline(RECIPE, size)), batch_size=args.batch, shuffle=True,
                        num_workers=2, persistent_workers=True)
    contenders = {
        "hpsearch": lambda: batched_epoch(augment.random_views, images, RECIPE, size, args.batch, generator),
        "torchvision": lambda: dataloader_epoch(loader),
    }
    if args.baseline_augment:
        before = load_module(args.baseline_augment).random_views
        contenders["hpsearch (baseline file)"] = lambda: batched_epoch(before, images, RECIPE, size, args.batch,
                                                                       generator)
    rates = alternate(contenders, rounds=args.rounds)

    base = median(rates["torchvision"])
    rows = [[name, f"{median(r):,.0f}", spread(r), f"{median(r) / base:.2f}"] for name, r in rates.items()]
    print(table(["pipeline", "unique images/s (median)", "range", "vs torchvision"], rows))
    print(f"ratio hpsearch/torchvision: {median(rates['hpsearch']) / base:.2f}")
    if args.baseline_augment:
        before_rate = median(rates["hpsearch (baseline file)"])
        print(f"ratio hpsearch/baseline file: {median(rates['hpsearch']) / before_rate:.2f}")


if __name__ == "__main__":
    main()
