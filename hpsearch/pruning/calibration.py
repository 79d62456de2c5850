"""How well does each proxy, at each evaluation step, predict the final metric?

From the finished trials of a study: for every proxy and every step, the Spearman rank
correlation between the proxy's value at that step and the trial's final value, with the number
of trials it rests on. Rank-type proxies are only comparable within one method, so the table
can be computed per method. This is what a calibrated pruner reads to decide which proxy to
trust at which step (and where to trust none).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import optuna

from hpsearch.config.study_attrs import HISTORY_ATTR, proxy_history

__all__ = ["HISTORY_ATTR", "REPORTED", "proxy_curves"]  # and the calibration functions below

REPORTED = "reported"  # the proxy name of plain intermediate values, in studies hpsearch did not record


def proxy_curves(trial: optuna.trial.FrozenTrial) -> dict[str, dict[int, float]]:
    """{proxy: {step: value}} of one trial: every proxy hpsearch recorded, or else the values the
    trial reported to Optuna (any study, even one hpsearch did not run). Non-finite values dropped."""
    history = proxy_history(trial)
    if not history:
        return {REPORTED: {step: value for step, value in trial.intermediate_values.items() if np.isfinite(value)}}
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for entry in history:
        for proxy, value in entry.items():
            if proxy != "epoch" and value is not None and np.isfinite(value):
                curves[proxy][entry["epoch"]] = value
    return dict(curves)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata does). Vectorised: the
    pruners rank the finished trials at every decision, thousands of times in a replay."""
    values = np.asarray(values, float)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each run of equal values starts (NaNs never tie)
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]  # the mean of ranks start+1 .. end
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks; nan when either side is constant."""
    rx, ry = average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    spread = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if not spread > 1e-12:
        return float("nan")
    return float(rx @ ry) / spread


def calibration_table(trials: list[optuna.trial.FrozenTrial], min_trials: int = 3) -> dict[tuple[str, int], tuple[float, int]]:
    """{(proxy, step): (rho, n)} over the COMPLETE trials that recorded that proxy at that step."""
    points: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for trial in trials:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        for proxy, curve in proxy_curves(trial).items():
            for step, value in curve.items():
                points[(proxy, step)].append((value, trial.value))
    table = {}
    for key, pairs in sorted(points.items()):
        if len(pairs) >= min_trials:
            proxy_values, finals = zip(*pairs)
            table[key] = (spearman(np.array(proxy_values), np.array(finals)), len(pairs))
    return table


def by_method(trials: list[optuna.trial.FrozenTrial], method_param: str = "objective.method") -> dict[str | None, list]:
    """Trials grouped by the searched method (None when the method is not searched)."""
    groups: dict[str | None, list] = defaultdict(list)
    for trial in trials:
        groups[trial.params.get(method_param)].append(trial)
    return dict(groups)


# The table as records, text and JSON: on the study's MLflow parent run and in `hpsearch report`.
METHOD_PARAM = "objective.method"


def calibration_records(trials: list[optuna.trial.FrozenTrial]) -> list[dict]:
    """[{method, proxy, step, rho, n}] over all trials and, when the method is searched, per method."""
    groups = {"all": trials}
    methods = by_method(trials, METHOD_PARAM)
    if set(methods) != {None}:
        groups.update({str(m): ts for m, ts in sorted(methods.items(), key=lambda kv: str(kv[0]))})
    return [{"method": group, "proxy": proxy, "step": step, "rho": None if np.isnan(rho) else round(rho, 4), "n": n}
            for group, members in groups.items()
            for (proxy, step), (rho, n) in calibration_table(members).items()]


def calibration_text(records: list[dict], max_columns: int = 10) -> str:
    """One block per group: a row per proxy, a column per (sampled) step, Spearman rho in each cell."""
    if not records:
        return "calibration: no complete trial with proxies yet (needs at least 3)\n"
    blocks = []
    for group in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == group]
        steps = sorted({r["step"] for r in rows})
        if len(steps) > max_columns:  # early steps matter most to a pruner: sample them densely
            picks = np.unique(np.round(np.geomspace(1, len(steps), max_columns)).astype(int) - 1)
            steps = [steps[i] for i in picks]
        cell = {(r["proxy"], r["step"]): r for r in rows}
        proxies = sorted({r["proxy"] for r in rows})
        width = max(len(p) for p in [*proxies, "proxy \\ epoch"]) + 2
        lines = [f"calibration ({'all methods' if group == 'all' else 'method ' + group}): Spearman rho between each "
                 "proxy at an epoch and the final metric",
                 "proxy \\ epoch".ljust(width) + "".join(f"{s:>7}" for s in steps)]
        for proxy in proxies:
            values = [cell.get((proxy, s), {}).get("rho") for s in steps]
            lines.append(proxy.ljust(width) + "".join(f"{v:>7.2f}" if v is not None else f"{'-':>7}" for v in values))
        lines.append("n trials".ljust(width) + "".join(f"{max((r['n'] for r in rows if r['step'] == s), default=0):>7}"
                                                      for s in steps))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def calibration_json(records: list[dict]) -> str:
    return json.dumps(records, indent=1)
