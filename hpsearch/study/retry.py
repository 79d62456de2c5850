"""Retrying a trial whose worker died or was interrupted, and counting trials with retries in mind.

A retry is a new Optuna trial (WAITING, picked up by the next worker that asks) with the same
params, the reported curve, the proxy history and the user attrs of the trial it replaces, so it continues from that
trial's checkpoint and MLflow run. Optuna 5 has no `Trial.system_attrs`, so the link lives in
user attrs: `retry_of` (the trial replaced) and `retries` (crash retries so far).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.study_attrs import HISTORY_ATTR, proxy_history
from hpsearch.pruning.rungs import PAUSED_ATTR
from hpsearch.study.owner import OWNER_ATTR, died_here
from hpsearch.study.surplus import SURPLUS_ATTR

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# What a retry does not take over from the trial it replaces: how and where that one ended.
NOT_INHERITED = ("interrupted", "reason", OWNER_ATTR, PAUSED_ATTR)


def requeue(study: optuna.Study, trial: FrozenTrial, *, max_retries: int, count_as_retry: bool,
            attrs: dict | None = None) -> bool:
    """Queue a retry of `trial` (with `attrs` added to its user attrs); False when it has used up its
    retries. A graceful interrupt or a thaw is not counted as a retry: the configuration did nothing wrong."""
    retries = trial.user_attrs.get("retries", 0) + int(count_as_retry)
    if retries > max_retries:
        return False
    study.add_trial(optuna.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={**{k: v for k, v in trial.user_attrs.items() if k not in NOT_INHERITED},
                    "retry_of": trial.number, "retries": retries, **(attrs or {})},
        intermediate_values=trial.intermediate_values,
        system_attrs={HISTORY_ATTR: history} if (history := proxy_history(trial)) is not None else None,
    ))
    return True


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Finished trials that count toward `n_trials`: a failed trial that was retried does not count,
    its retry does (once it finishes); a surplus trial (hpsearch.study.surplus) never does."""
    trials = study.get_trials(deepcopy=False)
    replaced = replaced_numbers(trials)
    return [t for t in trials if t.state in FINISHED and t.number not in replaced and not t.user_attrs.get(SURPLUS_ATTR)]


def replaced_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a retry has taken over."""
    return {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}


def fail_dead_here(study: optuna.Study, on_dead) -> list[FrozenTrial]:
    """Mark FAIL every RUNNING trial whose process died on this host (killed, crashed), at once, and
    hand each to `on_dead(study, trial)` (which queues its retry), as Optuna's heartbeat does after
    its grace period for trials of other hosts. Only one process wins the change of state, so two
    that look at once never both retry a trial. Returns the trials failed."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not died_here(trial.user_attrs.get(OWNER_ATTR)):
            continue
        try:
            if not study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another process got there first
            continue
        frozen = study._storage.get_trial(trial._trial_id)
        on_dead(study, frozen)
        failed.append(frozen)
    return failed


def configuration_number(trial: FrozenTrial) -> int:
    """The number a configuration is known by everywhere (console, MLflow run `trial-<N>`, checkpoint
    directory): its first trial's, which every retry of it keeps."""
    key = trial.user_attrs.get("checkpoint_key", "")
    return int(key.removeprefix("trial-")) if key.startswith("trial-") else trial.number
