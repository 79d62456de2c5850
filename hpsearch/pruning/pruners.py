"""Optuna pruners by the name study files use (`pruning.name`, one of hpsearch.config.names.PRUNERS),
with their arguments checked."""

from __future__ import annotations

import inspect

import numpy as np
import optuna

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.pruning.thaw import pausing_calibrated

PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "calibrated": CalibratedPruner,  # hpsearch's own: acts on proxies proved predictive (calibrated.py)
}

# PatientPruner wraps another pruner, so its `wrapped_pruner` argument is a pruner spec of its own.
WRAPPERS = {"patient": optuna.pruners.PatientPruner}


def pruner_names() -> list[str]:
    return sorted([*PRUNERS, *WRAPPERS])


def build_pruner(name: str, args: dict) -> optuna.pruners.BasePruner:
    """Build a pruner; raises ValueError naming the bad argument (the study file's loader turns it into a field error)."""
    if name in WRAPPERS:
        args = dict(args)
        inner = args.pop("wrapped_pruner", {"name": "median"})
        if not isinstance(inner, dict) or "name" not in inner:
            raise ValueError("wrapped_pruner: expected a mapping with 'name' (and optional 'args')")
        wrapped = build_pruner(inner["name"], inner.get("args", {}))
        return _construct(WRAPPERS[name], {"wrapped_pruner": wrapped, **args})
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; expected one of: {', '.join(pruner_names())}")
    if name == "calibrated":
        args = dict(args)
        pause = args.pop("pause", True)
        if not isinstance(pause, bool):
            raise ValueError(f"pause: expected true or false, got {pause!r}")
        if pause:  # stops are pauses, thawed when the calibration says they were wrong (hpsearch.pruning.thaw)
            return pausing_calibrated(args, _construct)
    return _construct(PRUNERS[name], args)


def _construct(cls, args: dict):
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise ValueError(f"unknown argument {unknown[0]!r} for {cls.__name__}; expected some of: {', '.join(sorted(accepted))}")
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cls.__name__}: {err}") from None


def explain(pruner: optuna.pruners.BasePruner, study: optuna.Study, reported: dict[int, float],
            proxy: str = "kNN") -> str | None:
    """Why `pruner` stopped a trial that reported `reported` ({step: value}) at its last step, with
    the figure it compared against, for the pruners whose rule is a bar over the complete trials
    (median, percentile); None for the others."""
    if not isinstance(pruner, optuna.pruners.PercentilePruner) or not reported:
        return None
    step = max(reported)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = [t.intermediate_values[step] for t in complete if step in t.intermediate_values]
    if not values:
        return None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    # Optuna compares the trial's best report so far with this percentile of the complete trials'.
    percentile = pruner._percentile
    bar = float(np.nanpercentile(np.array(values, dtype=float), 100 - percentile if maximize else percentile))
    best = (max if maximize else min)(reported.values())
    name = "median" if isinstance(pruner, optuna.pruners.MedianPruner) else f"{percentile:g}th-percentile"
    return (f"{name} pruner: best {proxy} {best:.4f} by epoch {step}, {'below' if maximize else 'above'} the {name} "
            f"{bar:.4f} of {len(values)} complete trials at epoch {step}")
