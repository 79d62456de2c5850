"""The study runner: validate, then create or continue the Optuna study and its MLflow record, and
run trials until the study holds `n_trials` finished trials (counted across restarts)."""

from __future__ import annotations

import fcntl
import gc
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.evaluation import FINAL_METRIC_KEYS, Evaluator
from hpsearch.pruning.calibration import calibration_json, calibration_records, calibration_text
from hpsearch.study.console import Console, best, counts
from hpsearch.study.interrupt import Interrupted, StopRequest
from hpsearch.study.on_test import measure_on_test
from hpsearch.study.owner import OWNER_ATTR, is_this_process
from hpsearch.study.retry import fail_dead_here, finished_trials, replaced_numbers, requeue
from hpsearch.study.storage import connect, open_study
from hpsearch.study.stored_config import check_unchanged, config_yaml, store_config, without_secrets
from hpsearch.study.studyfile import StudyFileError, load_study
from hpsearch.study.trial import TrialContext, run_trial
from hpsearch.tracking.tracker import Tracker
from hpsearch.tracking.urls import mask
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Pretraining, resolve_device


def run_study(source: str | Path | dict | StudyConfig, *, sets: list[str] | dict | None = None,
              force: bool = False, console: Console | None = None, **overrides: Any) -> optuna.Study:
    """Run (or continue) the study a study file describes; returns the `optuna.Study`.

    `overrides` are the command-line shorthands: n_trials, storage, tracking_uri, workdir, seed;
    `sets` are dotted-path overrides ("training.epochs=5" strings or a {path: value} dict).
    Raises StudyFileError (nothing created) when the study file or an override is invalid,
    ConfigChanged when it would change the search of an existing study (unless `force`),
    StorageError when the storage cannot be reached, and Interrupted after SIGINT/SIGTERM.
    """
    cfg, text = load_study(source, sets, **overrides)
    label = str(source) if isinstance(source, (str, Path)) else "<config>"
    try:
        splits = load_splits(cfg.data)
    except (ValueError, OSError) as err:
        raise StudyFileError(f"{label}: {err}") from None
    device = resolve_device(cfg.training.device)
    splits = splits.to(device)
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
        tracker.log_text(study_run_id, without_secrets(text, cfg), f"study/{Path(str(source)).name}")
    tracker.log_text(study_run_id, config_yaml(study), "study/resolved_config.yaml")
    optuna.storages.fail_stale_trials(study)  # queue retries of dead trials before counting
    console = console or Console(cfg.n_trials, cfg.training.epochs)
    _retry_dead_here(study, on_stale, console)
    done = len(finished_trials(study))
    console.line(f"study {cfg.name!r}: {done}/{cfg.n_trials} trials finished, training on {device}")
    console.line(f"  optuna storage {mask(storage_url)}, MLflow {mask(tracking_uri)}")
    _measure_baseline(study, cfg, splits, device, tracker, study_run_id, console)
    gc.collect()  # the untrained encoder is held by a cycle until a full collection: free it before trial 0

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = counts(study)
        metrics = {"trials_complete": n["COMPLETE"], "trials_pruned": n["PRUNED"], "trials_failed": n["FAIL"]}
        top = best(study)
        if top is not None:
            metrics["best_linear_probe_accuracy"] = top.value
        tracker.log_metrics(study_run_id, metrics, step=sum(n.values()))
        if trial.state == TrialState.COMPLETE:
            _log_calibration(tracker, study_run_id, study)
        _prune_checkpoints(study, checkpoint_root, cfg.recovery.keep_best)
        console.trial_finished(study, trial)
        # Counted over the whole study, so several workers stop together; a queued retry still runs,
        # so that no started configuration is left behind.
        if sum(n.values()) >= cfg.n_trials and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()

    stop = StopRequest()
    ctx = TrialContext(cfg, splits, device, tracker, study_run_id, checkpoint_root, stop, console.epoch, console.line,
                       random_init_knn=study.user_attrs["random_init_knn"])
    status = "FAILED"
    try:
        with stop, _quiet_interrupts(stop):
            # Until the total is reached and no trial of a process that died on this host is left
            # RUNNING (its retry runs first: Optuna takes queued trials before sampling).
            while done < cfg.n_trials or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                study.optimize(lambda trial: run_trial(trial, ctx), callbacks=[after_trial],
                               catch=(Exception,))  # a failing trial is recorded as FAIL; the study goes on
                if not _retry_dead_here(study, on_stale, console):
                    break
                done = len(finished_trials(study))
        status = "FINISHED"
        if cfg.evaluation.test_top_k:
            console.line(f"measuring the best {cfg.evaluation.test_top_k} trial(s) on the test split "
                         f"({len(splits.test_labels)} images, read for nothing else):")
            measure_on_test(study, cfg, splits, device, checkpoint_root, cfg.evaluation.test_top_k, tracker=tracker,
                            study_run_id=study_run_id, say=console.line)
    except Interrupted:
        status = "KILLED"
        _requeue_interrupted(study, cfg)
        raise
    finally:
        tracker.end_study_run(study_run_id, status)
    console.summary(study, _ui_hint(cfg, workdir, tracking_uri, tracker))
    return study


