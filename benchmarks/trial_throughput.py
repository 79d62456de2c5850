"""Training throughput of hpsearch's trial loop vs a hand-written PyTorch loop, for every registered method.

    python benchmarks/trial_throughput.py             # 2,048 CIFAR-10 images (8 steps of 256), 7 rounds (~5 min)
    python benchmarks/trial_throughput.py --quick     # tiny sizes: checks the script runs, measures nothing
    python benchmarks/trial_throughput.py --methods simclr byol --width 32

For each method in `objectives.METHODS` (whatever is registered when this runs), both contenders
train the same model -- `small_cnn` backbone (width 16 by default), the method's heads and loss,
batch 256, SGD -- on the same in-memory uint8 CIFAR-10 images, one epoch per round, A, B, A, B:
- `hpsearch`: `hpsearch.training.pretrain.Pretraining.train_epoch()`, built from a StudyConfig that
  `hpsearch.study.studyfile.load_study` validated (the trial loop a study runs, minus evaluation);
- `plain`: shuffle indices, slice a uint8 batch, `method.make_views` (the same augmentation call),
  normalise, `method.training_loss`, zero_grad, backward, SGD step (the same parameter groups:
  no weight decay on biases and norms), cosine scheduler step,
  `method.on_step_end` -- nothing else.
The figure is images per second (unique images; each makes the method's views), the median over
rounds, and the ratio hpsearch / plain per method (target >= 0.95: the trial loop adds no overhead).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, load_cifar10, machine, median, spread, table  # noqa: E402

import torch  # noqa: E402

from hpsearch.training.backbones import build_backbone  # noqa: E402
from hpsearch.data import Splits  # noqa: E402
from hpsearch.training.pretrain import Pretraining  # noqa: E402
from hpsearch.study.studyfile import load_study  # noqa: E402
from objectives import METHODS  # noqa: E402


def study(method: str, width: int, batch: int, epochs: int, size: int) -> dict:
    return {
        "name": f"bench-{method}",
        # The images are handed to Pretraining as Splits; the data section only has to validate.
        "data": {"dataset": "cifar10", "root": "in-memory", "image_size": size},
        "model": {"backbone": "small_cnn", "width": width},
        "objective": {"method": method},
        # lr does not change the cost of a step; 0.05 keeps every method finite (VICReg turns NaN
        # within its first epoch at the schema's SGD lr 0.3, in both loops).
        "training": {"epochs": epochs, "batch_size": batch, "device": "cpu", "optimizer": {"name": "sgd", "lr": 0.05}},
        "search_space": {"training.optimizer.lr": {"type": "float", "low": 0.03, "high": 3.0, "log": True}},
    }


def in_memory_splits(images: torch.Tensor, labels: torch.Tensor) -> Splits:
    """Pretraining images as given; probe/eval are a slice (unused here); exact per-channel mean/std."""
    x = images.double().div(255)
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    return Splits(pretrain=images, probe_images=images[:100], probe_labels=labels[:100], val_images=images[:100],
                  val_labels=labels[:100], test_images=images[:100], test_labels=labels[:100],
                  mean=mean.float(), std=std.float())


class PlainLoop:
    """The hand-written baseline: the same model, heads, loss and augmentation call, no framework."""

    def __init__(self, cfg, splits: Splits, seed: int):
        torch.manual_seed(seed)
        self.cfg, self.images = cfg, splits.pretrain
        self.generator = torch.Generator().manual_seed(seed)
        backbone, feature_dim = build_backbone(cfg.model, splits.channels, cfg.data.image_size)
        self.method = METHODS[cfg.objective.method](backbone, feature_dim, cfg.objective, cfg.model.projector)
        self.batch = cfg.training.batch_size
        self.steps_per_epoch = len(self.images) // self.batch
        self.total_steps = cfg.training.epochs * self.steps_per_epoch
        opt = cfg.training.optimizer
        # The usual SGD recipe, doing the same arithmetic as hpsearch's: no decay on biases and norms.
        params = [p for p in self.method.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": opt.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        self.optimizer = torch.optim.SGD(groups, lr=opt.lr * self.batch / 256, momentum=opt.momentum)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.total_steps)
        self.mean = splits.mean.view(1, -1, 1, 1)
        self.std = splits.std.view(1, -1, 1, 1)
        self.step = 0

    def train_epoch(self) -> float:
        self.method.train()
        order = torch.randperm(len(self.images), generator=self.generator)
        total = torch.zeros(())
        for i in range(self.steps_per_epoch):
            batch = self.images[order[i * self.batch:(i + 1) * self.batch]]
            views = self.method.make_views(batch, self.cfg.augment, self.cfg.data.image_size, self.generator)
            loss = self.method.training_loss([(v - self.mean) / self.std for v in views])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.method.on_step_end(self.step, self.total_steps)
            total += loss.detach()
        return total.item() / self.steps_per_epoch


def measure(method: str, splits: Splits, args) -> dict[str, list[float]]:
    cfg, _ = load_study(study(method, args.width, args.batch, args.rounds + 1, splits.pretrain.shape[-1]))
    trial = Pretraining(cfg, splits, torch.device("cpu"), seed=0)
    plain = PlainLoop(cfg, splits, seed=0)
    images = trial.steps_per_epoch * trial.batch_size
    assert plain.steps_per_epoch * plain.batch == images

    def run_trial() -> int:
        stats = trial.train_epoch()
        if not math.isfinite(stats.ssl_loss):
            raise RuntimeError(f"hpsearch loss {stats.ssl_loss}")
        return images

    def run_plain() -> int:
        loss = plain.train_epoch()
        if not math.isfinite(loss):
            raise RuntimeError(f"plain loss {loss}")
        return images

    return alternate({"hpsearch": run_trial, "plain": run_plain}, rounds=args.rounds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument("--steps", type=int, default=8, help="optimiser steps per epoch (images = steps x batch)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's, one per core; --quick: 1)")
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    args = parser.parse_args(argv)
    if args.quick:
        # Tiny ops on 2 threads mostly wait for each other on a shared machine; the smoke run needs none.
        args.threads = args.threads or 1
        args.steps, args.batch, args.width, args.rounds = 2, 16, 4, 1
        images, labels = load_cifar10("test", per_class=4)
    else:
        images, labels = load_cifar10("train", per_class=math.ceil(args.steps * args.batch / 10))
    images, labels = images[:args.steps * args.batch], labels[:args.steps * args.batch]
    splits = in_memory_splits(images, labels)
    methods = args.methods or sorted(METHODS)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    print(f"{len(images)} CIFAR-10 images at {images.shape[-1]} px, small_cnn width {args.width}, batch {args.batch}, "
          f"{args.steps} steps per epoch, {args.rounds} rounds (+1 warm-up); methods: {', '.join(methods)}")

    rows, ratios, failed = [], {}, []
    for method in methods:
        start = time.perf_counter()
        try:
            rates = measure(method, splits, args)
        except Exception as err:  # a method under construction elsewhere must not hide the others' figures
            traceback.print_exc()
            rows.append([method, "error", "", "", "", f"{type(err).__name__}: {str(err).splitlines()[0][:60]}"])
            failed.append(method)
            continue
        ratios[method] = median(rates["hpsearch"]) / median(rates["plain"])
        ours, theirs = rates["hpsearch"], rates["plain"]
        rows.append([method, f"{median(ours):,.0f}", spread(ours), f"{median(theirs):,.0f}", spread(theirs),
                     f"{ratios[method]:.3f}"])
        print(f"  {method}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(table(["method", "hpsearch img/s", "range", "plain img/s", "range", "ratio hpsearch/plain"], rows))
    if ratios:
        print(f"ratio hpsearch/plain: median {median(list(ratios.values())):.3f}, min {min(ratios.values()):.3f} "
              f"({min(ratios, key=ratios.get)})")
    if failed:
        print(f"failed: {', '.join(failed)}")
    if not ratios:
        raise SystemExit("no method could be measured")


if __name__ == "__main__":
    main()
