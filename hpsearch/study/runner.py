"""The study runner of hpsearch's method library: validate the study file, load its data, and run
its trials (hpsearch.study.trial) in a Session until the study holds `n_trials` finished trials;
then measure the chosen ones on the test split. `resume_study` continues one by name."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import optuna

from hpsearch.config.schema import StudyConfig
from hpsearch.data import load_splits
from hpsearch.evaluation import FINAL_METRIC_KEYS, Evaluator
from hpsearch.study.console import Console
from hpsearch.study.on_test import measure_on_test
from hpsearch.study.session import checkpoint_root_of, open_session
from hpsearch.study.status import storage_location
from hpsearch.study.stored_config import method_study_config
from hpsearch.study.studyfile import StudyFileError, load_study
from hpsearch.study.trial import TrialContext, run_trial
from hpsearch.tracking.urls import mask
from hpsearch.training.distributed import check_devices
from hpsearch.training.pretrain import Pretraining, resolve_device

__all__ = ["checkpoint_root_of", "locate_study", "resume_study", "run_study"]


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
    if cfg.evaluation.primary_proxy != "knn_accuracy":
        raise StudyFileError(f"{label}: evaluation.proxy: hpsearch's methods report 'knn' (knn_accuracy), got "
                             f"{cfg.evaluation.proxy!r}; a metric of your own is for a loop of your own (hpsearch.optimize)")
    try:
        splits = load_splits(cfg.data)
    except (ValueError, OSError) as err:
        raise StudyFileError(f"{label}: {err}") from None
    device = resolve_device(cfg.training.device)
    try:  # too few GPUs for training.devices: say so once, before the study starts
        check_devices(device, cfg.training.devices)
    except ValueError as err:
        raise StudyFileError(f"{label}: {err}") from None
    splits = splits.to(device)
    session = open_session(cfg, text, label, device, force=force, console=console)
    study = session.study
    _measure_baseline(study, cfg, splits, device, session.tracker, session.study_run_id, session.console)
    gc.collect()  # the untrained encoder is held by a cycle until a full collection: free it before trial 0
    ctx = TrialContext(cfg, splits, device, session.tracker, session.study_run_id, session.checkpoint_root,
                       session.stop, session.console.epoch, session.console.line,
                       random_init_knn=study.user_attrs["random_init_knn"])

    def on_test() -> None:
        if cfg.evaluation.test_top_k:
            session.console.line(f"measuring the best {cfg.evaluation.test_top_k} trial(s) on the test split "
                                 f"({len(splits.test_labels)} images, read for nothing else):")
            measure_on_test(study, cfg, splits, device, session.checkpoint_root, cfg.evaluation.test_top_k,
                            tracker=session.tracker, study_run_id=session.study_run_id, say=session.console.line)

    session.run(lambda trial: run_trial(trial, ctx), at_end=on_test)
    return study


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


def locate_study(name: str, *, storage: str | None = None, workdir: str | None = None):
    """(storage URL, StudySummary) of study `name`, in `storage` or the work dir's SQLite file."""
    url = storage_location(storage, workdir)
    summaries = optuna.get_all_study_summaries(storage=url, include_best_trial=False)
    match = next((s for s in summaries if s.study_name == name), None)
    if match is None:
        known = ", ".join(s.study_name for s in summaries) or "none"
        raise StudyFileError(f"{mask(url)}: no study named {name!r} (studies there: {known})")
    return url, match


def resume_study(name: str, *, storage: str | None = None, workdir: str | None = None, **overrides: Any) -> optuna.Study:
    """Continue study `name` from the config stored with it (no study file needed)."""
    url, _ = locate_study(name, storage=storage, workdir=workdir)
    study = optuna.load_study(study_name=name, storage=url)
    stored = method_study_config(study, "cannot resume it from a stored config")
    if "***" in (stored["tracking"]["uri"] or "") and overrides.get("tracking_uri") is None:
        raise StudyFileError(f"study {name!r} tracks to {stored['tracking']['uri']}: pass --tracking-uri "
                             "with its password (passwords are never stored)")
    return run_study(stored, storage=storage, workdir=workdir or stored["workdir"], **overrides)
