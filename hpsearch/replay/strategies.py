"""The pruning strategies a replay compares, by name. Each is a real Optuna pruner acting on what a
trial reports (the table's primary proxy, step = epoch), built fresh for every simulated study;
the reversible ones (`asha_thaw`, `calibrated_thaw`) pause instead of killing and come with the
thaw policy that decides, when a worker is free, whether to continue a paused trial."""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.pruning.rungs import RungPruner
from hpsearch.pruning.thaw import THAW_DEFAULTS, CalibratedThaw, RungThaw
from hpsearch.replay import STRATEGY_NAMES


class TopKAfterFirstStep(optuna.pruners.BasePruner):
    """At the first step, keep a trial only if its value is among the best k seen at that step so far."""

    def __init__(self, k: int = 5):
        self.k = k

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or len(trial.intermediate_values) != 1:
            return False
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        seen = [sign * t.intermediate_values[step] for t in study.get_trials(deepcopy=False)
                if step in t.intermediate_values and t.state != TrialState.FAIL]
        better = sum(v > sign * trial.intermediate_values[step] for v in seen)
        return better >= self.k


Strategy = tuple[optuna.pruners.BasePruner, "RungThaw | None"]

def _rung_pruner() -> RungPruner:
    return RungPruner(reduction_factor=THAW_DEFAULTS["reduction_factor"])


def _asha_thaw(seed: int) -> Strategy:
    pruner = _rung_pruner()
    return pruner, RungThaw(pruner)


def _calibrated_thaw(seed: int) -> Strategy:
    pruner = _rung_pruner()
    return pruner, CalibratedThaw(pruner, CalibratedPruner(seed=seed), p_thaw=THAW_DEFAULTS["p_thaw"],
                                  p_skip=THAW_DEFAULTS["p_skip"])


def _strategies(epochs: int) -> dict[str, Callable[[int], optuna.pruners.BasePruner | Strategy]]:
    return {
        "none": lambda seed: optuna.pruners.NopPruner(),
        "median": lambda seed: optuna.pruners.MedianPruner(n_startup_trials=5),
        "percentile25": lambda seed: optuna.pruners.PercentilePruner(25.0, n_startup_trials=5),
        "successive_halving": lambda seed: optuna.pruners.SuccessiveHalvingPruner(),
        "hyperband": lambda seed: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
        "top5_after_1": lambda seed: TopKAfterFirstStep(5),
        "calibrated": lambda seed: CalibratedPruner(seed=seed),
        "asha_thaw": _asha_thaw,
        "calibrated_thaw": _calibrated_thaw,
    }


assert tuple(_strategies(1)) == STRATEGY_NAMES, "hpsearch/replay/__init__.py lists the strategy names"


def make_strategy(name: str, epochs: int, seed: int) -> Strategy:
    """(the pruner, the thaw policy or None) of a strategy, fresh for one simulated study."""
    try:
        made = _strategies(epochs)[name](seed)
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; expected some of: {', '.join(STRATEGY_NAMES)}") from None
    return made if isinstance(made, tuple) else (made, None)
