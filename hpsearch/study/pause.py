"""Paused trials in a real study: thawing them when a worker is free, and the disk their checkpoints take.

A reversible pruner (`pruning: {name: calibrated}`, hpsearch.pruning.thaw) pauses instead of
killing: the trial ends PRUNED in Optuna with user attr `paused_at`, its checkpoint at that epoch
is kept and its MLflow run is tagged `hpsearch.paused_at`. Before a worker takes its next trial,
the pruner's thaw policy may pick a paused trial instead of a new configuration; it is continued
as a retry is (hpsearch.study.retry: a new Optuna trial with the same params, curve and MLflow
run, from the checkpoint) with user attr `thaw_of`. One worker thaws a trial: the thaw is claimed
on the storage first. When the study has taken all its new configurations while fewer than the
calibration's top_k trials completed (or run elsewhere), the most promising paused trial goes on,
so that the study ends with configurations trained to their last epoch.

Paused checkpoints live under `recovery.paused_checkpoints_gb`: over it, the least promising
paused trials (shallowest pause, then lowest value there) lose their checkpoint and are pruned for
good, with that reason on their MLflow run (an Optuna trial that ended cannot take new attrs:
the eviction is a study system attr, `evicted:N`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.pruning.rungs import EVICTED, PAUSED_ATTR, THAW_ATTR, evicted, paused_trials, sign_of
from hpsearch.study.claims import claim
from hpsearch.study.retry import configuration_number, finished_trials, requeue
from hpsearch.study.surplus import SURPLUS_ATTR
from hpsearch.tracking.tracker import Tracker
from hpsearch.training import checkpoint

THAWING = "thawing:"  # study system attr per paused trial: the token of the worker that thaws it


def waiting_paused(study: optuna.Study) -> list[FrozenTrial]:
    """Paused trials that a thaw may still continue (not thawed, checkpoint kept)."""
    gone = evicted(study)
    return [t for t in paused_trials(study.get_trials(deepcopy=False)) if t.number not in gone]


def thaw_if_due(study: optuna.Study, cfg: StudyConfig, say: Callable[[str], None]) -> FrozenTrial | None:
    """Queue the thaw of the paused trial the pruner's policy picks now, if any; the paused trial."""
    policy = getattr(study.pruner, "thaw", None)
    if policy is None:
        return None
    top_k = getattr(getattr(policy, "calibrated", None), "top_k", 1)
    finished = finished_trials(study)
    complete = sum(t.state == TrialState.COMPLETE for t in finished)
    # Trials running elsewhere count as on their way: idle workers must not all thaw at once.
    running = _running(study)
    exhausted = len(finished) + running >= cfg.n_trials and complete + running < min(top_k, cfg.n_trials)
    pick = policy.choose(study, exhausted=exhausted, unavailable=evicted(study))
    if pick is None:
        return None
    token = uuid.uuid4().hex
    if claim(study, f"{THAWING}{pick.number}", token, system=True) != token:
        return None  # another worker thaws it
    requeue(study, pick, max_retries=cfg.recovery.max_retries, count_as_retry=False,
            attrs={THAW_ATTR: pick.number})
    say(f"trial {configuration_number(pick)}: thawed, paused at epoch {pick.user_attrs[PAUSED_ATTR]} "
        f"({policy.reasons.get(pick.number, 'chosen by the thaw policy')})")
    return pick


def _running(study: optuna.Study) -> int:
    return sum(not t.user_attrs.get(SURPLUS_ATTR) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def kept_paused_keys(study: optuna.Study) -> set[str]:
    """Checkpoint keys that a thaw still needs."""
    return {t.user_attrs["checkpoint_key"] for t in waiting_paused(study) if "checkpoint_key" in t.user_attrs}


def evict_over_budget(study: optuna.Study, root: Path, budget_gb: float, tracker: Tracker,
                      say: Callable[[str], None]) -> list[int]:
    """Prune for good the least promising paused trials until their checkpoints fit `budget_gb`;
    the numbers evicted."""
    sign = sign_of(study)
    paused = [t for t in waiting_paused(study) if "checkpoint_key" in t.user_attrs]
    sizes = {t.number: _size(root / t.user_attrs["checkpoint_key"]) for t in paused}
    total, budget = sum(sizes.values()), budget_gb * 1e9
    evicted_now = []
    for trial in sorted(paused, key=lambda t: _promise(t, sign)):
        if total <= budget:
            break
        reason = (f"paused at epoch {trial.user_attrs[PAUSED_ATTR]}, then pruned for good: paused checkpoints "
                  f"over recovery.paused_checkpoints_gb ({budget_gb:g} GB), this one the least promising")
        if claim(study, f"{EVICTED}{trial.number}", reason, system=True) != reason:
            continue  # another worker evicted it
        checkpoint.remove(root / trial.user_attrs["checkpoint_key"])
        total -= sizes[trial.number]
        if "mlflow_run_id" in trial.user_attrs:
            run = tracker.trial_run_by_id(trial.user_attrs["mlflow_run_id"])
            run.set_tags({"hpsearch.reason": reason})
            run.client.delete_tag(run.run_id, "hpsearch.paused_at")
        say(f"trial {configuration_number(trial)}: {reason}")
        evicted_now.append(trial.number)
    return evicted_now


def _promise(trial: FrozenTrial, sign: float) -> tuple[int, float]:
    """Deeper pauses first, then the higher value there: sorted ascending, the least promising first."""
    at = trial.user_attrs[PAUSED_ATTR]
    value = trial.intermediate_values.get(at, float("nan"))
    return at, sign * value if value == value else float("-inf")


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if directory.exists() else 0
