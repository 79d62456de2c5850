"""Per-class and worst-class accuracy of the best trials. The worst class is kept with each Optuna
trial (user attr `worst_class`); the accuracy of every class lives only in the trial's MLflow run
(`class_accuracy/<class>`), so without MLflow the table keeps the worst class and says why the rest
is missing, in one line."""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.trial import FrozenTrial

from hpsearch.tracking.tracker import RunReader

CLASS_PREFIX = "class_accuracy/"
TOP = 3  # how many of the best trials the table compares


@dataclass(frozen=True)
class TrialClasses:
    number: int
    value: float
    worst: dict | None  # {"class": name, "accuracy": a}
    per_class: dict[str, float] = field(default_factory=dict)  # class -> accuracy; {} when unread


@dataclass(frozen=True)
class ClassTable:
    trials: list[TrialClasses]
    note: str | None = None  # why the per-class figures are missing

    def class_names(self) -> list[str]:
        names = {name for t in self.trials for name in t.per_class}
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))


def class_table(best: list[FrozenTrial], reader: RunReader | None, unreachable: str | None = None) -> ClassTable:
    """`best`: the trials to compare, best first. `reader` reads their MLflow runs; when it is None,
    `unreachable` says why. A run that cannot be read stops the reading, with its error as the note."""
    note = unreachable or (None if reader is not None else "MLflow not read; per-class accuracy not shown")
    rows = []
    for trial in best:
        per_class: dict[str, float] = {}
        run_id = trial.user_attrs.get("mlflow_run_id")
        if reader is not None and note is None and run_id is not None:
            try:
                metrics = reader.run_metrics(run_id)
                per_class = {n.removeprefix(CLASS_PREFIX): v for n, v in metrics.items() if n.startswith(CLASS_PREFIX)}
            except Exception as err:  # any failure of the store reads the same to a report: figures missing
                first = (str(err).splitlines() or [""])[0][:200]
                note = f"MLflow could not be read ({type(err).__name__}: {first}); per-class accuracy not shown"
        rows.append(TrialClasses(trial.number, trial.value, trial.user_attrs.get("worst_class"), per_class))
    return ClassTable(rows, note)
