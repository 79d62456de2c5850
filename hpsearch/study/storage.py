"""Opening the Optuna study: RDB storage with heartbeats, the seeded sampler, the pruner."""

from __future__ import annotations

import time
from typing import Callable

import optuna

from hpsearch.config.schema import StudyConfig
from hpsearch.evaluation import FINAL_METRIC_KEYS
from hpsearch.pruning.pruners import build_pruner
from hpsearch.study.prior import PRIOR_ATTR, prior_record, resolve_prior
from hpsearch.study.resilient_storage import ResilientRDBStorage, StorageLost
from hpsearch.tracking.urls import mask

__all__ = ["StorageError", "StorageLost", "connect", "open_study"]


class StorageError(Exception):
    """The Optuna storage cannot be reached when the study opens; the message names the URL with the
    password masked. (Lost later, during the study, it is StorageLost: resumable, not bad input.)"""


def connect(cfg: StudyConfig, url: str, on_stale: Callable | None = None, attempts: int = 4) -> optuna.storages.RDBStorage:
    """RDB storage with a heartbeat, so a trial whose worker died is noticed (and `on_stale` called)
    instead of staying RUNNING forever. Transient connection errors are retried with backoff: here,
    a few times (StorageError: nothing has started yet); once connected, for up to
    `recovery.storage_retry_seconds` per outage (StorageLost, see resilient_storage)."""
    engine_kwargs = _engine_kwargs(url)
    for attempt in range(attempts):
        try:
            return ResilientRDBStorage(
                url, retry_seconds=cfg.recovery.storage_retry_seconds, engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.recovery.heartbeat_interval, grace_period=cfg.recovery.grace_period,
                heartbeat_stale_trial_callback=on_stale,
            )
        except ImportError as err:
            raise StorageError(f"storage {mask(url)}: {err}") from None
        except Exception as err:
            if attempt == attempts - 1:
                reason = str(err).splitlines()[0][:300].replace(url, mask(url))
                raise StorageError(f"storage {mask(url)}: cannot connect ({type(err).__name__}: {reason})") from None
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


LIBPQ_DRIVERS = ("postgresql", "postgresql+psycopg", "postgresql+psycopg2")  # those that take connect_timeout


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # Wait for a lock instead of failing at once when several workers share the file (a lock is
        # contention, not a lost connection: it is not retried as an outage).
        return {"connect_args": {"timeout": 60}}
    kwargs: dict = {"pool_pre_ping": True}  # a pooled connection the server dropped is replaced, not used
    if url.split("://")[0] in LIBPQ_DRIVERS and "connect_timeout" not in url:
        # A host that does not answer (rather than refuse) would hold each retry for the OS's TCP timeout.
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def open_study(cfg: StudyConfig, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create or load the study by name, with the sampler and pruner the study file names."""
    study = optuna.create_study(study_name=cfg.name, storage=storage, direction="maximize", load_if_exists=True)
    # Name the objective after the metric MLflow logs it as, so optuna-dashboard and
    # `optuna trials` do not say "Objective 0"; set on every open, so studies created before
    # this (and a study file that changed its final metric, with --force) are named too.
    metric = FINAL_METRIC_KEYS[cfg.evaluation.final_metric]
    if study.metric_names != [metric]:
        study.set_metric_names([metric])
    # Offset the sampler's seed by the trials already there: a continued study must not replay
    # the random start-up proposals of its first run.
    seed = cfg.seed + len(study.trials)
    if cfg.sampler.name == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.sampler.n_startup_trials,
                                             multivariate=True, group=True, constant_liar=True)
    args, source = resolve_prior(cfg.pruning.args)
    pruner = build_pruner(cfg.pruning.name, args)
    prior = prior_record(pruner, source)
    if prior != study.user_attrs.get(PRIOR_ATTR):  # what `hpsearch report` says the calibration rests on
        study.set_user_attr(PRIOR_ATTR, prior)
    return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner)
