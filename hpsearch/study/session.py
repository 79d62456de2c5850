"""A study opened for running, whatever trains its trials: the Optuna study on its storage, its
MLflow parent run, the console, and the loop that runs trials until the study holds `n_trials`
finished ones (counted across restarts), retrying trials whose worker died or was interrupted.

`run_study` (hpsearch's method library) and `optimize` (the user's own training loop) differ only
in what a trial does; both open a Session and hand it their objective.
"""

from __future__ import annotations

import fcntl
import logging
import re
import warnings
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.evaluation import FINAL_METRIC_KEYS
from hpsearch.figures.publish import publish_report
from hpsearch.pruning.calibration import calibration_json, calibration_records, calibration_text
from hpsearch.pruning.rungs import PAUSED_ATTR
from hpsearch.study.console import Console, best, counts
from hpsearch.study.finalise import claim_finalisation, finalisation, is_worker, worker_id
from hpsearch.study.interrupt import Interrupted, StopRequest
from hpsearch.study.owner import OWNER_ATTR, is_this_process
from hpsearch.study.parent_run import study_parent_run
from hpsearch.study.pause import evict_over_budget, kept_paused_keys, thaw_if_due
from hpsearch.study.retry import fail_dead_here, finished_trials, replaced_numbers, requeue
from hpsearch.study.resilient_storage import ResilientRDBStorage
from hpsearch.study.shared_root import check_shared_root
from hpsearch.study.storage import connect, open_study
from hpsearch.study.surplus import SURPLUS_ATTR, Surplus, end_if_surplus
from hpsearch.study.stored_config import check_unchanged, config_yaml, store_config, without_secrets
from hpsearch.tracking.outage import TrackingUnavailable
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
    storage: ResilientRDBStorage
    stop: StopRequest = field(default_factory=StopRequest)
    surplus: set[int] = field(default_factory=set)  # numbers of the surplus trials this worker ended

    def finished(self) -> int:
        return len(finished_trials(self.study))

    def run(self, objective: Callable[[optuna.Trial], float], at_end: Callable[[], None] | None = None) -> None:
        """Run `objective` trial after trial until the study's trials are all taken (by this worker or
        others); then, in the one worker that ends the study, `at_end` (the test split, for instance),
        the report on the parent run and the final table. Raises Interrupted after SIGINT/SIGTERM,
        with this process's interrupted trial queued to continue on the next run."""
        try:
            self._run(objective, at_end)
        finally:
            # The returned study stays readable (the engine reconnects); a process that runs study
            # after study (a notebook, a sweep script) does not hold each one's idle connections
            # until the garbage collector frees its engine.
            self.storage.engine.dispose()

    def _run(self, objective: Callable[[optuna.Trial], float], at_end: Callable[[], None] | None) -> None:
        study, cfg = self.study, self.cfg
        before = finalisation(study)  # set already: this worker reopened a study that had ended
        self.console.line(f"worker {worker_id()} on study {cfg.name}: {self.finished()}/{cfg.n_trials} finished")
        ended = None  # how this worker ends the parent run, if it may
        try:
            with self.stop, _quiet_interrupts(self.stop, self.surplus):
                # A failing trial is recorded as FAIL and the study goes on; a retry queued meanwhile
                # (another worker died) keeps the loop going: Optuna takes queued trials first.
                while self._work_left():
                    study.optimize(self._with_a_place(objective), callbacks=[self._after_trial], catch=(Exception,))
            finished = self.finished()
            if not self._ended(finished):
                self.console.line(self._left_to_others(finished))
                return
            won, holder = claim_finalisation(study, finished)
            if not won and holder != before:
                self.console.line(f"worker {worker_id()}: study {cfg.name} holds its {cfg.n_trials} trials; "
                                  f"worker {holder['worker']} finalises it")
                return
            ended = "FINISHED"  # by the finaliser, or again by a worker that reopened an ended study
            if won:
                if at_end is not None:
                    at_end()
                # The report's plots and HTML page on the parent run (after the test figures, which it shows).
                publish_report(self.tracker, self.study_run_id, study, finished_trials(study), say=self.console.line)
            elif is_worker():  # `hpsearch run` shows an ended study's table again; a worker only says so
                self.console.line(f"worker {worker_id()}: study {cfg.name} had ended already "
                                  f"(finalised by worker {holder['worker']})")
                return
        except (Interrupted, TrackingUnavailable):  # stopped resumably: the trial continues on the next run
            ended = "KILLED"
            _requeue_interrupted(study, cfg)
            raise
        except BaseException:
            ended = "FAILED"
            raise
        finally:
            # A worker that stops while others still train leaves the parent run to them.
            if ended == "FINISHED" or (ended is not None and not self._running_elsewhere()):
                with suppress(TrackingUnavailable):  # MLflow gone: the run stays open, the study resumable
                    self.tracker.end_study_run(self.study_run_id, ended)
        self.console.summary(study, _ui_hint(cfg, self.workdir, self.tracking_uri, self.tracker))

    def _with_a_place(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        """`objective`, for trials that have a place among the study's `n_trials` (hpsearch.study.surplus)."""
        def trial_with_a_place(trial: optuna.Trial) -> float:
            try:
                end_if_surplus(trial, self.cfg.n_trials)
            except Surplus:
                self.surplus.add(trial.number)  # Optuna's warning about it is dropped
                raise
            return objective(trial)
        return trial_with_a_place

    def _work_left(self) -> bool:
        """Whether this worker should take another trial: a retry waits, or the study's finished and
        running trials fall short of the total. Dead workers' trials are failed and their retries
        queued first: this host's at once, other hosts' after the heartbeat's grace period."""
        optuna.storages.fail_stale_trials(self.study)
        self.retry_dead_here()
        thaw_if_due(self.study, self.cfg, self.console.line)  # a free worker may continue a paused trial instead
        pending = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        if any(t.state == TrialState.WAITING for t in pending):
            return True
        running = [t for t in pending if not t.user_attrs.get(SURPLUS_ATTR)]
        return self.finished() + len(running) < self.cfg.n_trials

    def _ended(self, finished: int) -> bool:
        """The study holds its total and no trial runs or waits anywhere."""
        return finished >= self.cfg.n_trials and not self.study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))

    def _running_elsewhere(self) -> bool:
        """Whether another worker still runs a trial of the study (when the storage cannot tell,
        no: the parent run ends with this worker, as it would alone)."""
        if self.storage.lost:  # asking would only raise StorageLost again
            return False
        try:
            return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        except Exception:
            return False

    def _left_to_others(self, finished: int) -> str:
        """What a worker that stops before the study ended says."""
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = len(trials) - running
        text = f"worker {worker_id()}: done, study {self.cfg.name} holds {finished}/{self.cfg.n_trials} finished"
        if running:
            text += f"; {running} trial(s) still running on other workers, the last of which finalises the study"
        if waiting:
            text += f"; {waiting} trial(s) wait to be continued: run a worker again"
        return text

    def retry_dead_here(self) -> list:
        """Fail and retry the RUNNING trials whose process died on this host (see retry.fail_dead_here)."""
        dead = fail_dead_here(self.study, self.on_stale)
        for trial in dead:
            owner = trial.user_attrs.get(OWNER_ATTR, {})
            self.console.line(f"trial {trial.number}: its process {owner.get('pid')} died on this host; "
                              "it continues from its last checkpoint")
        return dead

    def _after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if not trial.user_attrs.get(SURPLUS_ATTR):  # a surplus trial is not counted nor shown
            self._record_finished(study, trial)
        # Between trials, not only at the end: a trial whose worker died on this host is retried now,
        # and this worker takes the retry next. Counted over the whole study, so that the workers stop
        # once every trial is taken; a queued retry still runs, so that no configuration is left behind.
        if not self._work_left():
            study.stop()

    def _record_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = counts(study)
        metrics = {"trials_complete": n["COMPLETE"], "trials_pruned": n["PRUNED"], "trials_failed": n["FAIL"]}
        top = best(study)
        if top is not None:
            metrics[f"best_{FINAL_METRIC_KEYS[self.cfg.evaluation.final_metric]}"] = top.value
        self.tracker.log_metrics(self.study_run_id, metrics, step=sum(n.values()))
        if trial.state == TrialState.COMPLETE:
            _log_calibration(self.tracker, self.study_run_id, study)
        if PAUSED_ATTR in trial.user_attrs:
            evict_over_budget(study, self.checkpoint_root, self.cfg.recovery.paused_checkpoints_gb, self.tracker,
                              self.console.line)
        _prune_checkpoints(study, self.checkpoint_root, self.cfg.recovery.keep_best)
        self.console.trial_finished(study, trial)


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
    check_shared_root(study, checkpoint_root)  # before any run is opened: retries read each other's checkpoints
    # Workers starting together on one machine race to create a SQLite MLflow backend, so that
    # happens under a lock in the work dir. The parent run needs more than a local lock (workers on
    # other machines share the study): it is elected on the Optuna storage.
    with _locked(workdir / ".hpsearch.lock") if tracking_uri.startswith("sqlite:") else nullcontext():
        tracker = Tracker(tracking_uri, cfg.tracking.experiment or cfg.name, workdir / "mlartifacts",
                          retry_seconds=cfg.tracking.retry_seconds)
    study_run_id = study_parent_run(study, tracker, cfg.name)
    if text is not None:
        tracker.log_text(study_run_id, without_secrets(text, cfg), f"study/{Path(label).name}")
    tracker.log_text(study_run_id, config_yaml(study), "study/resolved_config.yaml")
    optuna.storages.fail_stale_trials(study)  # queue retries of dead trials before counting
    session = Session(cfg, study, tracker, study_run_id, checkpoint_root, console or Console(cfg.n_trials, cfg.training.epochs),
                      workdir, tracking_uri, on_stale, storage)
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
def _quiet_interrupts(stop: StopRequest, surplus: set[int]):
    """Optuna logs a trial stopped by SIGINT/SIGTERM as failed, with a traceback; hpsearch says what
    happened in one line instead, so Optuna's records are dropped once a stop was requested
    (until then its warnings show as usual). A surplus trial's failure is bookkeeping: dropped too."""
    def keep(record) -> bool:
        if stop.requested or (record.exc_info and isinstance(record.exc_info[1], (Interrupted, Surplus))):
            return False
        about = re.match(r"Trial (\d+) failed", record.getMessage())
        return not (about and int(about[1]) in surplus)

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
    """Bound disk use: finished trials keep their checkpoints only when among the best `keep_best`
    or paused (those are bounded by their own budget: hpsearch.study.pause).
    A failed trial that may still be retried (interrupted, or its worker died) keeps its own, even
    when its retry is not queued yet: another worker may be about to queue it."""
    finished = finished_trials(study)
    complete = sorted((t for t in finished if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    keep = {t.user_attrs.get("checkpoint_key") for t in complete[:keep_best]}
    keep |= {t.user_attrs.get("checkpoint_key") for t in finished  # finished: retried ones are left out
             if t.state == TrialState.FAIL and (t.user_attrs.get("interrupted") or "reason" not in t.user_attrs)}
    keep |= kept_paused_keys(study)  # a thaw continues from them (hpsearch.study.pause)
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
