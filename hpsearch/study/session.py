"""A study opened for running, whatever trains its trials: the Optuna study on its storage, its
MLflow parent run, the console, and the loop that runs trials until the study holds `n_trials`
finished ones (counted across restarts), retrying trials whose worker died or was interrupted.

`run_study` (hpsearch's method library) and `optimize` (the user's own training loop) differ only
in what a trial does; both open a Session and hand it their objective.
"""

from __future__ import annotations

import fcntl
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.evaluation import FINAL_METRIC_KEYS
from hpsearch.figures.publish import publish_report
from hpsearch.pruning.calibration import calibration_json, calibration_records, calibration_text
from hpsearch.study.console import Console, best, counts
from hpsearch.study.interrupt import Interrupted, StopRequest
from hpsearch.study.owner import OWNER_ATTR, is_this_process
from hpsearch.study.retry import fail_dead_here, finished_trials, replaced_numbers, requeue
from hpsearch.study.storage import connect, open_study
from hpsearch.study.stored_config import check_unchanged, config_yaml, store_config, without_secrets
from hpsearch.tracking.tracker import Tracker
from hpsearch.tracking.urls import mask
from hpsearch.training import checkpoint


def checkpoint_root_of(cfg: StudyConfig, workdir: Path) -> Path:
    """Where the study's trials keep their checkpoints: `recovery.checkpoint_dir` or the work dir's."""
    return Path(cfg.recovery.checkpoint_dir or workdir / "checkpoints").resolve() / cfg.name


@dataclass
class Session:
    cfg: StudyConfig
    study: optuna.Study
    tracker: Tracker
    study_run_id: str
    checkpoint_root: Path
    console: Console
    workdir: Path
    tracking_uri: str
    on_stale: Callable
    stop: StopRequest = field(default_factory=StopRequest)

    def finished(self) -> int:
        return len(finished_trials(self.study))

    def run(self, objective: Callable[[optuna.Trial], float], at_end: Callable[[], None] | None = None) -> None:
        """Run `objective` trial after trial until the total is reached; then `at_end` (the test split,
        for instance), the report on the parent run and the final table. Raises Interrupted after
        SIGINT/SIGTERM, with this process's interrupted trial queued to continue on the next run."""
        study, cfg = self.study, self.cfg
        status = "FAILED"
        try:
            with self.stop, _quiet_interrupts(self.stop):
                # Until the total is reached and no trial of a process that died on this host is left
                # RUNNING (its retry runs first: Optuna takes queued trials before sampling).
                done = self.finished()
                while done < cfg.n_trials or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    study.optimize(objective, callbacks=[self._after_trial],
                                   catch=(Exception,))  # a failing trial is recorded as FAIL; the study goes on
                    if not self.retry_dead_here():
                        break
                    done = self.finished()
            status = "FINISHED"
            if at_end is not None:
                at_end()
            # The report's plots and HTML page on the parent run (after the test figures, which it shows).
            publish_report(self.tracker, self.study_run_id, study, finished_trials(study), say=self.console.line)
        except Interrupted:
            status = "KILLED"
            _requeue_interrupted(study, cfg)
            raise
        finally:
            self.tracker.end_study_run(self.study_run_id, status)
        self.console.summary(study, _ui_hint(cfg, self.workdir, self.tracking_uri, self.tracker))

    def retry_dead_here(self) -> list:
        """Fail and retry the RUNNING trials whose process died on this host (see retry.fail_dead_here)."""
        dead = fail_dead_here(self.study, self.on_stale)
        for trial in dead:
            owner = trial.user_attrs.get(OWNER_ATTR, {})
            self.console.line(f"trial {trial.number}: its process {owner.get('pid')} died on this host; "
                              "it continues from its last checkpoint")
        return dead

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = counts(study)
        metrics = {"trials_complete": n["COMPLETE"], "trials_pruned": n["PRUNED"], "trials_failed": n["FAIL"]}
        top = best(study)
        if top is not None:
            metrics[f"best_{FINAL_METRIC_KEYS[self.cfg.evaluation.final_metric]}"] = top.value
        self.tracker.log_metrics(self.study_run_id, metrics, step=sum(n.values()))
        if trial.state == TrialState.COMPLETE:
            _log_calibration(self.tracker, self.study_run_id, study)
        _prune_checkpoints(study, self.checkpoint_root, self.cfg.recovery.keep_best)
        self.console.trial_finished(study, trial)
        # Counted over the whole study, so several workers stop together; a queued retry still runs,
        # so that no started configuration is left behind.
        if sum(n.values()) >= self.cfg.n_trials and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()


