"""Replay many seeds of each strategy and summarise: epochs to reach the target, regret at fixed
budgets, how often the table's top configurations were pruned, how often the target was missed."""

from __future__ import annotations

import math
import multiprocessing
from pathlib import Path

import numpy as np

from hpsearch.replay.cost import budget, cumulative_costs
from hpsearch.replay.simulate import Run, simulate
from hpsearch.replay.table import Table

BUDGETS = (0.05, 0.1, 0.2, 0.3, 0.5)  # fractions of the exhaustive budget where regret is reported

_table: Table | None = None  # the table each pool worker replays (set once, not pickled per task)


def _init(table: Table) -> None:
    global _table
    _table = table


def _one(task: tuple) -> tuple[str, int, Run]:
    strategy, seed, options = task
    return strategy, seed, simulate(_table, strategy, seed=seed, **options)


def replay(table: Table, strategies: list[str], *, seeds: int = 100, workers: int = 1, gap: float = 1.0,
           sampler: str = "random", jobs: int = 1, cost: str = "epochs", progress=None) -> dict[str, list[Run]]:
    """{strategy: [Run per seed]}; the same for any `jobs` (each run is seeded on its own)."""
    cumulative_costs(table, cost)  # a table without timings is refused before any work
    options = dict(sampler=sampler, workers=workers, gap=gap, horizon=max(BUDGETS), cost=cost)
    tasks = [(strategy, seed, options) for strategy in strategies for seed in range(seeds)]
    runs: dict[str, list[Run | None]] = {s: [None] * seeds for s in strategies}
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs, initializer=_init, initargs=(table,)) as pool:
            results = pool.imap_unordered(_one, tasks, chunksize=4)
            for done, (strategy, seed, run) in enumerate(results, 1):
                runs[strategy][seed] = run
                progress and progress(done, len(tasks))
    else:
        _init(table)
        for done, task in enumerate(tasks, 1):
            strategy, seed, run = _one(task)
            runs[strategy][seed] = run
            progress and progress(done, len(tasks))
    return runs


def regret(table: Table, run: Run, budget_fraction: float, exhaustive: float | None = None) -> float:
    """Points (0.01) between the table's best and the best trial finished within the budget (a fraction
    of `exhaustive`, the exhaustive budget in the run's cost unit: epochs by default);
    with nothing finished yet, the distance to the table's worst."""
    exhaustive = table.budget if exhaustive is None else exhaustive
    within = [final for spent, final in run.completions if spent <= budget_fraction * exhaustive]
    sign = 1 if table.direction == "maximize" else -1
    reached = max(within, key=lambda v: sign * v) if within else min(table.finals(), key=lambda v: sign * v)
    return 100 * sign * (table.best() - reached)


def summarize(table: Table, runs: dict[str, list[Run]], cost: str = "epochs") -> dict:
    """The `--json` object: {"strategies": {name: {...}}, plus the table's size and budget}. With
    cost "seconds", every figure named epochs (to target, budgets) counts recorded seconds instead."""
    exhaustive = budget(cumulative_costs(table, cost))
    summary = {}
    for strategy, results in runs.items():
        epochs = np.array([r.epochs_to_target for r in results])
        summary[strategy] = {
            "epochs_to_target_median": float(np.median(epochs)),
            "epochs_to_target_mean": float(np.mean(epochs[np.isfinite(epochs)])) if np.isfinite(epochs).any() else math.inf,
            "regret_at_20pct": float(np.mean([regret(table, r, 0.2, exhaustive) for r in results])),
            "regret": {f"{b:g}": float(np.mean([regret(table, r, b, exhaustive) for r in results])) for b in BUDGETS},
            "top3_pruned_rate": float(np.mean([r.top_pruned for r in results])),
            "top3_lost_rate": float(np.mean([r.top_lost for r in results])),
            "top3_paused_rate": float(np.mean([r.top_paused for r in results])),
            "missed_rate": float(np.mean(~np.isfinite(epochs))),
            "pruned_per_trial": float(np.mean([r.pruned / max(r.trials, 1) for r in results])),
            "thawed_per_trial": float(np.mean([r.thawed / max(r.trials, 1) for r in results])),
        }
    baseline = summary.get("none", {}).get("epochs_to_target_median")
    for values in summary.values():
        ratio = values["epochs_to_target_median"] / baseline if baseline else math.nan
        values["epochs_to_target_ratio_vs_none"] = ratio
        # JSON has no infinity: a target never reached (or no `none` to compare with) is null.
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                values[key] = None
    return {"study": table.study, "configurations": len(table.trials), "exhaustive_budget_epochs": table.budget,
            "cost_unit": cost, "exhaustive_budget": exhaustive, "best": table.best(), "strategies": summary}


def format_table(summary: dict, title: str = "") -> str:
    unit = summary.get("cost_unit", "epochs")
    rows = [f"{title}{summary['configurations']} configurations, exhaustive budget "
            f"{summary.get('exhaustive_budget', summary['exhaustive_budget_epochs']):.0f} {unit}, best {summary['best']:.4f}",
            f"{'strategy':<20}{unit + ' to target':>18}{'vs none':>9}{'regret@10%':>12}{'@20%':>7}{'@30%':>7}"
            f"{'top-3 pruned':>14}{'lost':>7}{'missed':>8}"]
    for name, s in summary["strategies"].items():
        epochs, ratio = (s[k] if s[k] is not None else math.inf for k in ("epochs_to_target_median", "epochs_to_target_ratio_vs_none"))
        rows.append(f"{name:<20}{epochs:>18.0f}{ratio:>9.2f}{s['regret']['0.1']:>12.2f}{s['regret']['0.2']:>7.2f}"
                    f"{s['regret']['0.3']:>7.2f}{s['top3_pruned_rate']:>14.2f}{s['top3_lost_rate']:>7.2f}{s['missed_rate']:>8.2f}")
    return "\n".join(rows)


def plot(summaries: dict[str, dict], path: str | Path) -> None:
    """Regret (points) against the budget spent, one panel per setting (sampler x workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(4.5 * len(summaries), 3.6), squeeze=False, sharey=True)
    for ax, (setting, summary) in zip(axes[0], summaries.items()):
        for name, s in summary["strategies"].items():
            ax.plot([100 * b for b in BUDGETS], [s["regret"][f"{b:g}"] for b in BUDGETS], marker="o", label=name)
        ax.set_title(setting)
        ax.set_xlabel(f"% of exhaustive budget ({summary.get('cost_unit', 'epochs')})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean regret (accuracy points)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
