"""Finished trials added to a real Optuna study with the user attrs hpsearch records, so that each
test states the study its rule is about."""

from datetime import datetime, timedelta

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

EPOCHS = 4
START = datetime(2026, 1, 1)


def add(study: optuna.Study, state: TrialState, *, value: float | None = None, epochs: int | None = None,
        seconds: float = 10.0, curve: dict[int, float] | None = None, lr: float | None = 0.1, **attrs) -> None:
    """One finished trial: `epochs` trained (user attr `epochs_trained`), taking `seconds` (Optuna duration)."""
    trial = optuna.trial.create_trial(
        state=state, value=value, params={} if lr is None else {"lr": lr},
        distributions={} if lr is None else {"lr": FloatDistribution(0.01, 1.0, log=True)},
        user_attrs={**({} if epochs is None else {"epochs_trained": epochs}), **attrs},
        intermediate_values=curve or {})
    trial.datetime_start, trial.datetime_complete = START, START + timedelta(seconds=seconds)
    study.add_trial(trial)
