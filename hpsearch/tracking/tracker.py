"""MLflow tracking: one experiment per study, one parent run per study, one child run per trial.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), and
each epoch's metrics are written in one `log_batch` call: single `log_metric` calls cost ~20 ms
each on a SQLite backend.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from hpsearch.tracking.metric_writer import MetricWriter

# Optuna state -> MLflow run status, so the runs table says what happened to each trial.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "INTERRUPTED": "KILLED"}

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit for params (and tags) in one log_batch
MAX_PARAM_CHARS = 6000


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; the same dotted paths the search space and --set use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class Tracker:
    """The study's MLflow experiment; creates the backend (once, before any trial) on construction."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path):
        from mlflow.tracking import MlflowClient  # lazy: importing mlflow costs over a second

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                experiment_name, artifact_location=(artifact_root / experiment_name).resolve().as_uri()
            )
        else:
            self.experiment_id = experiment.experiment_id

    def study_run(self, study_name: str, run_id: str | None) -> str:
        """The study's parent run: `run_id` when it still exists (the study is continued), else a new one."""
        if run_id is not None:
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # deleted, or another backend than the one that made it
                pass
        run = self.client.create_run(self.experiment_id, run_name=study_name,
                                     tags={"hpsearch.study": study_name, "hpsearch.role": "study"})
        return run.info.run_id

    def trial_run(self, parent_run_id: str, trial_number: int, params: dict[str, Any], searched: list[str]) -> "TrialRun":
        tags = {
            "mlflow.parentRunId": parent_run_id,
            "hpsearch.trial": str(trial_number),
            "hpsearch.searched": ",".join(searched),
            "optuna.state": "RUNNING",
        }
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number}", tags=tags)
        trial_run = TrialRun(self.client, run.info.run_id)
        trial_run.log_params({"trial_number": trial_number, **params})
        return trial_run

    def continue_trial_run(self, run_id: str, trial_number: int) -> "TrialRun":
        """Reopen the run of a trial that a retry continues: later steps append to its history."""
        from mlflow.entities import RunTag

        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[RunTag("optuna.state", "RUNNING"),
                                            RunTag("hpsearch.continued_by_trial", str(trial_number))])
        return TrialRun(self.client, run_id)

    def trial_run_by_id(self, run_id: str) -> "TrialRun":
        return TrialRun(self.client, run_id)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        log_metrics(self.client, run_id, metrics, step)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        self.client.log_text(run_id, text, name)

    def log_bytes(self, run_id: str, data: bytes, name: str) -> None:
        """`data` as the run's artifact `name` ("report/history.png"): MLflow logs only files from
        disk (log_text and log_image cover text and arrays), so the bytes pass through a temporary file."""
        import tempfile

        folder, _, filename = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / filename).write_bytes(data)
            self.client.log_artifact(run_id, str(Path(tmp) / filename), artifact_path=folder or None)

    def end_study_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def runs_url(self, host: str = "http://127.0.0.1:5000") -> str:
        """The runs table with its parent/child tree (MLflow 3 opens experiments in a GenAI view)."""
        return f"{host}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"


class RunReader:
    """Reads runs by id and creates nothing: a report on a study that ended long ago must not write
    to its tracking store (a Tracker creates the experiment it is given)."""

    def __init__(self, client):
        self.client = client

    @classmethod
    def at(cls, tracking_uri: str) -> "RunReader":
        from mlflow.tracking import MlflowClient

        return cls(MlflowClient(tracking_uri))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric of the run."""
        return dict(self.client.get_run(run_id).data.metrics)


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
    from mlflow.entities import Metric

    stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])


class TrialRun:
    """The child run of one trial. Metrics go through a background MetricWriter: a locked or
    unreachable backend delays them but never stops training or loses them."""

    DRAIN_TIMEOUT_S = 300  # how long the end of a trial waits for MLflow to take its metrics

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.writer = MetricWriter(lambda metrics, step, stamp: log_metrics(client, run_id, metrics, step, stamp))

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.writer.put(metrics, step)

    def logged_steps(self, metric: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, metric)}

    def metrics_at(self, steps: set[int]) -> dict[int, dict[str, float]]:
        """{step: {metric: value}} of what the run holds at `steps` (the first value of a metric
        logged twice at one step)."""
        found: dict[int, dict[str, float]] = {}
        for name in self.client.get_run(self.run_id).data.metrics:
            for m in sorted(self.client.get_metric_history(self.run_id, name), key=lambda m: m.timestamp):
                if m.step in steps:
                    found.setdefault(m.step, {}).setdefault(name, m.value)
        return found

    def log_text(self, text: str, name: str) -> None:
        with_backoff(lambda: self.client.log_text(self.run_id, text, name))

    def finish(self, state: str, reason: str | None = None, pruned_epoch: int | None = None) -> None:
        """Write what is queued, tag the Optuna outcome and end the run with the matching status."""
        from mlflow.entities import RunTag

        unwritten = self.writer.close(self.DRAIN_TIMEOUT_S)
        if unwritten:
            warnings.warn(f"MLflow run {self.run_id}: {unwritten} metric batches could not be written")
        tags = {"optuna.state": state}
        if reason:
            tags["hpsearch.reason"] = reason[:MAX_PARAM_CHARS]
        if pruned_epoch is not None:
            tags["hpsearch.pruned_epoch"] = str(pruned_epoch)
        with_backoff(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        if not reason and "hpsearch.reason" in with_backoff(lambda: self.client.get_run(self.run_id)).data.tags:
            # A continued trial's run still says why it stopped the first time: no longer true.
            with_backoff(lambda: self.client.delete_tag(self.run_id, "hpsearch.reason"))
        with_backoff(lambda: self.client.set_terminated(self.run_id, status=RUN_STATUS[state]))


def with_backoff(action, attempts: int = 6, first_delay: float = 0.5):
    """Run `action`, retrying transient failures with exponential backoff (0.5 s, 1 s, 2 s, ...)."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(first_delay * 2**attempt)
