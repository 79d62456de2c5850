"""Logging the report to MLflow never fails a study: a failure becomes one warning line."""

import pytest
from optuna.trial import TrialState

from hpsearch.figures.publish import publish_report
from hpsearch.study.retry import finished_trials
from hpsearch.tracking.tracker import Tracker
from tests.figures.trials import EPOCHS, add


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One MLflow store for the module: creating one costs seconds."""
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", "s", root / "mlartifacts")


def test_a_run_that_cannot_take_the_report_gives_a_warning_line_not_an_error(study, tracker):
    add(study, TrialState.COMPLETE, value=0.8, epochs=EPOCHS, curve={1: 0.5})
    said = []
    publish_report(tracker, "no-such-run", study, finished_trials(study), say=said.append)
    assert len(said) == 1 and said[0].startswith("warning: the study's report was not logged to MLflow")


def test_the_report_lands_on_the_run_as_pngs_and_one_page(study, tracker, tmp_path):
    add(study, TrialState.COMPLETE, value=0.8, epochs=EPOCHS, curve={1: 0.5})
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    said = []
    publish_report(tracker, run_id, study, finished_trials(study), say=said.append)
    logged = {a.path for a in tracker.client.list_artifacts(run_id, "report")}
    # One complete trial: its history and curve are drawn, importances and calibration are notes in the page.
    assert logged == {"report/history.png", "report/curves.png", "report/report.html"} and said == []
    (tmp_path / "got").mkdir()
    page = open(tracker.client.download_artifacts(run_id, "report/report.html", str(tmp_path / "got"))).read()
    assert "needs 2 complete trials" in page
