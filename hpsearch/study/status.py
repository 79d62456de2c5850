"""What an Optuna storage holds right now, for `hpsearch status`: every study (hpsearch's or not), its
trials by state, its best value, the trials running (epoch, host) and those that are stale, i.e.
RUNNING but with nobody running them any more. Read-only: nothing here changes a trial."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.schema import StudyConfig
from hpsearch.study.owner import OWNER_ATTR, died_here
from hpsearch.study.retry import replaced_numbers
from hpsearch.study.storage import StorageError
from hpsearch.study.stored_config import stored_config
from hpsearch.study.studyfile import StudyFileError
from hpsearch.tracking.urls import mask


@dataclass(frozen=True)
class RunningTrial:
    number: int
    epoch: int | None  # epochs trained so far (user attr `epochs_trained`), None before the first
    epochs: int | None  # of how many: the trial's own `training.epochs` when searched, else the study's
    host: str | None  # from the user attr `worker`; None for a trial hpsearch did not start
    pid: int | None
    started: str | None  # ISO time with its UTC offset
    stale: str | None  # why nobody runs it any more, or None while it looks alive


@dataclass(frozen=True)
class StudyStatus:
    name: str
    directions: list[str]
    metric_names: list[str] | None
    hpsearch: bool  # created by hpsearch (it keeps its config with the study)
    counts: dict[str, int]  # every Optuna trial state -> how many trials are in it
    retried: int  # failed trials that a retry has taken over (hpsearch does not count them as finished)
    best_trial: int | None
    best_value: float | None
    running: list[RunningTrial] = field(default_factory=list)

    @property
    def stale(self) -> list[RunningTrial]:
        return [t for t in self.running if t.stale]


def storage_location(storage: str | None = None, workdir: str | None = None) -> str:
    """The Optuna storage URL of `--storage`, else the work dir's SQLite file; StudyFileError when
    that file does not exist (so that reading a storage never creates one)."""
    url = storage or f"sqlite:///{Path(workdir or StudyConfig.model_fields['workdir'].default).resolve() / 'optuna.db'}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StudyFileError(f"{mask(url)}: no Optuna storage here; pass --workdir or --storage")
    return url


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """A read-only view of the storage at `url` (tables are not created: a file that is not an Optuna
    storage is an error, not a new storage). StorageError names the URL, password masked."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat arguments
            return optuna.storages.RDBStorage(url, skip_table_creation=True, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period)
    except Exception as err:  # sqlalchemy's many connection errors, a missing driver, an old schema
        while err.__cause__ is not None:  # Optuna wraps the database's own error, which says what is wrong
            err = err.__cause__
        reason = (str(err).splitlines() or [""])[0][:300].replace(url, mask(url))
        raise StorageError(f"storage {mask(url)}: cannot read it ({type(err).__name__}: {reason})") from None


def storage_status(url: str) -> list[StudyStatus]:
    """Every study in the storage at `url`, by name."""
    storage = open_storage(url)
    beating: dict[tuple[int, int], optuna.storages.RDBStorage] = {}  # one view per heartbeat setting
    found = []
    for name in sorted(optuna.study.get_all_study_names(storage)):
        study = optuna.load_study(study_name=name, storage=storage)
        config = stored_config(study)
        found.append(_study_status(study, config, _heartbeat(url, study, config, beating)))
    return found


def _heartbeat(url: str, study: optuna.Study, config: dict | None, beating: dict) -> tuple[set[int], int | None]:
    """(ids of the RUNNING trials whose last heartbeat is older than the grace period, that period),
    for a study whose config says it beats; a study hpsearch did not create does not say, so only
    a dead owner on this host makes its trials stale."""
    recovery = (config or {}).get("recovery") or {}
    interval = recovery.get("heartbeat_interval")
    if not interval:
        return set(), None
    key = (interval, recovery.get("grace_period") or 2 * interval)  # Optuna's default grace period
    if key not in beating:
        beating[key] = open_storage(url, heartbeat_interval=key[0], grace_period=key[1])
    # Optuna's own test of a heartbeat's age, which only reads (fail_stale_trials would fail them).
    return set(beating[key]._get_stale_trial_ids(study._study_id)), key[1]


