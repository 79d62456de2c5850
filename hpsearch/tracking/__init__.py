"""The MLflow side of a study, and the one place that imports mlflow (lazily): the parent and trial
runs, metrics buffered while the backend is away, and URLs shown with their passwords masked."""

from hpsearch.tracking.metric_writer import MetricWriter
from hpsearch.tracking.tracker import Tracker, TrialRun, flatten
from hpsearch.tracking.urls import mask

__all__ = ["MetricWriter", "Tracker", "TrialRun", "flatten", "mask"]
