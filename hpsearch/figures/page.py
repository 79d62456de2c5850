"""The report as ONE self-contained HTML file: inline style, plots embedded as base64 PNG, no
script and no reference to load, so it opens offline, from an MLflow artifact or a mail."""

from __future__ import annotations

import base64
from html import escape

from hpsearch.figures.cells import accuracy, epochs, fmt, worst
from hpsearch.figures.plots import Plot
from hpsearch.figures.summary import Summary

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
div.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; } td.reason { text-align: left; min-width: 30em; }
tr.COMPLETE td:first-child { border-left: 4px solid #2ca02c; }
tr.PRUNED td:first-child { border-left: 4px solid #ff7f0e; }
tr.FAIL td:first-child { border-left: 4px solid #d62728; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
.note { color: #8a6d3b; }
"""


def html_page(summary: Summary, plots: list[Plot]) -> str:
    by_name = {p.name: p for p in plots}
    sections = [
        f"<h1>hpsearch report: {escape(summary.name)}</h1>",
        f"<p>{escape(summary.head)}</p>",
        *([f"<p class='note'>still running: trials {', '.join(map(str, summary.running))}</p>"]
          if summary.running else []),
        "<h2>Leaderboard</h2>", f"<p>value: {escape(summary.metric)}; test: the same metric on the test split, "
                                 "for the trials measured on it</p>", _leaderboard(summary),
        "<h2>Hyperparameter importances</h2>", _importances(summary), _plot(by_name["importances"]),
        "<h2>Optimisation history</h2>", _plot(by_name["history"]),
        "<h2>Reported curves</h2>", _plot(by_name["curves"]),
        "<h2>Compute spent and saved by pruning</h2>",
        "".join(f"<p>{escape(line)}</p>" for line in summary.compute.lines()),
        "<h2>Per-class accuracy of the best trials</h2>", _classes(summary),
        "<h2>Calibration</h2>", f"<pre>{escape(summary.calibration)}</pre>", _plot(by_name["calibration"]),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>hpsearch report: {escape(summary.name)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
           cell_classes: dict[int, str] | None = None) -> str:
    """`cell_classes`: column -> CSS class (text columns align left)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td class='{cell_classes[j]}'>{escape(c)}</td>" if j in (cell_classes or {})
                        else f"<td>{escape(c)}</td>" for j, c in enumerate(row))
        css = f" class='{row_classes[i]}'" if row_classes else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<div class='wide'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _leaderboard(summary: Summary) -> str:
    if not summary.rows:
        return "<p class='note'>no finished trial yet</p>"
    header = ["#", "state", "value", "test", "last report", "epochs", *summary.param_names, "reason"]
    rows = [[str(r.number), r.label, accuracy(r.value), accuracy(r.test), accuracy(r.last_report), epochs(r),
             *[fmt(r.params.get(n)) for n in summary.param_names], r.reason] for r in summary.rows]
    return _table(header, rows, [r.state for r in summary.rows], cell_classes={1: 'text', len(header) - 1: 'reason'})


def _importances(summary: Summary) -> str:
    found = summary.importances
    if not found.values:
        return f"<p class='note'>{escape(found.heading())}: none, {escape(found.note or '')}</p>"
    return f"<p>{escape(found.heading())}</p>" + _table(["hyperparameter", "importance"],
                                                       [[n, f"{v:.3f}"] for n, v in found.values.items()],
                                                       cell_classes={0: "text"})


def _classes(summary: Summary) -> str:
    table = summary.classes
    if not table.trials:
        return "<p class='note'>no complete trial yet</p>"
    header = ["class", *[f"trial {t.number}" for t in table.trials]]
    rows = [[name, *[accuracy(t.per_class.get(name)) for t in table.trials]] for name in table.class_names()]
    rows.append(["worst", *[worst(t.worst) for t in table.trials]])
    rows.append(["value", *[accuracy(t.value) for t in table.trials]])
    note = f"<p class='note'>{escape(table.note)}</p>" if table.note else ""
    return note + _table(header, rows, cell_classes={0: "text"})


def _plot(plot: Plot) -> str:
    if plot.png is None:
        return f"<p class='note'>{escape(plot.note or '')}</p>"
    data = base64.b64encode(plot.png).decode("ascii")
    return (f"<figure><img alt='{escape(plot.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{escape(plot.title)}</figcaption></figure>")
