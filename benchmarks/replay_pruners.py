"""The replay benchmark of issue 11: how many epochs each pruning strategy spends before a trial within
1 point of the best finishes, its regret at fixed budgets and how often it loses a top-3
configuration, on both committed CIFAR-10 recordings, with 1 to 1,024 asynchronous workers.

    python benchmarks/replay_pruners.py                         # 100 seeds, random sampling, 1 and 16 workers
    python benchmarks/replay_pruners.py --workers 1,16,128,1024 --samplers random,tpe
    python benchmarks/replay_pruners.py --quick                 # 3 seeds, 1 worker: checks it runs, writes nothing

Tables: benchmarks/tables/cifar10_record.json.gz (the first recording: SimCLR / BYOL / VICReg;
the thaw strategies' defaults, hpsearch.pruning.thaw.THAW_DEFAULTS, were chosen on it) and
cifar10_record2.json.gz (the second: MoCo, SimSiam, Barlow Twins, DINO, rotation; held out, the
defaults are only reported there). The runs are what `hpsearch replay` does; this script loops over
the settings, checks the issue's targets for `calibrated`, `asha_thaw` and `calibrated_thaw`, and
writes OUT.json, OUT.md (the tables) and OUT.png (regret against budget).

Targets (issue 11), against the best of median, hyperband, successive_halving and top5_after_1:
at most 0.8x its epochs to target; regret at 10%, 20% and 30% of the budget no worse than the best
of them at each; a top-3 configuration lost in at most 5% of seeds; with 16 workers also at most
0.6x the epochs of no pruning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

from hpsearch.replay import DEFAULT_STRATEGIES  # noqa: E402
from hpsearch.replay.report import format_table, plot, replay, summarize  # noqa: E402
from hpsearch.pruning.thaw import THAW_DEFAULTS  # noqa: E402
from hpsearch.replay.table import Table  # noqa: E402

TABLES = {"cifar10_record (defaults chosen here)": ROOT / "benchmarks" / "tables" / "cifar10_record.json.gz",
          "cifar10_record2 (held out)": ROOT / "benchmarks" / "tables" / "cifar10_record2.json.gz"}
OPTUNA = ("median", "hyperband", "successive_halving", "top5_after_1")
CANDIDATES = ("calibrated", "asha_thaw", "calibrated_thaw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--workers", default="1,16", help="comma-separated worker counts (default 1,16)")
    parser.add_argument("--samplers", default="random", help="comma-separated: random, tpe")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--quick", action="store_true", help="3 seeds, random sampling, 1 worker: measures nothing")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay_pruners"),
                        help="writes OUT.json, OUT.md and OUT.png")
    args = parser.parse_args()
    workers = [1] if args.quick else [int(w) for w in args.workers.split(",")]
    samplers = ["random"] if args.quick else args.samplers.split(",")
    seeds = min(args.seeds, 3) if args.quick else args.seeds
    strategies = args.strategies.split(",")

    results, markdown = {}, [f"# Replay of pruning strategies ({seeds} seeds, target within {args.gap:g} point of the best)",
                             "", f"Thaw defaults (chosen on cifar10_record): {THAW_DEFAULTS}", ""]
    for label, path in TABLES.items():
        table = Table.load(path)
        print(f"\n{label}: {path.relative_to(ROOT)}, {len(table.trials)} configurations, methods "
              f"{sorted({str(r.params.get('objective.method')) for r in table.trials})}")
        for sampler in samplers:
            for w in workers:
                start = time.perf_counter()
                runs = replay(table, strategies, seeds=seeds, workers=w, gap=args.gap, sampler=sampler, jobs=args.jobs)
                summary = summarize(table, runs)
                name = f"{label}, {sampler}, {w} worker{'s' if w > 1 else ''}"
                summary["verdicts"] = verdicts(summary["strategies"], w)
                summary["seconds"] = round(time.perf_counter() - start, 1)
                results[name] = summary
                print()
                print(format_table(summary, f"{name}, {seeds} seeds ({summary['seconds']:.0f} s): "))
                for strategy, lines in summary["verdicts"].items():
                    print(f"  {strategy}: " + "; ".join(lines))
                markdown += _markdown(name, summary)
                if not args.quick:  # after each setting: a long run interrupted still leaves its figures
                    _write(Path(args.out), seeds, args.gap, results, markdown)
    if not args.quick:  # --quick measures nothing: leave the committed figures alone
        plot(results, Path(args.out).with_suffix(".png"))
        print(f"\nwrote {args.out}.json, .md and .png")


def _write(out: Path, seeds: int, gap: float, results: dict, markdown: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "gap": gap, "thaw_defaults": THAW_DEFAULTS,
                                                    "settings": results}, indent=1))
    out.with_suffix(".md").write_text("\n".join(markdown) + "\n")


def verdicts(strategies: dict, workers: int) -> dict[str, list[str]]:
    """The issue's targets for each candidate present, each with its measured value."""
    inf = float("inf")
    present = [s for s in OPTUNA if s in strategies]
    if not present:
        return {}
    best_epochs = min(strategies[s]["epochs_to_target_median"] or inf for s in present)
    best_regret = {b: min(strategies[s]["regret"][b] for s in present) for b in ("0.1", "0.2", "0.3")}
    found = {}
    for name in (c for c in CANDIDATES if c in strategies):
        s = strategies[name]
        ratio = (s["epochs_to_target_median"] or inf) / best_epochs
        lines = [f"epochs {'met' if ratio <= 0.8 else 'MISSED'} ({ratio:.2f}x the best Optuna pruner, target <= 0.8)"]
        for b, bar in best_regret.items():
            ok = s["regret"][b] <= bar + 1e-9
            lines.append(f"regret@{float(b):.0%} {'met' if ok else 'MISSED'} ({s['regret'][b]:.2f} vs {bar:.2f})")
        lost = s["top3_lost_rate"]
        lines.append(f"top-3 lost {'met' if lost <= 0.05 else 'MISSED'} ({lost:.0%}, target <= 5%)")
        if workers == 16 and "none" in strategies:
            vs_none = s["epochs_to_target_ratio_vs_none"]
            ok = vs_none is not None and vs_none <= 0.6
            lines.append(f"vs none {'met' if ok else 'MISSED'} ({vs_none if vs_none is not None else inf:.2f}x, target <= 0.6)")
        found[name] = lines
    return found


def _markdown(name: str, summary: dict) -> list[str]:
    rows = [f"## {name}", "", "| strategy | epochs to target | vs none | regret 10% / 20% / 30% (points) | top-3 pruned | "
            "top-3 lost | missed |", "|---|---|---|---|---|---|---|"]
    for strategy, s in summary["strategies"].items():
        epochs = s["epochs_to_target_median"]
        ratio = s["epochs_to_target_ratio_vs_none"]
        rows.append(f"| {strategy} | {epochs if epochs is not None else '-'} | {f'{ratio:.2f}' if ratio is not None else '-'} | "
                    f"{s['regret']['0.1']:.2f} / {s['regret']['0.2']:.2f} / {s['regret']['0.3']:.2f} | "
                    f"{s['top3_pruned_rate']:.0%} | {s['top3_lost_rate']:.0%} | {s['missed_rate']:.0%} |")
    rows.append("")
    for strategy, lines in summary["verdicts"].items():
        rows.append(f"- {strategy}: " + "; ".join(lines))
    return rows + [""]


if __name__ == "__main__":
    main()
