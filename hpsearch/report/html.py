"""`hpsearch report NAME --html FILE`: the report with its plots, as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpsearch.report.sources import report_summary


def write_html(study: optuna.Study, path: str | Path, *, workdir: str | None = None) -> Path:
    # Here, not at the top: matplotlib loads only when a page is asked for.
    from hpsearch.figures.page import html_page
    from hpsearch.figures.plots import draw_all

    summary = report_summary(study, workdir)
    target = Path(path)
    target.write_text(html_page(summary, draw_all(study, summary)), encoding="utf-8")
    return target