def _study_status(study: optuna.Study, config: dict | None, heartbeat: tuple[set[int], int | None]) -> StudyStatus:
    trials = study.get_trials(deepcopy=False)
    by_state = Counter(t.state for t in trials)
    # A multi-objective study has a Pareto front, not one best value.
    best = study.best_trial if len(study.directions) == 1 and by_state[TrialState.COMPLETE] else None
    epochs = ((config or {}).get("training") or {}).get("epochs")
    stale_ids, grace = heartbeat
    return StudyStatus(
        name=study.study_name, directions=[d.name.lower() for d in study.directions], metric_names=study.metric_names,
        hpsearch=config is not None, counts={s.name: by_state[s] for s in TrialState},
        retried=len(replaced_numbers(trials)),
        best_trial=None if best is None else best.number, best_value=None if best is None else best.value,
        running=[_running(t, epochs, grace if t._trial_id in stale_ids else None)
                 for t in trials if t.state == TrialState.RUNNING])


def _running(trial: FrozenTrial, study_epochs: int | None, silent_for: int | None) -> RunningTrial:
    """`silent_for`: the grace period its heartbeat has outlived, None while it beats (or never did)."""
    owner = trial.user_attrs.get(OWNER_ATTR)
    if died_here(owner):  # known at once, without waiting out the grace period
        stale = f"its process {owner['pid']} on this host has died"
    elif silent_for is not None:
        stale = f"no heartbeat for over {silent_for} s"
    else:
        stale = None
    return RunningTrial(
        number=trial.number, epoch=trial.user_attrs.get("epochs_trained"),
        epochs=trial.params.get("training.epochs", study_epochs), host=(owner or {}).get("host"),
        pid=(owner or {}).get("pid"), started=_iso(trial.datetime_start),
        stale=stale)


def _iso(when: datetime | None) -> str | None:
    # Optuna hands back local time without a zone (it stores UTC): say which zone.
    return None if when is None else when.astimezone().isoformat(timespec="seconds")


SHOWN_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")  # the rest is transient or absent


def status_text(url: str, studies: list[StudyStatus], location: str = "") -> str:
    """`location`: the options that name the storage (`--workdir DIR`), for the command that retries."""
    lines = [f"{mask(url)}: {len(studies)} stud{'y' if len(studies) == 1 else 'ies'}"]
    for study in studies:
        names = study.metric_names or [None] * len(study.directions)
        goal = ", ".join(f"{d} {m}" if m else d for d, m in zip(study.directions, names))
        lines += ["", f"{study.name} ({goal}{'' if study.hpsearch else '; not created by hpsearch'})"]
        counts = [f"{study.counts[s]} {'failed' if s == 'FAIL' else s.lower()}" for s in SHOWN_STATES]
        if study.retried:
            counts[2] += f" ({study.retried} retried)"
        lines.append("  trials: " + ", ".join(counts))
        lines.append(f"  best: {study.best_value:.4f} (trial {study.best_trial})" if study.best_trial is not None
                     else "  best: none yet")
        lines += [f"  running: {_describe(t)}" for t in study.running]
        if study.stale:
            numbers = ", ".join(str(t.number) for t in study.stale)
            them = "it" if len(study.stale) == 1 else "them"
            command = " ".join(["hpsearch resume", study.name, *([location] if location else [])])
            again = f"; `{command}` retries {them}" if study.hpsearch else ""
            lines.append(f"  stale: {len(study.stale)} (trial {numbers}){again}")
    return "\n".join(lines) + "\n"


def status_json(url: str, studies: list[StudyStatus]) -> str:
    return json.dumps({"storage": mask(url), "studies": [
        {**asdict(s), "stale": [t.number for t in s.stale]} for s in studies]}, indent=2) + "\n"


def _describe(trial: RunningTrial) -> str:
    epoch = f"epoch {trial.epoch or 0}" + (f"/{trial.epochs}" if trial.epochs else "")
    where = f"on {trial.host} (pid {trial.pid})" if trial.host else "owner unknown"
    since = f", since {trial.started}" if trial.started else ""
    return f"trial {trial.number}, {epoch}, {where}{since}" + (f"  STALE: {trial.stale}" if trial.stale else "")
