"""The replay benchmark of issue 5: how many epochs each pruning strategy spends before a trial within
1 point of the best finishes, and its regret at fixed budgets, on the committed CIFAR-10 recording.

    python benchmarks/replay_pruners.py                       # 100 seeds x 4 settings (~10 min on 2 cores)
    python benchmarks/replay_pruners.py --quick               # 5 seeds, random sampling, 1 worker: checks it runs

The table (benchmarks/tables/cifar10_record.json.gz) holds every configuration of
studies/cifar10_record.yaml trained to the full 20 epochs with every proxy at every epoch; it was
recorded and exported with the commands kept in the table itself (printed first). Settings: random
and TPE sampling (TPE's proposals mapped to the nearest recorded configuration not yet run) x 1
and 16 asynchronous workers; strategies: no pruning, Optuna's median and Hyperband on kNN, keep
the top 5 after one epoch, and hpsearch's `calibrated`. The same runs are what `hpsearch replay`
does; this script only loops over the settings and writes the figures.

Targets: calibrated reaches the target in <= 0.25x the median epochs of no pruning and <= 0.7x
those of the better of median and Hyperband; regret at 20% of the exhaustive budget <= 0.5 point;
none of the table's top 3 pruned in >= 95% of seeds.
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
from hpsearch.replay.table import Table  # noqa: E402

TABLE = ROOT / "benchmarks" / "tables" / "cifar10_record.json.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", default=str(TABLE))
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--gap", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="5 seeds, random sampling, 1 worker: measures nothing")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replay_pruners"),
                        help="writes OUT.json and OUT.png")
    args = parser.parse_args()

    if args.quick:
        args.seeds = min(args.seeds, 5)
    table = Table.load(args.table)
    print(f"table {args.table}: {len(table.trials)} configurations of study {table.study!r}, "
          f"methods {sorted({str(r.params.get('objective.method')) for r in table.trials})}")
    if table.command:
        print(f"recorded with: {table.command}")
    settings = [("random", 1)] if args.quick else [("random", 1), ("random", 16), ("tpe", 1), ("tpe", 16)]
    summaries = {}
    for sampler, workers in settings:
        start = time.perf_counter()
        runs = replay(table, list(DEFAULT_STRATEGIES), seeds=args.seeds, workers=workers, gap=args.gap,
                      sampler=sampler, jobs=args.jobs)
        summary = summarize(table, runs)
        name = f"{sampler}, {workers} worker{'s' if workers > 1 else ''}"
        summaries[name] = summary
        print()
        print(format_table(summary, f"{name}, {args.seeds} seeds ({time.perf_counter() - start:.0f} s): "))
        print(_verdict(summary["strategies"]))
    if args.quick:
        return  # measures nothing: leave the committed figures alone
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"table": str(args.table), "seeds": args.seeds, "gap": args.gap,
                                                    "settings": summaries}, indent=1))
    plot(summaries, out.with_suffix(".png"))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")


def _verdict(strategies: dict) -> str:
    """The issue's four targets for `calibrated`, each with its measured value."""
    c = strategies["calibrated"]
    better = min(strategies[s]["epochs_to_target_median"] or float("inf") for s in ("median", "hyperband"))
    ratio_none = c["epochs_to_target_ratio_vs_none"]
    ratio_best = (c["epochs_to_target_median"] or float("inf")) / better
    checks = [("epochs vs none <= 0.25", ratio_none is not None and ratio_none <= 0.25, ratio_none),
              ("epochs vs best of median/hyperband <= 0.7", ratio_best <= 0.7, ratio_best),
              ("regret@20% <= 0.5 pt", c["regret_at_20pct"] <= 0.5, c["regret_at_20pct"]),
              ("top-3 kept in >= 95% of seeds", c["top3_pruned_rate"] <= 0.05, 1 - c["top3_pruned_rate"])]
    return "calibrated: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'} ({value:.2f})" if value is not None
                                      else f"{name}: MISSED (never reached)" for name, ok, value in checks)


if __name__ == "__main__":
    main()
