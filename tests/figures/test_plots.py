"""The report's plots: drawn as PNG where the study has something to show, skipped with a one-line
note where it has not (no complete trial, one, no varying hyperparameter), never raising."""

import pytest
from optuna.trial import TrialState

from hpsearch.figures.plots import draw_all
from hpsearch.figures.summary import summarise
from hpsearch.study.retry import finished_trials
from tests.figures.trials import EPOCHS, add

PNG = b"\x89PNG\r\n\x1a\n"


def plots_of(study) -> dict:
    return {p.name: p for p in draw_all(study, summarise(study, finished_trials(study)))}


def assert_skipped(plot, why: str) -> None:
    assert plot.png is None and why in plot.note and "\n" not in plot.note


def test_an_empty_study_skips_every_plot_with_a_note(study):
    plots = plots_of(study)
    assert list(plots) == ["importances", "history", "curves", "calibration"]
    assert_skipped(plots["importances"], "needs 2 complete trials, the study has 0")
    assert_skipped(plots["history"], "no complete trial yet")
    assert_skipped(plots["curves"], "no trial reported a value yet")
    assert_skipped(plots["calibration"], "no proxy has 3 complete trials")


def test_one_complete_trial_draws_its_history_and_curve_but_no_importances(study):
    add(study, TrialState.COMPLETE, value=0.8, epochs=EPOCHS, curve={1: 0.5, 2: 0.6})
    plots = plots_of(study)
    assert plots["history"].png.startswith(PNG) and plots["curves"].png.startswith(PNG)
    assert_skipped(plots["importances"], "needs 2 complete trials, the study has 1")


@pytest.mark.parametrize("lrs", [(None, None, None), (0.1, 0.1, 0.1)], ids=["no params", "constant param"])
def test_no_varying_hyperparameter_skips_the_importances(study, lrs):
    for value, lr in zip((0.8, 0.7, 0.6), lrs):
        add(study, TrialState.COMPLETE, value=value, epochs=EPOCHS, lr=lr, curve={1: value - 0.1})
    plots = plots_of(study)
    assert_skipped(plots["importances"], "varies")
    assert plots["calibration"].png.startswith(PNG)  # 3 complete trials with a curve: a table to draw


def test_a_study_with_every_state_draws_all_four(study):
    for n, (lr, value) in enumerate([(0.05, 0.6), (0.2, 0.8), (0.5, 0.7)]):
        add(study, TrialState.COMPLETE, value=value, epochs=EPOCHS, lr=lr, curve={1: value - 0.2, 2: value - 0.1})
    add(study, TrialState.PRUNED, epochs=1, lr=0.9, curve={1: 0.1}, reason="median pruner")
    add(study, TrialState.FAIL, epochs=0, lr=0.3, reason="oom")
    plots = plots_of(study)
    assert all(p.png.startswith(PNG) and p.note is None for p in plots.values()), [p.note for p in plots.values()]
