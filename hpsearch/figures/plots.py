"""The report's plots as PNG bytes: hyperparameter importances, optimisation history, the reported
curves coloured by trial state, and the calibration table as a heatmap.

Drawn with matplotlib's object API on an Agg canvas, never pyplot: no global backend is switched
(a notebook that calls run_study keeps its own), nothing needs a display, and figures are freed
when dropped. A plot with nothing to show (no complete trial, no varying hyperparameter) is skipped
with a one-line note; any other failure to draw becomes a note too, never an exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from hpsearch.figures.summary import Summary

STATE_COLOURS = {"COMPLETE": "tab:green", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:gray"}
DPI = 100


@dataclass(frozen=True)
class Plot:
    name: str  # file stem: report/<name>.png
    title: str
    png: bytes | None  # None when skipped
    note: str | None = None  # why it was skipped


class NothingToPlot(Exception):
    """The study holds nothing this plot could show; the message says what is missing."""


def draw_all(study: optuna.Study, summary: Summary) -> list[Plot]:
    drawers = [("importances", "Hyperparameter importances", lambda: _importances(summary)),
               ("history", "Optimisation history", lambda: _history(study, summary.metric)),
               ("curves", "Reported proxy per epoch, by trial state", lambda: _curves(study)),
               ("calibration", "Calibration: Spearman rho of each proxy with the final metric",
                lambda: _calibration(summary.calibration_records))]
    plots = []
    for name, title, draw in drawers:
        try:
            plots.append(Plot(name, title, _png(draw())))
        except NothingToPlot as missing:
            plots.append(Plot(name, title, None, f"{title}: not drawn, {missing}"))
        except Exception as err:  # a report is still worth having without one of its plots
            plots.append(Plot(name, title, None, f"{title}: drawing failed ({type(err).__name__}: {err})"))
    return plots


def _figure(width: float = 6.4, height: float = 3.6) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _importances(summary: Summary) -> Figure:
    found = summary.importances
    if not found.values:
        raise NothingToPlot(found.note)
    names = list(found.values)[::-1]  # barh draws bottom-up: most important on top
    figure = _figure(height=1.2 + 0.4 * len(names))
    axes = figure.add_subplot()
    axes.barh(names, [found.values[n] for n in names], color="tab:blue")
    axes.set_xlabel("importance (share of the value's variance)")
    axes.set_title(f"fANOVA over {found.n_trials} complete trials", fontsize=9)
    return figure


def _history(study: optuna.Study, metric: str) -> Figure:
    complete = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    if not complete:
        raise NothingToPlot("no complete trial yet")
    numbers, values = [t.number for t in complete], np.array([t.value for t in complete])
    maximise = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = np.maximum.accumulate(values) if maximise else np.minimum.accumulate(values)
    axes = (figure := _figure()).add_subplot()
    axes.scatter(numbers, values, color="tab:blue", label="complete trial")
    axes.step(numbers, best, where="post", color="tab:red", label="best so far")
    axes.set_xlabel("trial")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("value")
    axes.set_title(metric, fontsize=9)
    axes.legend(loc="best", fontsize=8)
    return figure


def _curves(study: optuna.Study) -> Figure:
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise NothingToPlot("no trial reported a value yet")
    axes = (figure := _figure()).add_subplot()
    labelled = set()
    for trial in trials:
        steps = sorted(trial.intermediate_values)
        state = trial.state.name
        colour = STATE_COLOURS.get(state, "tab:gray")
        axes.plot(steps, [trial.intermediate_values[s] for s in steps], color=colour, alpha=0.7, marker=".",
                  label=None if state in labelled else state.lower())
        labelled.add(state)
        if trial.state == TrialState.PRUNED:  # where the pruner stopped it
            axes.plot(steps[-1], trial.intermediate_values[steps[-1]], "x", color=colour, markersize=8)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("value reported to the pruner (kNN accuracy)", fontsize=8)
    axes.legend(loc="best", fontsize=8)
    return figure


def _calibration(records: list[dict]) -> Figure:
    rows = [r for r in records if r["method"] == "all"]
    if not rows:
        raise NothingToPlot("no proxy has 3 complete trials to correlate yet")
    proxies, steps = sorted({r["proxy"] for r in rows}), sorted({r["step"] for r in rows})
    grid = np.full((len(proxies), len(steps)), np.nan)
    for r in rows:
        if r["rho"] is not None:
            grid[proxies.index(r["proxy"]), steps.index(r["step"])] = r["rho"]
    figure = _figure(width=max(4.0, 1.8 + 0.45 * len(steps)), height=1.2 + 0.35 * len(proxies))
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    axes.set_xticks(range(len(steps)), [str(s) for s in steps])
    axes.set_yticks(range(len(proxies)), proxies)
    axes.set_xlabel("epoch")
    if len(steps) <= 15:  # annotated cells stay legible up to about this many columns
        for (i, j), rho in np.ndenumerate(grid):
            if np.isfinite(rho):
                axes.text(j, i, f"{rho:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if abs(rho) > 0.6 else "black")  # legible on the dark ends of the scale
    figure.colorbar(image, ax=axes, label="Spearman rho")
    return figure
