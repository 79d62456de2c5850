"""Asynchronous rungs (ASHA, Li et al. 2020) with pauses instead of kills.

At each rung (epochs min_resource * eta**r) a trial goes on only while it is among the top 1/eta
of *every* trial that has reached that rung: finished, stopped, paused and still running ones.
Nothing waits for a finished trial, so with W workers the first wave decides as soon as eta of
its trials have reported at a rung, instead of after ~W x epochs. Deciding that early is only safe
because a stop here is a pause (`reversible`): the trial ends PRUNED in Optuna with user attr
`paused_at`, and a thaw policy (`thaw.py`) continues it when the rung's quota, or the calibration,
later says it should have gone on.

A thawed trial is a new Optuna trial with user attr `thaw_of` (the paused trial's number) that
reports the paused curve again before it continues; the two are one lineage and counted once.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

PAUSED_ATTR = "paused_at"  # the epoch at which a reversible pruner paused the trial (it ended PRUNED)
THAW_ATTR = "thaw_of"  # on a thawed trial: the number of the paused trial it continues
EVICTED = "evicted:"  # study system attr per paused trial whose checkpoint was evicted (why): pruned for good


def sign_of(study: optuna.Study) -> float:
    """+1 when higher is better, so every comparison can be made as "larger wins"."""
    return 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0


def thawed_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The paused trials already continued by a thaw: their values live on in the thawed trial."""
    return {t.user_attrs[THAW_ATTR] for t in trials if THAW_ATTR in t.user_attrs}


def paused_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials paused and not yet thawed: the candidates a free worker may continue."""
    thawed = thawed_numbers(trials)
    return [t for t in trials if t.state == TrialState.PRUNED and PAUSED_ATTR in t.user_attrs and t.number not in thawed]


def evicted(study: optuna.Study) -> frozenset[int]:
    """The paused trials that lost their checkpoint (hpsearch.study.pause): no thaw can continue them."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    return frozenset(int(key.removeprefix(EVICTED)) for key in attrs if key.startswith(EVICTED))


def state_label(trial: FrozenTrial, gone: frozenset[int]) -> str:
    """A trial's state as the console and the report show it: PAUSED (a thaw may continue it) apart
    from PRUNED (`gone`: the evicted), and "(thawed)" on a trial that continued a paused one."""
    state = trial.state.name
    if state == "PRUNED" and PAUSED_ATTR in trial.user_attrs and trial.number not in gone:
        state = "PAUSED"
    return f"{state} (thawed)" if THAW_ATTR in trial.user_attrs else state


class RungPruner(optuna.pruners.BasePruner):
    """Pause a trial at a rung unless it is in the top 1/eta of all trials that reached that rung."""

    reversible = True  # its stops are pauses: the study may thaw them

    def __init__(self, *, reduction_factor: int = 3, min_resource: int = 1):
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be >= 2, got {reduction_factor}")
        if min_resource < 1:
            raise ValueError(f"min_resource must be >= 1, got {min_resource}")
        self.eta, self.min_resource = reduction_factor, min_resource
        self.reasons: dict[int, str] = {}  # trial number -> why it was paused (read by the trial loop)
        self.thaw = None  # the policy a real study asks when a worker is free (hpsearch.pruning.thaw)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        rung = self.rung_reached(trial.last_step, trial.intermediate_values)
        if rung is None:
            return False
        sign = sign_of(study)
        values = self.rung_values(study.get_trials(deepcopy=False), rung, sign)
        mine = sign * _value_at(trial.intermediate_values, rung)
        better, quota = sum(v > mine for v in values), len(values) // self.eta
        if better < quota:
            return False
        if quota == 0:  # ASHA promotes no one from a rung that fewer than eta trials reached
            standing = "the best" if better == 0 else f"{better} better"
            self.reasons[trial.number] = (f"paused at rung {rung}: {standing} of the {len(values)} trial(s) that reached it, "
                                          f"which promotes its top 1/{self.eta} once {self.eta} have")
        else:
            self.reasons[trial.number] = (f"paused at rung {rung}: {better} of {len(values)} trials that reached it are better "
                                          f"(goes on in the top {quota} = 1/{self.eta})")
        return True

    def rung_reached(self, step: int | None, reported: dict[int, float]) -> int | None:
        """The rung this report is the first at or past (eval_every > 1 still meets every rung), or None."""
        if step is None:
            return None
        previous = max((s for s in reported if s < step), default=0)
        rung, met = self.min_resource, None
        while rung <= step:
            if rung > previous:
                met = rung
            rung *= self.eta
        return met

    def rung_values(self, trials: list[FrozenTrial], rung: int, sign: float) -> list[float]:
        """Every lineage's value at `rung` (larger is better), running trials included."""
        thawed = thawed_numbers(trials)
        values = []
        for t in trials:
            if t.number in thawed or t.state == TrialState.FAIL:
                continue
            value = _value_at(t.intermediate_values, rung)
            if value is not None and value == value:  # NaN never ranks
                values.append(sign * value)
        return values

    def standings(self, trials: list[FrozenTrial], paused: list[FrozenTrial], sign: float) -> list[tuple[int, int, int]]:
        """(rung, trials better at it, the rung's quota) of each paused trial, as the rungs stand now."""
        at = [self.rung_reached(t.user_attrs[PAUSED_ATTR],
                                {s: v for s, v in t.intermediate_values.items() if s <= t.user_attrs[PAUSED_ATTR]})
              or t.user_attrs[PAUSED_ATTR] for t in paused]
        ranked = {rung: np.sort(self.rung_values(trials, rung, sign)) for rung in set(at)}
        result = []
        for trial, rung in zip(paused, at):
            values, mine = ranked[rung], sign * _value_at(trial.intermediate_values, rung)
            better = len(values) - int(np.searchsorted(values, mine, side="right"))
            result.append((rung, better, len(values) // self.eta))
        return result


def _value_at(reported: dict[int, float], rung: int) -> float | None:
    """The value a trial reported at a rung: at the first step at or past it."""
    steps = [s for s in reported if s >= rung]
    return reported[min(steps)] if steps else None
