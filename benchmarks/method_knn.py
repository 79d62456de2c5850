"""Does every SSL method beat the randomly initialised encoder? kNN and linear probe after a short CIFAR-10 pretraining.

    python benchmarks/method_knn.py                     # every method, 32 px, small_cnn width 32, 10 epochs
    python benchmarks/method_knn.py --json /tmp/method_knn.json
    python benchmarks/method_knn.py --epochs 1 --image-size 16 --width 8 --methods simclr,byol   # smoke run
    python benchmarks/method_knn.py --quick             # tinier still: checks the script runs, measures nothing

For each method in `objectives.METHODS`, one study of one trial through the real engine,
`hpsearch.run_study(cfg)`: imagefolder over the CIFAR-10 JPEGs of ../shared/data (extracted once,
see --data-root), 5,000 pretraining images, a 1,000-image labelled probe split (the kNN proxy and
the linear probe's training set) and 2,000 held-out test images (the linear probe's score), the
small CNN on the CPU, batch 256, no pruner and no SSL early-stopping rule (divergence still stops
a trial). The only thing a study searches is `objective.method` with the one choice, so the trial
trains the config as written: each method's own defaults (objectives/<method>.py) and the
schema's, except the optimiser, which is the method's known-good recipe (RECIPES below).

Per method it reports the last epoch's kNN accuracy (the trial's `proxy_history`), the final
linear probe (the trial's value), the randomly initialised encoder's kNN and linear probe (the
study's `random_init_knn` / `random_init_linear_probe`, same seed, same splits) and the wall time.
The target (the GitHub issue): every method's kNN above the random encoder's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCHIVE, machine, table  # noqa: E402

import torch  # noqa: E402

# Known-good optimiser per method, lr per 256 images (batch 256 here, so as written). GUIDE section 2
# (solo-learn's CIFAR recipes, scripts/pretrain/cifar/*.yaml) where it has one; LARS is eta 0.02 with
# clipping, biases and norms excluded (hpsearch.training.optim). VICReg and Barlow Twins take their LARS recipe:
# under plain SGD VICReg turns NaN at lr 0.3 (benchmarks/README.md section 2) and Barlow stays near the
# random encoder (objectives/barlow_twins.py).
RECIPES = {
    "simclr": {"name": "lars", "lr": 0.4, "weight_decay": 1e-4},        # GUIDE 2 / solo-learn simclr.yaml
    "moco": {"name": "sgd", "lr": 0.3, "weight_decay": 1e-4},           # solo-learn mocov2plus.yaml (GUIDE has none)
    "byol": {"name": "lars", "lr": 1.0, "weight_decay": 1e-5},          # GUIDE 2 / solo-learn byol.yaml
    "simsiam": {"name": "sgd", "lr": 0.5, "weight_decay": 1e-5},        # GUIDE 2 / solo-learn simsiam.yaml
    "vicreg": {"name": "lars", "lr": 0.3, "weight_decay": 1e-4},        # GUIDE 2 / solo-learn vicreg.yaml
    "barlow_twins": {"name": "lars", "lr": 0.3, "weight_decay": 1e-4},  # GUIDE 2 / solo-learn barlow.yaml
    # DINO's own AdamW recipe (paper: wd 0.04): solo-learn's LARS 0.3 did not learn in 10 short epochs here.
    "dino": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.04},
    "rotation": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4},       # RotNet (Gidaris et al. 2018): SGD 0.1, wd 5e-4
}
# A short run has few steps (20 a epoch here): the paper's teacher momentum 0.996 barely moves the
# teacher in 200 steps, so DINO gets a faster one.
OBJECTIVE_OVERRIDES = {"dino": {"base_momentum": 0.99}}
FALLBACK = {"name": "sgd", "lr": 0.05, "weight_decay": 5e-4}  # a method registered after this script was written

PRETRAIN_SIZE, PROBE_SIZE, EVAL_SIZE = 5000, 1000, 2000  # studies/cifar10_record.yaml's splits


def default_data_root() -> Path:
    """Where the archive is extracted once: beside hpsearch's data cache, outside the checkout."""
    cache = Path(os.environ.get("HPSEARCH_CACHE") or Path.home() / ".cache" / "hpsearch").expanduser()
    return cache / "cifar10-jpeg" / "cifar10"


