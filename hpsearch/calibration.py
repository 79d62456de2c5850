"""How well does each proxy, at each evaluation step, predict the final metric?

From the finished trials of a study: for every proxy and every step, the Spearman rank
correlation between the proxy's value at that step and the trial's final value, with the number
of trials it rests on. Rank-type proxies are only comparable within one method, so the table
can be computed per method. This is what a calibrated pruner reads to decide which proxy to
trust at which step (and where to trust none).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import optuna

HISTORY_ATTR = "proxy_history"  # user attr: [{"epoch": e, "knn_accuracy": ..., ...}, ...]
REPORTED = "reported"  # the proxy name of plain intermediate values, in studies hpsearch did not record


def proxy_curves(trial: optuna.trial.FrozenTrial) -> dict[str, dict[int, float]]:
    """{proxy: {step: value}} of one trial: every proxy hpsearch recorded, or else the values the
    trial reported to Optuna (any study, even one hpsearch did not run). Non-finite values dropped."""
    history = trial.user_attrs.get(HISTORY_ATTR)
    if not history:
        return {REPORTED: {step: value for step, value in trial.intermediate_values.items() if np.isfinite(value)}}
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    for entry in history:
        for proxy, value in entry.items():
            if proxy != "epoch" and value is not None and np.isfinite(value):
                curves[proxy][entry["epoch"]] = value
    return dict(curves)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata does)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: the Pearson correlation of the ranks; nan when either side is constant."""
    rx, ry = average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


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
