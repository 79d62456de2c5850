"""The report on the study's MLflow parent run, when a study ends: `report/<plot>.png` and the
self-contained `report/report.html`. Drawing serves the person reading the results and must never
cost them the study, so any failure here becomes one warning line."""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import FrozenTrial

from hpsearch.tracking.tracker import RunReader, Tracker


def publish_report(tracker: Tracker, run_id: str, study: optuna.Study, counted: list[FrozenTrial],
                   say: Callable[[str], None] = print) -> None:
    """`counted`: the finished trials that count toward n_trials (hpsearch.study.retry.finished_trials)."""
    try:
        # Here, not at the top: matplotlib loads only when a study ends, not when the runner is imported.
        from hpsearch.figures.page import html_page
        from hpsearch.figures.plots import draw_all
        from hpsearch.figures.summary import summarise

        summary = summarise(study, counted, reader=RunReader(tracker.client))
        plots = draw_all(study, summary)
        for plot in plots:
            if plot.png is not None:
                tracker.log_bytes(run_id, plot.png, f"report/{plot.name}.png")
        tracker.log_text(run_id, html_page(summary, plots), "report/report.html")
    except Exception as err:
        say(f"warning: the study's report was not logged to MLflow ({type(err).__name__}: {err})")
