"""`hpsearch report NAME`: what a study found. On the terminal (`study_report`): the leaderboard,
hyperparameter importances, compute spent and saved by pruning, per-class accuracy of the best
trials and the calibration table; the same with plots as one HTML file (`write_html`); and on
demand the best trials measured on the test split (`test_report`). The facts and plots come from
hpsearch.figures, which the runner also logs to the study's MLflow parent run."""

from hpsearch.report.html import write_html
from hpsearch.report.on_test import test_report
from hpsearch.report.text import study_report

__all__ = ["study_report", "test_report", "write_html"]
