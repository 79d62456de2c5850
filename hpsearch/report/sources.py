"""Where a report reads a stored study's facts from: its Optuna trials and, for per-class accuracy,
its MLflow store, found from the config kept with the study. A report only reads: a missing SQLite
file is not created, and an unreachable server is given one short try."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.config.study_attrs import study_config
from hpsearch.figures.summary import Summary, summarise
from hpsearch.study.prior import PRIOR_ATTR, prior_line
from hpsearch.study.retry import finished_trials
from hpsearch.tracking.tracker import RunReader
from hpsearch.tracking.urls import mask


def tracking_uri_of(stored: dict, workdir: str | None) -> str:
    """The study's MLflow URI: `tracking.uri` of its stored config, else the work dir's SQLite file
    (`workdir` when given, as the study was run with --workdir, else the stored one)."""
    root = Path(workdir or stored["workdir"]).resolve()
    return stored["tracking"]["uri"] or f"sqlite:///{root / 'mlflow.db'}"


def report_summary(study: optuna.Study, workdir: str | None = None) -> Summary:
    reader, unreachable = _reader(study, workdir)
    summary = summarise(study, finished_trials(study), reader=reader, unreachable=unreachable)
    # Which calibration the pruner rests on: a prior (pruning.args.prior) until the study's own take over.
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    line = prior_line(study.user_attrs.get(PRIOR_ATTR), len(complete))
    return replace(summary, calibration=f"{line}\n{summary.calibration}") if line else summary


def _reader(study: optuna.Study, workdir: str | None) -> tuple[RunReader | None, str | None]:
    stored = study_config(study)
    if stored is None:
        return None, "not an hpsearch study: no MLflow store to read per-class accuracy from"
    uri = tracking_uri_of(stored, workdir)
    if "***" in uri:  # passwords are never stored
        return None, f"MLflow {uri} needs its password, which is not stored; per-class accuracy not shown"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None, f"MLflow {mask(uri)}: no such file; per-class accuracy not shown (pass --workdir?)"
    # A tracking server that is down would be retried for minutes by default: a report gives it one try.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        return RunReader.at(uri), None
    except Exception as err:
        return None, f"MLflow {mask(uri)} unreachable ({type(err).__name__}); per-class accuracy not shown"
