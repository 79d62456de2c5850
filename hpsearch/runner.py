"""The study runner: validate, then create or continue the Optuna study and its MLflow record, and
run trials until the study holds `n_trials` finished trials (counted across restarts)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna

from hpsearch.console import FINISHED, Console, best, counts
from hpsearch.data import load_splits
from hpsearch.pretrain import Pretraining, resolve_device
from hpsearch.pruners import build_pruner
from hpsearch.schema import StudyConfig
from hpsearch.studyfile import StudyFileError, load_study
from hpsearch.tracking import Tracker
from hpsearch.trial import TrialContext, run_trial

# A trial whose process died stops sending heartbeats; after the grace period the next worker
# that starts marks it failed instead of leaving it RUNNING forever.
HEARTBEAT_INTERVAL_S = 60
HEARTBEAT_GRACE_S = 180


def run_study(source: str | Path | dict | StudyConfig, *, sets: list[str] | dict | None = None,
              console: Console | None = None, **overrides: Any) -> optuna.Study:
    """Run (or continue) the study a study file describes; returns the `optuna.Study`.

    `overrides` are the command-line shorthands: n_trials, storage, tracking_uri, workdir, seed;
    `sets` are dotted-path overrides ("training.epochs=5" strings or a {path: value} dict).
    Raises StudyFileError (nothing created) when the study file or an override is invalid.
    """
    cfg, text = load_study(source, sets, **overrides)
    try:
        splits = load_splits(cfg.data)
    except (ValueError, OSError) as err:
        raise StudyFileError(f"{source if not isinstance(source, (dict, StudyConfig)) else '<config>'}: data: {err}") from None
    device = resolve_device(cfg.training.device)
    splits = splits.to(device)

    workdir = Path(cfg.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    storage_url = cfg.storage or f"sqlite:///{workdir / 'optuna.db'}"
    tracking_uri = cfg.tracking.uri or f"sqlite:///{workdir / 'mlflow.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the console reports trials instead
    # Heartbeats and grouped multivariate TPE are marked experimental, but are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    study = _open_study(cfg, storage_url)
    tracker = Tracker(tracking_uri, cfg.tracking.experiment or cfg.name, workdir / "mlartifacts")
    study_run_id = tracker.study_run(cfg.name, study.user_attrs.get("mlflow_study_run_id"))
    study.set_user_attr("mlflow_study_run_id", study_run_id)
    if text is not None:
        tracker.log_text(study_run_id, text, f"study/{Path(str(source)).name}")
    tracker.log_text(study_run_id, _dump_yaml(cfg), "study/resolved_config.yaml")

    console = console or Console(cfg.n_trials, cfg.training.epochs)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    console.line(f"study {cfg.name!r}: {done}/{cfg.n_trials} trials finished, training on {device}")
    console.line(f"  optuna storage {_mask(storage_url)}, MLflow {_mask(tracking_uri)}")
    _measure_baseline(study, cfg, splits, device, tracker, study_run_id, console)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        n = counts(study)
        metrics = {"trials_complete": n["COMPLETE"], "trials_pruned": n["PRUNED"], "trials_failed": n["FAIL"]}
        top = best(study)
        if top is not None:
            metrics["best_linear_probe_accuracy"] = top.value
        tracker.log_metrics(study_run_id, metrics, step=sum(n.values()))
        console.trial_finished(study, trial)

    ctx = TrialContext(cfg, splits, device, tracker, study_run_id, console.epoch)
    status = "FAILED"
    try:
        if done < cfg.n_trials:
            study.optimize(
                lambda trial: run_trial(trial, ctx),
                n_trials=cfg.n_trials - done,
                # With several workers on one storage, stop once the study as a whole has enough.
                callbacks=[optuna.study.MaxTrialsCallback(cfg.n_trials, states=FINISHED), after_trial],
                catch=(Exception,),  # a failing trial is recorded as FAIL; the study goes on
            )
        status = "FINISHED"
    finally:
        tracker.end_study_run(study_run_id, status)
    console.summary(study, _ui_hint(cfg, workdir, tracking_uri, tracker))
    return study


def _open_study(cfg: StudyConfig, storage_url: str) -> optuna.Study:
    engine_kwargs = {"connect_args": {"timeout": 60}} if storage_url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(
        storage_url, engine_kwargs=engine_kwargs,
        heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=HEARTBEAT_GRACE_S,
    )
    study = optuna.create_study(study_name=cfg.name, storage=storage, direction="maximize", load_if_exists=True)
    # Offset the sampler's seed by the trials already there: a continued study must not replay
    # the random start-up proposals of its first run.
    seed = cfg.seed + len(study.trials)
    if cfg.sampler.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.sampler.n_startup_trials,
                                             multivariate=True, group=True, constant_liar=True)
    return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler,
                             pruner=build_pruner(cfg.pruning.name, cfg.pruning.args))


def _measure_baseline(study, cfg, splits, device, tracker, study_run_id, console) -> None:
    """The random-init encoder's scores, measured once per study: the bar SSL has to clear."""
    if "random_init_linear_probe" not in study.user_attrs:
        untrained = Pretraining(cfg, splits, device, seed=cfg.seed)
        study.set_user_attr("random_init_knn", untrained.knn_proxy())
        study.set_user_attr("random_init_linear_probe", untrained.linear_probe())
        tracker.log_metrics(study_run_id, {"random_init_knn_accuracy": study.user_attrs["random_init_knn"],
                                           "random_init_linear_probe_accuracy": study.user_attrs["random_init_linear_probe"]}, step=0)
    console.line(f"  random-init encoder: linear probe {study.user_attrs['random_init_linear_probe']:.4f}, "
                 f"kNN {study.user_attrs['random_init_knn']:.4f}")


def _dump_yaml(cfg: StudyConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _mask(url: str) -> str:
    """Hide a password in a database URL before it is printed."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _ui_hint(cfg: StudyConfig, workdir: Path, tracking_uri: str, tracker: Tracker) -> str:
    if cfg.tracking.uri is None:
        command = f"hpsearch ui --workdir {workdir}"
    else:
        command = f"mlflow ui --backend-store-uri {_mask(tracking_uri)}"
    return f"\nMLflow UI: {command}\n  then open {tracker.runs_url()}"
