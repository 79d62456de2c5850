"""Cost of the kNN proxy (probe-split features + weighted kNN) as a fraction of one CIFAR-10 training epoch.

    python benchmarks/knn_cost.py            # 5 rounds, 2 setups (~3 min)
    python benchmarks/knn_cost.py --quick    # tiny sizes: checks the script runs, measures nothing

At the default schedule (`evaluation.eval_every: 1`) every epoch of a trial ends with one
kNN proxy: features of the labelled probe split (`data.probe_size` images) and a
leave-one-out weighted kNN on them. This compares its wall time with one epoch over the 50,000
CIFAR-10 training images at batch 256 (195 steps). To keep the run short, the epoch is measured
on `--steps` steps of real CIFAR-10 images and scaled to 195 steps (the cost per step does not
depend on the epoch's length); the kNN is measured whole, on a probe split of real images.
Rounds alternate A (train `--steps` steps), B (kNN proxy), C (the whole per-epoch evaluation);
medians are reported.

Two evaluation figures: `kNN proxy` is exactly probe-split features + weighted kNN
(`hpsearch.evaluation.extract_features` on the trial's backbone, then `knn_accuracy` with the
study's k and temperature); `all proxies` is what a trial runs after each epoch,
`Evaluator.proxies()` (kNN plus RankMe, alpha-ReQ and alignment/uniformity/collapse
diagnostics on augmented views).

Setups: the schema's defaults (SimCLR, small_cnn width 16, probe_size 500) and the CIFAR-10
study shipped in studies/cifar10_simclr.yaml (width 32, projector 2048-256, probe_size 5,000).
Target: the proxy costs <= 5% of an epoch.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import alternate, load_cifar10, machine, median, table  # noqa: E402

import torch  # noqa: E402

from hpsearch.data import Splits  # noqa: E402
from hpsearch.training.pretrain import Pretraining  # noqa: E402
from hpsearch.evaluation import Evaluator, extract_features, knn_accuracy  # noqa: E402
from hpsearch.config.schema import DataConfig  # noqa: E402
from hpsearch.study.studyfile import load_study  # noqa: E402

CIFAR10_TRAIN = 50_000
DEFAULT_PROBE = DataConfig.model_fields["probe_size"].default  # the schema's default, 500

SETUPS = {  # name -> (model section, probe_size)
    f"defaults (width 16, probe {DEFAULT_PROBE})": ({"width": 16}, DEFAULT_PROBE),
    "cifar10_simclr.yaml (width 32, probe 5000)": (
        {"width": 32, "projector": {"hidden_dim": 2048, "output_dim": 256}}, 5000),
}


def build(model: dict, images: torch.Tensor, probe: tuple[torch.Tensor, torch.Tensor], batch: int) -> Pretraining:
    cfg, _ = load_study({
        "name": "bench-knn",
        # The images are handed to Pretraining as Splits; the data section only has to validate.
        "data": {"dataset": "cifar10", "root": "in-memory", "image_size": images.shape[-1],
                 "probe_size": len(probe[1])},
        "model": {"backbone": "small_cnn", **model},
        "objective": {"method": "simclr"},
        "augment": {"crop_scale": [0.08, 1.0]},
        "training": {"epochs": 100, "batch_size": batch, "device": "cpu"},
        "evaluation": {"eval_every": 1},
    })
    x = images.double().div(255)
    splits = Splits(pretrain=images, probe_images=probe[0], probe_labels=probe[1], val_images=probe[0][:10],
                    val_labels=probe[1][:10], test_images=probe[0][:10], test_labels=probe[1][:10],
                    mean=x.mean(dim=(0, 2, 3)).float(), std=x.std(dim=(0, 2, 3)).float())
    return Pretraining(cfg, splits, torch.device("cpu"), seed=0)


def measure(trial: Pretraining, rounds: int) -> dict[str, list[float]]:
    """Rates of: training steps (steps/s), the kNN proxy and, when present, the whole per-epoch
    evaluation (evaluations/s), alternating."""

    def train() -> float:
        trial.train_epoch()
        return trial.steps_per_epoch

    def knn() -> float:
        splits, knn_cfg = trial.splits, trial.cfg.evaluation.knn
        features = extract_features(trial.method.backbone, splits.probe_images, splits.mean, splits.std)
        accuracy = knn_accuracy(features, splits.probe_labels, knn_cfg.k, knn_cfg.temperature, splits.num_classes)
        assert math.isfinite(accuracy.item())
        return 1.0

    evaluator = Evaluator.of(trial)

    def proxies() -> float:
        evaluator.proxies(trial.method, trial.epoch)
        return 1.0

    return alternate({"train": train, "knn": knn, "proxies": proxies}, rounds=rounds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument("--steps", type=int, default=6, help="training steps timed per round")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's, one per core; --quick: 1)")
    args = parser.parse_args(argv)
    if args.quick:
        # Tiny ops on 2 threads mostly wait for each other on a shared machine; the smoke run needs none.
        args.threads = args.threads or 1
        args.steps, args.batch, args.rounds = 2, 16, 1
        images, labels = load_cifar10("test", per_class=4)
        setups = {"quick (width 4, probe 40)": ({"width": 4}, 40)}
    else:
        images, labels = load_cifar10("train", per_class=max(p for _, p in SETUPS.values()) // 10)
        setups = SETUPS
    shuffle = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    pretrain = images[shuffle[:args.steps * args.batch]]
    epoch_steps = CIFAR10_TRAIN // args.batch
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine())
    print(f"epoch = {epoch_steps} steps of {args.batch} (CIFAR-10's {CIFAR10_TRAIN:,} images), scaled from "
          f"{args.steps} timed steps; kNN k=20 on the probe split; {args.rounds} rounds (+1 warm-up)")

    rows, fractions = [], {}
    for name, (model, probe_size) in setups.items():
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:probe_size // 10] for c in range(10)])
        trial = build(model, pretrain, (images[keep], labels[keep]), args.batch)
        assert trial.steps_per_epoch == args.steps
        rates = measure(trial, args.rounds)
        step_s = 1 / median(rates["train"])  # rates["train"] counts steps per second
        epoch_s = step_s * epoch_steps
        knn_s = 1 / median(rates["knn"])
        fractions[name] = knn_s / epoch_s
        proxies = "n/a"
        if "proxies" in rates:
            proxies_s = 1 / median(rates["proxies"])
            proxies = f"{proxies_s:.3f} s ({100 * proxies_s / epoch_s:.2f}%)"
        rows.append([name, f"{step_s * 1000:.0f} ms", f"{epoch_s:.1f} s", f"{knn_s:.3f} s",
                     f"{100 * fractions[name]:.2f}%", proxies])
    print(table(["setup", "train step", "epoch (scaled)", "kNN proxy", "kNN / epoch", "all proxies (/ epoch)"],
                rows))
    print("ratio knn/epoch: " + ", ".join(f"{100 * f:.2f}% ({n})" for n, f in fractions.items()))


if __name__ == "__main__":
    main()