def open_session(cfg: StudyConfig, text: str | None, label: str, device: object, *, force: bool = False,
                 console: Console | None = None) -> Session:
    """Connect to the storage, create or continue the study (ConfigChanged when the config changes
    its search), keep the config with it, open its MLflow parent run, and queue the retries of
    trials whose worker died. `text` is the study file's text, kept on the parent run when given."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the console reports trials instead
    # Heartbeats and grouped multivariate TPE are marked experimental, but are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    workdir = Path(cfg.workdir).resolve()
    storage_url = cfg.storage or f"sqlite:///{workdir / 'optuna.db'}"
    tracking_uri = cfg.tracking.uri or f"sqlite:///{workdir / 'mlflow.db'}"
    checkpoint_root = checkpoint_root_of(cfg, workdir)
    tracker: Tracker | None = None

    def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A worker died: retry its trial from its checkpoint, or close its run when out of retries."""
        if not requeue(study, trial, max_retries=cfg.recovery.max_retries, count_as_retry=True):
            if tracker is not None and "mlflow_run_id" in trial.user_attrs:
                tracker.trial_run_by_id(trial.user_attrs["mlflow_run_id"]).finish("FAIL", reason="worker died; retries exhausted")

    if cfg.storage is None:
        workdir.mkdir(parents=True, exist_ok=True)  # the default SQLite storage lives there
    storage = connect(cfg, storage_url, on_stale)  # a remote one is checked before anything is created
    workdir.mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, storage)
    check_unchanged(study, cfg, force)
    store_config(study, cfg)
    # Workers starting together on one machine: creating a SQLite MLflow backend races, and the
    # study's parent run must be created once, so both happen under a lock in the work dir.
    with _locked(workdir / ".hpsearch.lock"):
        tracker = Tracker(tracking_uri, cfg.tracking.experiment or cfg.name, workdir / "mlartifacts")
        study_run_id = tracker.study_run(cfg.name, study.user_attrs.get("mlflow_study_run_id"))
        study.set_user_attr("mlflow_study_run_id", study_run_id)
    if text is not None:
        tracker.log_text(study_run_id, without_secrets(text, cfg), f"study/{Path(label).name}")
    tracker.log_text(study_run_id, config_yaml(study), "study/resolved_config.yaml")
    optuna.storages.fail_stale_trials(study)  # queue retries of dead trials before counting
    session = Session(cfg, study, tracker, study_run_id, checkpoint_root, console or Console(cfg.n_trials, cfg.training.epochs),
                      workdir, tracking_uri, on_stale)
    session.retry_dead_here()
    session.console.line(f"study {cfg.name!r}: {session.finished()}/{cfg.n_trials} trials finished, training on {device}")
    session.console.line(f"  optuna storage {mask(storage_url)}, MLflow {mask(tracking_uri)}")
    return session


@contextmanager
def _locked(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _requeue_interrupted(study: optuna.Study, cfg: StudyConfig) -> None:
    """The trial this process was running when SIGINT/SIGTERM stopped it (Optuna marked it FAIL)
    continues on the next run. Only this process's: workers stopped together each queue their own,
    so no trial gets two retries writing one checkpoint directory and one MLflow run."""
    replaced = replaced_numbers(study.get_trials(deepcopy=False))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if (trial.user_attrs.get("interrupted") and trial.number not in replaced
                and is_this_process(trial.user_attrs.get(OWNER_ATTR))):
            requeue(study, trial, max_retries=cfg.recovery.max_retries, count_as_retry=False)


@contextmanager
def _quiet_interrupts(stop: StopRequest):
    """Optuna logs a trial stopped by SIGINT/SIGTERM as failed, with a traceback; hpsearch says what
    happened in one line instead, so Optuna's records are dropped once a stop was requested
    (until then its warnings show as usual)."""
    def keep(record) -> bool:
        return not (stop.requested or (record.exc_info and isinstance(record.exc_info[1], Interrupted)))

    logger = logging.getLogger("optuna")
    logger.addFilter(keep)
    for handler in logger.handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
        for handler in logger.handlers:
            handler.removeFilter(keep)


def _prune_checkpoints(study: optuna.Study, root: Path, keep_best: int) -> None:
    """Bound disk use: finished trials keep their checkpoints only when among the best `keep_best`.
    A failed trial that may still be retried (interrupted, or its worker died) keeps its own, even
    when its retry is not queued yet: another worker may be about to queue it."""
    finished = finished_trials(study)
    complete = sorted((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    keep = {t.user_attrs.get("checkpoint_key") for t in complete[:keep_best]}
    keep |= {t.user_attrs.get("checkpoint_key") for t in finished  # finished: retried ones are left out
             if t.state == TrialState.FAIL and (t.user_attrs.get("interrupted") or "reason" not in t.user_attrs)}
    for trial in finished:
        key = trial.user_attrs.get("checkpoint_key")
        if key is not None and key not in keep:
            checkpoint.remove(root / key)


def _log_calibration(tracker: Tracker, run_id: str, study: optuna.Study) -> None:
    """The calibration table on the parent run, refreshed as trials finish (`hpsearch report` shows it too)."""
    records = calibration_records(study.get_trials(deepcopy=False))
    tracker.log_text(run_id, calibration_text(records), "calibration/calibration.txt")
    tracker.log_text(run_id, calibration_json(records), "calibration/calibration.json")


def _ui_hint(cfg: StudyConfig, workdir: Path, tracking_uri: str, tracker: Tracker) -> str:
    if cfg.tracking.uri is None:
        command = f"hpsearch ui --workdir {workdir}"
    else:
        command = f"mlflow ui --backend-store-uri {mask(tracking_uri)}"
    return f"\nMLflow UI: {command}\n  then open {tracker.runs_url()}"
