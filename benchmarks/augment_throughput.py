"""Augmentation throughput: hpsearch's per-sample batched views vs torchvision v2 on PIL images in a 2-worker DataLoader.

    python benchmarks/augment_throughput.py            # 5,000 CIFAR-10 train images, 7 rounds (~3 min)
    python benchmarks/augment_throughput.py --quick    # 256 test images, 1 round (a smoke run, not a figure)
    python benchmarks/augment_throughput.py --baseline-augment /tmp/augment_before.py

Every contender makes 2 views of every image with the SimCLR recipe at 32 px (random resized crop
scale 0.08-1, ratio 3/4-4/3, flip 0.5, colour jitter 0.4/0.4/0.2/0.1 with p=0.8, grayscale 0.2,
no blur, no solarisation: hpsearch's `RECIPE` below, the same object configures both sides) from
the same 5,000 decoded CIFAR-10 images, batch 512, ending in float32 [0, 1] tensors:
- `torchvision v2, PIL` (the baseline: the pipeline users run): a Dataset holding the uint8
  pixels as torchvision's CIFAR10 does, `Image.fromarray` per item, then `transforms.v2` on the
  PIL image (RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale,
  ToImage, ToDtype(float32, scale=True)) twice, in a `DataLoader(num_workers=2, batch_size=512,
  shuffle=True, persistent_workers=True)`;
- `torchvision v2, uint8 tensors`: the same transforms on uint8 tensors (tensor colour jitter,
  the slowest torchvision variant), same DataLoader;
- `hpsearch`: shuffle, slice a uint8 batch, `hpsearch.augment.random_views(batch, RECIPE, 32, gen,
  2)` in the main process (which pins itself to one intra-op thread; the DataLoaders use 2 worker
  processes, one thread each).
`--baseline-augment FILE` adds a contender: `random_views` from another copy of the augment module
(a file defining `random_views`), for before/after figures.

Counting is the same on every side: a contender returns the unique images it augmented and the
views it made (2 per image, checked), so the figure is unique images per second, each with its 2
views: the median over rounds that alternate the contenders, and the ratio of medians against
the PIL baseline.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, load_cifar10, machine, median, spread, table  # noqa: E402

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from hpsearch import augment  # noqa: E402
from hpsearch.config.schema import AugmentConfig  # noqa: E402

# The SimCLR recipe at 32 px (GUIDE section 2); everything else is the schema's default.
RECIPE = AugmentConfig(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8, brightness=0.4,
                       contrast=0.4, saturation=0.2, hue=0.1, grayscale_p=0.2, blur_p=0.0, solarize_p=0.0)
BASELINE = "torchvision v2, PIL, 2-worker DataLoader"
TENSORS = "torchvision v2, uint8 tensors, 2-worker DataLoader"


def torchvision_pipeline(cfg: AugmentConfig, size: int, pil: bool):
    """torchvision v2 with `cfg`'s ops and strengths; `pil`: fed PIL images (ToImage converts after
    the colour ops, as users write it), else uint8 tensors."""
    import torchvision.transforms.v2 as v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
        v2.RandomHorizontalFlip(cfg.flip_p),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
        v2.RandomGrayscale(cfg.grayscale_p),
        *([v2.ToImage()] if pil else []),
        v2.ToDtype(torch.float32, scale=True),
    ])


class TwoViews(Dataset):
    """Image i -> two independently augmented float views. `pil`: the item is made a PIL image
    first, from the uint8 HWC pixels, as torchvision.datasets.CIFAR10 does."""

    def __init__(self, images: torch.Tensor, transform, pil: bool):
        self.transform, self.pil = transform, pil
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy() if pil else images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i]) if self.pil else self.images[i]
        return self.transform(image), self.transform(image)


def dataloader_epoch(loader: DataLoader, size: int) -> tuple[int, int]:
    """(unique images, views) of one pass over the loader."""
    images = views = 0
    for view1, view2 in loader:
        assert view1.shape[-1] == size and view1.dtype == torch.float32
        images += len(view1)
        views += len(view1) + len(view2)
    return images, views


def batched_epoch(random_views, images: torch.Tensor, cfg, size: int, batch: int,
                  generator: torch.Generator) -> tuple[int, int]:
    """(unique images, views) of one shuffled pass in batches."""
    order = torch.randperm(len(images), generator=generator)
    n_views = 0
    for start in range(0, len(images), batch):
        views = random_views(images[order[start:start + batch]], cfg, size, generator, 2)
        assert views[0].shape[-1] == size and views[0].dtype == torch.float32
        n_views += sum(len(v) for v in views)
    return len(images), n_views


def counted(run, name: str):
    """`run` as a contender of `alternate`, which wants the work done: the unique images, once
    checked that each came with its 2 views (every side counts the same way)."""

    def contender() -> float:
        images, views = run()
        assert views == 2 * images, f"{name}: {views} views of {images} images"
        return images

    return contender


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
    parser.add_argument("--baseline-augment", help="a file defining random_views to time as another contender")
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
    loaders = {name: DataLoader(TwoViews(images, torchvision_pipeline(RECIPE, size, pil), pil), batch_size=args.batch,
                                shuffle=True, num_workers=2, persistent_workers=True)
               for name, pil in ((BASELINE, True), (TENSORS, False))}
    runs = {
        "hpsearch": lambda: batched_epoch(augment.random_views, images, RECIPE, size, args.batch, generator),
        BASELINE: lambda: dataloader_epoch(loaders[BASELINE], size),
        TENSORS: lambda: dataloader_epoch(loaders[TENSORS], size),
    }
    if args.baseline_augment:
        before = load_module(args.baseline_augment).random_views
        runs["hpsearch (baseline file)"] = lambda: batched_epoch(before, images, RECIPE, size, args.batch, generator)
    rates = alternate({name: counted(run, name) for name, run in runs.items()}, rounds=args.rounds)

    base = median(rates[BASELINE])
    rows = [[name, f"{median(r):,.0f}", f"{2 * median(r):,.0f}", spread(r), f"{median(r) / base:.2f}"]
            for name, r in rates.items()]
    print(table(["pipeline", "unique images/s (median)", "views/s", "range", "vs torchvision PIL"], rows))
    print(f"ratio hpsearch/torchvision: {median(rates['hpsearch']) / base:.2f} (against v2 on PIL images; "
          f"against v2 on uint8 tensors: {median(rates['hpsearch']) / median(rates[TENSORS]):.2f})")
    if args.baseline_augment:
        before_rate = median(rates["hpsearch (baseline file)"])
        print(f"ratio hpsearch/baseline file: {median(rates['hpsearch']) / before_rate:.2f}")

if __name__ == "__main__":
    main()
