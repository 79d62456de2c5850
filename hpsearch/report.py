"""`hpsearch report NAME`: how well each proxy predicted the final metric in a study so far (the
calibration table the `calibrated` pruner acts on), per method when the method is searched.
The same table is kept on the study's MLflow parent run as `calibration/` artifacts."""

from __future__ import annotations

import json

import numpy as np
import optuna

from hpsearch.calibration import by_method, calibration_table

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


def study_report(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    counts = ", ".join(f"{n} {name.lower()}" for name, n in states.items() if n)
    head = f"study {study.study_name!r}: {counts or 'no trials'}"
    if states["COMPLETE"]:
        head += f"; best trial {study.best_trial.number}: {study.best_value:.4f}"  # in the study's direction
    return head + "\n\n" + calibration_text(calibration_records(trials))
