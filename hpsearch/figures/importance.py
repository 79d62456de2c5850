"""Hyperparameter importances: Optuna's fANOVA over the complete trials, seeded so that a report
reads the same twice. Few trials make them noisy, hence the trial count next to them."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

SEED = 0
MIN_TRIALS = 2  # one trial gives every param importance 1.0: nothing learnt


@dataclass(frozen=True)
class Importances:
    values: dict[str, float]  # param -> share of the value's variance, most important first
    n_trials: int  # complete trials they rest on
    note: str | None = None  # why there are none

    def heading(self) -> str:
        return f"hyperparameter importances (fANOVA over {self.n_trials} complete trials, seed {SEED})"


def importances_of(study: optuna.Study) -> Importances:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS:
        return Importances({}, len(complete), f"needs {MIN_TRIALS} complete trials, the study has {len(complete)}")
    # As Optuna does, only what every complete trial sampled (a conditional one is left out).
    common = set.intersection(*(set(t.params) for t in complete))
    varying = {name for name in common if len({repr(t.params[name]) for t in complete}) > 1}
    if not varying:
        return Importances({}, len(complete), "no hyperparameter sampled by every complete trial varies across them")
    try:
        # Only what varied: fANOVA hands a constant hyperparameter a share of the noise otherwise.
        values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=SEED), params=sorted(varying))
    except (RuntimeError, ValueError) as err:  # e.g. "zero total variance": every trial scored the same
        return Importances({}, len(complete), f"fANOVA found nothing to attribute ({err})")
    return Importances({name: float(v) for name, v in values.items()}, len(complete))