def checkpoint_root_of(cfg: StudyConfig, workdir: Path) -> Path:
    """Where the study's trials keep their checkpoints: `recovery.checkpoint_dir` or the work dir's."""
    return Path(cfg.recovery.checkpoint_dir or workdir / "checkpoints").resolve() / cfg.name


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


def _retry_dead_here(study: optuna.Study, on_stale, console: Console) -> list:
    """Fail and retry the RUNNING trials whose process died on this host (see retry.fail_dead_here)."""
    dead = fail_dead_here(study, on_stale)
    for trial in dead:
        owner = trial.user_attrs.get(OWNER_ATTR, {})
        console.line(f"trial {trial.number}: its process {owner.get('pid')} died on this host; "
                     "it continues from its last checkpoint")
    return dead


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


def _measure_baseline(study, cfg, splits, device, tracker, study_run_id, console) -> None:
    """The random-init encoder's scores, measured once per study: the bar SSL has to clear."""
    if "random_init_linear_probe" not in study.user_attrs:
        untrained = Pretraining(cfg, splits, device, seed=cfg.seed)
        evaluator = Evaluator.of(untrained)
        backbone = untrained.method.backbone
        baseline = {**evaluator.proxies(untrained.method, epoch=0), "linear_probe_accuracy": evaluator.linear_probe(backbone)}
        if cfg.evaluation.final_metric != "linear_probe":  # the bar for the study's own metric too
            final = evaluator.final_metric(backbone)
            baseline[FINAL_METRIC_KEYS[final.name]] = final.accuracy
        study.set_user_attr("random_init_knn", baseline["knn_accuracy"])
        study.set_user_attr("random_init_linear_probe", baseline["linear_probe_accuracy"])
        tracker.log_metrics(study_run_id, {f"random_init_{k}": v for k, v in baseline.items()}, step=0)
    console.line(f"  random-init encoder: linear probe {study.user_attrs['random_init_linear_probe']:.4f}, "
                 f"kNN {study.user_attrs['random_init_knn']:.4f}")


def _ui_hint(cfg: StudyConfig, workdir: Path, tracking_uri: str, tracker: Tracker) -> str:
    if cfg.tracking.uri is None:
        command = f"hpsearch ui --workdir {workdir}"
    else:
        command = f"mlflow ui --backend-store-uri {mask(tracking_uri)}"
    return f"\nMLflow UI: {command}\n  then open {tracker.runs_url()}"


def locate_study(name: str, *, storage: str | None = None, workdir: str | None = None):
    """(storage URL, StudySummary) of study `name`, in `storage` or the work dir's SQLite file."""
    url = storage or f"sqlite:///{Path(workdir or StudyConfig.model_fields['workdir'].default).resolve() / 'optuna.db'}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StudyFileError(f"{mask(url)}: no Optuna storage here; pass --workdir or --storage")
    summaries = optuna.get_all_study_summaries(storage=url, include_best_trial=False)
    match = next((s for s in summaries if s.study_name == name), None)
    if match is None:
        known = ", ".join(s.study_name for s in summaries) or "none"
        raise StudyFileError(f"{mask(url)}: no study named {name!r} (studies there: {known})")
    return url, match


def resume_study(name: str, *, storage: str | None = None, workdir: str | None = None, **overrides: Any) -> optuna.Study:
    """Continue study `name` from the config stored with it (no study file needed)."""
    _, match = locate_study(name, storage=storage, workdir=workdir)
    stored = match.user_attrs.get("hpsearch_config")
    if stored is None:
        raise StudyFileError(f"study {name!r} was not created by hpsearch: run it with its study file instead")
    if "***" in (stored["tracking"]["uri"] or "") and overrides.get("tracking_uri") is None:
        raise StudyFileError(f"study {name!r} tracks to {stored['tracking']['uri']}: pass --tracking-uri "
                             "with its password (passwords are never stored)")
    return run_study(stored, storage=storage, workdir=workdir or stored["workdir"], **overrides)