def extracted(root: Path) -> Path:
    """`root` (holding train/<class>/*.jpg and test/<class>/*.jpg), extracting the shared archive there if missing.

    Extracts into a temporary sibling and renames it, so an interrupted extraction never looks complete.
    """
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    if not ARCHIVE.is_file():
        raise SystemExit(f"benchmark data not found: {ARCHIVE} (the shared CIFAR-10 JPEG archive)")
    root.parent.mkdir(parents=True, exist_ok=True)
    print(f"extracting {ARCHIVE} into {root} (once) ...", flush=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=".extract-"))
    try:
        subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(tmp)], check=True)
        os.replace(tmp / "cifar10", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def study_config(method: str, args, root: Path, workdir: Path) -> dict:
    return {
        # The settings are in the name: a reused --workdir never continues a study of other settings.
        "name": f"method-knn-{method}-{args.image_size}px-w{args.width}-e{args.epochs}-s{args.seed}",
        "seed": args.seed,
        "n_trials": 1,
        "workdir": str(workdir),
        "data": {"dataset": "imagefolder", "root": str(root), "image_size": args.image_size,
                 "pretrain_size": PRETRAIN_SIZE, "probe_size": PROBE_SIZE, "eval_size": EVAL_SIZE},
        "model": {"backbone": "small_cnn", "width": args.width},
        "objective": {"method": method, **OBJECTIVE_OVERRIDES.get(method, {})},
        "training": {"epochs": args.epochs, "batch_size": 256, "device": args.device,
                     # 10% of the epochs of linear warm-up (solo-learn: 10 of 1,000), then cosine.
                     "warmup_epochs": args.epochs // 10,
                     "optimizer": {**RECIPES.get(method, FALLBACK), "momentum": 0.9}},
        # One categorical with one choice: the trial trains exactly the config above.
        "search_space": {"objective.method": {"type": "categorical", "choices": [method]}},
        "sampler": {"name": "random"},
        "pruning": {"name": "none", "heuristics": {"collapse": {"enabled": False},
                                                   "no_learning": {"enabled": False}}},
    }


def run_method(method: str, args, root: Path, workdir: Path) -> dict:
    import optuna

    import hpsearch
    from hpsearch.config.study_attrs import proxy_history

    cfg = study_config(method, args, root, workdir)
    start = time.perf_counter()
    study = hpsearch.run_study(cfg)
    wall = time.perf_counter() - start
    trial = study.trials[-1]
    history = proxy_history(trial) or []
    complete = trial.state == optuna.trial.TrialState.COMPLETE
    trial_s = ((trial.datetime_complete - trial.datetime_start).total_seconds()
               if trial.datetime_complete and trial.datetime_start else None)
    return {
        "optimizer": cfg["training"]["optimizer"],
        "state": trial.state.name,
        "reason": trial.user_attrs.get("reason"),
        "epochs_trained": trial.user_attrs.get("epochs_trained"),
        "knn_accuracy": history[-1]["knn_accuracy"] if history else None,
        "knn_history": [h["knn_accuracy"] for h in history],
        "final_ssl_loss": history[-1].get("ssl_loss") if history else None,
        "linear_probe": trial.value if complete else None,
        "random_init_knn": study.user_attrs["random_init_knn"],
        "random_init_linear_probe": study.user_attrs["random_init_linear_probe"],
        "trial_s": trial_s,
        "wall_s": wall,
    }


def fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def main(argv=None) -> None:
    from objectives import METHODS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="small_cnn width")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", help="comma-separated (default: every registered method)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="training.device (the benchmark is specified on the CPU)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="extracted CIFAR-10 JPEGs (train/, test/); extracted there from the shared archive "
                             "if missing (default: $HPSEARCH_CACHE or ~/.cache/hpsearch, /cifar10-jpeg/cifar10)")
    parser.add_argument("--workdir", type=Path, help="Optuna and MLflow records (default: a temporary folder, "
                                                     "removed at the end)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.image_size, args.width = 1, 16, 4
        args.methods = args.methods or "simclr"
        args.threads = args.threads or 1
    methods = args.methods.split(",") if args.methods else sorted(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; expected some of: {', '.join(sorted(METHODS))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    root = extracted((args.data_root or default_data_root()).expanduser().resolve())
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="method-knn-"))).resolve()

    print(machine())
    print(f"CIFAR-10 from {root}: {PRETRAIN_SIZE} pretraining, {PROBE_SIZE} probe, {EVAL_SIZE} held-out images at "
          f"{args.image_size} px; small_cnn width {args.width}, {args.epochs} epochs, batch 256, "
          f"{args.device}; methods: {', '.join(methods)}", flush=True)
    results: dict[str, dict] = {}
    try:
        for method in methods:
            print(f"== {method}: {RECIPES.get(method, FALLBACK)}", flush=True)
            try:
                results[method] = run_method(method, args, root, workdir)
            except Exception as err:  # a method under construction elsewhere must not hide the others' figures
                import traceback

                traceback.print_exc()
                results[method] = {"state": "ERROR", "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:80]}"}
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows, beats = [], []
    for method, r in results.items():
        knn, base = r.get("knn_accuracy"), r.get("random_init_knn")
        above = knn is not None and base is not None and knn > base
        if above:
            beats.append(method)
        opt = r.get("optimizer") or RECIPES.get(method, FALLBACK)
        rows.append([method, f"{opt['name']} {opt['lr']:g}", fmt(knn), fmt(base),
                     fmt(None if knn is None else knn - base, "+.4f"), fmt(r.get("linear_probe")),
                     fmt(r.get("random_init_linear_probe")), "yes" if above else "no",
                     r["state"] + (f" ({r['reason']})" if r.get("reason") else ""),
                     fmt(r.get("trial_s"), ".0f"), fmt(r.get("wall_s"), ".0f")])
    print()
    print(machine())
    print(table(["method", "optimizer", "kNN", "random kNN", "kNN gain", "linear probe", "random probe",
                 "kNN > random", "state", "trial s", "wall s"], rows))
    print(f"methods above the random-init kNN: {len(beats)}/{len(results)}"
          + ("" if len(beats) == len(results) else
             f" (not: {', '.join(m for m in results if m not in beats)})"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": machine(),
            "settings": {"image_size": args.image_size, "width": args.width, "epochs": args.epochs, "batch_size": 256,
                         "seed": args.seed, "device": args.device, "pretrain_size": PRETRAIN_SIZE,
                         "probe_size": PROBE_SIZE, "eval_size": EVAL_SIZE, "data_root": str(root)},
            "methods": results,
        }, indent=2))
        print(f"wrote {args.json}")
    if not any(r.get("knn_accuracy") is not None for r in results.values()):
        raise SystemExit("no method could be measured")


if __name__ == "__main__":
    main()
