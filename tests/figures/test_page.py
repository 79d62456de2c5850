"""The HTML page: one self-contained file holding the report's facts and its plots."""

import re

from optuna.trial import TrialState

from hpsearch.figures.page import html_page
from hpsearch.figures.plots import draw_all
from hpsearch.figures.summary import summarise
from hpsearch.study.retry import finished_trials
from tests.figures.trials import EPOCHS, add


def page_of(study) -> str:
    summary = summarise(study, finished_trials(study))
    return html_page(summary, draw_all(study, summary))


def test_the_page_embeds_its_plots_and_loads_nothing(study):
    for lr, value in [(0.05, 0.6), (0.2, 0.8), (0.5, 0.7)]:
        add(study, TrialState.COMPLETE, value=value, epochs=EPOCHS, lr=lr, curve={1: value - 0.2})
    page = page_of(study)
    assert len(re.findall(r"<img [^>]*src='data:image/png;base64,", page)) == 4
    # Nothing to fetch: no src or href points anywhere, and no script or stylesheet link.
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page)
    assert "<script" not in page and "<link" not in page


def test_text_from_the_study_is_escaped(study):
    add(study, TrialState.FAIL, epochs=0, reason="ValueError: <img src=x> & co")
    page = page_of(study)
    assert "ValueError: &lt;img src=x&gt; &amp; co" in page and "<img src=x>" not in page


def test_an_empty_study_gives_a_page_of_notes(study):
    page = page_of(study)
    assert "no finished trial yet" in page and "data:image/png" not in page
    assert "not drawn, no complete trial yet" in page
