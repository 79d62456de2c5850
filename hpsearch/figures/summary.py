"""Every fact of a study's report in one value, for the terminal, the HTML page and MLflow alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config.study_attrs import study_config, test_results
from hpsearch.figures.classes import TOP, ClassTable, class_table
from hpsearch.figures.compute import Compute, budget_of, compute_of, epochs_trained
from hpsearch.figures.importance import Importances, importances_of
from hpsearch.pruning.calibration import calibration_records, calibration_text
from hpsearch.pruning.rungs import THAW_ATTR, evicted, state_label
from hpsearch.tracking.tracker import RunReader

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2}


@dataclass(frozen=True)
class Row:
    """One finished trial of the leaderboard."""

    number: int
    state: str
    label: str  # the state as shown: PAUSED apart from PRUNED, "(thawed)" on a continued pause (hpsearch.pruning.rungs)
    value: float | None  # the final metric on the validation split (complete trials only)
    test: float | None  # the final metric on the test split, when measured
    last_report: float | None  # the last value reported to the pruner (kNN for hpsearch studies)
    epochs: int | None
    budget: int | None
    params: dict[str, Any]
    reason: str  # why it stopped (a pruned or failed trial), and which trial it continued


@dataclass(frozen=True)
class Summary:
    name: str
    head: str  # trials by state and the best one, in one line
    metric: str  # what a trial's value is
    rows: list[Row]  # best first: complete by value, then pruned by epochs reached, then failed
    param_names: list[str]  # most important first, then by name
    importances: Importances
    compute: Compute
    classes: ClassTable
    calibration: str  # hpsearch.pruning.calibration's table, as text
    calibration_records: list[dict]
    running: list[int]  # trials still running (another worker, or a study in progress)


def summarise(study: optuna.Study, counted: list[FrozenTrial], *, reader: RunReader | None = None,
              unreachable: str | None = None) -> Summary:
    """`counted`: the finished trials that count toward n_trials (hpsearch.study.retry.finished_trials);
    `reader` reads the best trials' MLflow runs for per-class accuracy, or `unreachable` says why not."""
    trials = study.get_trials(deepcopy=False)
    stored = study_config(study) or {}
    epochs = stored.get("training", {}).get("epochs")
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    tested = test_results(study)
    importances = importances_of(study)
    gone = evicted(study)
    rows = sorted((_row(t, epochs, tested, gone) for t in counted), key=lambda r: _rank(r, sign))
    names = sorted({n for t in counted for n in t.params}, key=lambda n: (-importances.values.get(n, -1), n))
    complete = [r for r in rows if r.state == "COMPLETE"]
    by_number = {t.number: t for t in counted}
    records = calibration_records(trials)
    return Summary(
        name=study.study_name, head=_head(study, trials), metric=_metric(stored), rows=rows, param_names=names,
        importances=importances, compute=compute_of(study, counted, epochs),
        classes=class_table([by_number[r.number] for r in complete[:TOP]], reader, unreachable),
        calibration=calibration_text(records), calibration_records=records,
        running=[t.number for t in trials if t.state == TrialState.RUNNING])


def _head(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    states = {s.name: sum(t.state == s for t in trials) for s in TrialState}
    counts = ", ".join(f"{n} {name.lower()}" for name, n in states.items() if n)
    head = f"study {study.study_name!r}: {counts or 'no trials'}"
    if states["COMPLETE"]:
        head += f"; best trial {study.best_trial.number}: {study.best_value:.4f}"  # in the study's direction
    return head


def _metric(stored: dict) -> str:
    final = stored.get("evaluation", {}).get("final_metric")
    return f"{final} accuracy on the validation split" if final else "the trial's value"


def _row(trial: FrozenTrial, epochs: int | None, tested: dict, gone: frozenset[int]) -> Row:
    reason = trial.user_attrs.get("reason", "")
    if "retry_of" in trial.user_attrs:
        how = "thaws" if THAW_ATTR in trial.user_attrs else "continues"
        reason = f"{how} trial {trial.user_attrs['retry_of']}" + (f"; {reason}" if reason else "")
    steps = trial.intermediate_values
    budget = budget_of(trial, epochs)
    return Row(number=trial.number, state=trial.state.name, label=state_label(trial, gone),
               value=trial.value if trial.state == TrialState.COMPLETE else None,
               test=tested.get(str(trial.number), {}).get("value"),
               last_report=steps[max(steps)] if steps else None,
               epochs=epochs_trained(trial, budget), budget=budget, params=dict(trial.params), reason=reason)


def _rank(row: Row, sign: int) -> tuple:
    """Complete trials by value (in the study's direction), pruned ones by how far they got and how
    well they were doing then, failed ones last; ties by trial number."""
    last = row.last_report if row.last_report is not None else float("-inf") * sign
    if row.state == "COMPLETE":
        return (0, -sign * row.value, row.number)
    return (STATE_ORDER.get(row.state, 3), -(row.epochs or 0), -sign * last, row.number)
