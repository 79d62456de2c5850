"""The report on the terminal: plain fixed-width text, one section after another."""

from __future__ import annotations

import optuna

from hpsearch.figures.cells import accuracy, epochs, fmt, worst
from hpsearch.figures.summary import Summary
from hpsearch.report.sources import report_summary

KEY_PARAMS = 4  # leaderboard columns: the most important hyperparameters (all of them in --html)
REASON_CHARS = 90  # a calibrated pruner's reason runs to ~130 characters; --html keeps it whole
BAR = 30  # characters of the longest importance bar


def study_report(study: optuna.Study, *, workdir: str | None = None) -> str:
    """Every section of the report. `workdir`: where the study ran, when not where it was created
    (its MLflow SQLite file is found there)."""
    return render(report_summary(study, workdir))


def render(summary: Summary) -> str:
    blocks = [summary.head, _leaderboard(summary), _importances(summary), _compute(summary), _classes(summary),
              summary.calibration.rstrip("\n")]
    return "\n\n".join(blocks) + "\n"


def _leaderboard(summary: Summary) -> str:
    if not summary.rows:
        return "leaderboard: no finished trial yet"
    shown = summary.param_names[:KEY_PARAMS]
    header = ["#", "state", "value", "test", "last report", "epochs", *shown, "reason"]
    rows = [[str(r.number), r.label, accuracy(r.value), accuracy(r.test), accuracy(r.last_report), epochs(r),
             *[fmt(r.params.get(n)) for n in shown], _clip(r.reason)] for r in summary.rows]
    more = len(summary.param_names) - len(shown)
    lines = [f"leaderboard (best first; value: {summary.metric}; test: the same on the test split, where measured; "
             f"last report: the proxy the pruner judged)", *_table(header, rows)]
    if more:
        lines.append(f"  ({more} more hyperparameter(s) in --html)")
    if summary.running:
        lines.append(f"  still running: trials {', '.join(map(str, summary.running))}")
    return "\n".join(lines)


def _importances(summary: Summary) -> str:
    found = summary.importances
    if not found.values:
        return f"{found.heading()}: none, {found.note}"
    width = max(len(n) for n in found.values)
    top = max(found.values.values()) or 1.0
    lines = [f"{found.heading()}; few trials make them noisy" if found.n_trials < 10 else found.heading()]
    lines += [f"  {name.ljust(width)}  {value:5.3f}  {'#' * round(BAR * value / top)}"
              for name, value in found.values.items()]
    return "\n".join(lines)


def _compute(summary: Summary) -> str:
    return "\n".join(["compute, against running every finished trial to the end",
                      *[f"  {line}" for line in summary.compute.lines()]])


def _classes(summary: Summary) -> str:
    table = summary.classes
    if not table.trials:
        return "per-class accuracy: no complete trial yet"
    header = ["class", *[f"trial {t.number}" for t in table.trials]]
    rows = [[name, *[accuracy(t.per_class.get(name)) for t in table.trials]] for name in table.class_names()]
    rows.append(["worst", *[worst(t.worst) for t in table.trials]])
    lines = [f"per-class accuracy of the best {len(table.trials)} trial(s), validation split", *_table(header, rows)]
    if table.note:
        lines.append(f"  {table.note}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]


def _clip(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[:REASON_CHARS - 3] + "..."
