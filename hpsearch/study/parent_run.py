"""The study's MLflow parent run: one for the whole study, however many workers on however many
machines open it at once.

A file lock serialises the workers of one machine only, so the run is elected on the Optuna
storage that all workers share: each worker that finds no usable parent run creates a candidate and
claims the study attr for it (an atomic compare-and-set, see claims.py); the losers delete their
candidates and use the winner's.
"""

from __future__ import annotations

import optuna

from hpsearch.study.claims import claim
from hpsearch.tracking.tracker import Tracker

RUN_ID_ATTR = "mlflow_study_run_id"
# Each round is lost only when another worker's winning run vanished (was deleted) in between,
# so more than a few rounds means something keeps deleting runs: an error beats spinning.
ELECTION_ROUNDS = 5


def study_parent_run(study: optuna.Study, tracker: Tracker, study_name: str) -> str:
    """The id of the study's parent run, reopened (status RUNNING): the one its `mlflow_study_run_id`
    attr names when that run still exists in the tracker's experiment, else one new run that every
    worker of the study agrees on."""
    held = study.user_attrs.get(RUN_ID_ATTR)
    for _ in range(ELECTION_ROUNDS):
        if held is not None and _reopen(tracker, held):
            return held
        candidate = tracker.client.create_run(tracker.experiment_id, run_name=study_name,
                                              tags={"hpsearch.study": study_name, "hpsearch.role": "study"}).info.run_id
        # Replacing only the stale id this worker saw: if another worker replaced it first, the
        # claim returns that worker's run instead.
        winner = claim(study, RUN_ID_ATTR, candidate, replacing=held)
        if winner == candidate:
            return candidate
        tracker.client.delete_run(candidate)  # no empty second parent run in the runs table
        held = winner
    raise RuntimeError(f"study {study_name!r}: no MLflow parent run could be agreed on in {ELECTION_ROUNDS} "
                       f"rounds; each run elected was deleted before it could be reopened")


def _reopen(tracker: Tracker, run_id: str) -> bool:
    """Mark `run_id` RUNNING if it is an active run of the tracker's experiment; False when it was
    deleted, belongs to another experiment or is unknown to this tracking store (a study moved to
    another one). Other errors (the server is unreachable) propagate: they say nothing about the run,
    and replacing it would split the study's record in two."""
    from mlflow.exceptions import MlflowException  # lazy: importing mlflow costs over a second

    try:
        info = tracker.client.get_run(run_id).info
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    if info.lifecycle_stage != "active" or info.experiment_id != tracker.experiment_id:
        return False
    tracker.client.update_run(run_id, status="RUNNING")
    return True
