"""MLflow tracking: one experiment per study, one parent run per study, one child run per trial.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), and
each epoch's metrics are written in one `log_batch` call: single `log_metric` calls cost ~20 ms
each on a SQLite backend. Every call is retried while the backend is away (outage.Outage), and
raises TrackingUnavailable once it has been away for `tracking.retry_seconds`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hpsearch.tracking.metric_writer import MetricWriter
from hpsearch.tracking.outage import Outage, use_http_client_defaults

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

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path, retry_seconds: float = 300):
        remote = tracking_uri.startswith(("http://", "https://"))
        if remote:
            use_http_client_defaults()  # before the client makes its first request
        from mlflow.tracking import MlflowClient  # lazy: importing mlflow costs over a second

        self.client = RetryingClient(MlflowClient(tracking_uri), Outage(tracking_uri, retry_seconds))
        self.tracking_uri = tracking_uri
        # A tracking server keeps artifacts where it was told to (`hpsearch server` proxies them):
        # a path on this machine would be wrong for the server and for every other worker.
        location = None if remote else (artifact_root / experiment_name).resolve().as_uri()
        self.experiment_id = _experiment(self.client, experiment_name, location)

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


def _experiment(client, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing. Workers starting together on a shared
    server race to create it: the loser reads the winner's back."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


class RetryingClient:
    """An MlflowClient whose every method call goes through the backend's Outage: retried while
    the backend is away, TrackingUnavailable once it has been away too long."""

    def __init__(self, client, outage: Outage):
        self.client, self.outage = client, outage

    def __getattr__(self, name: str):
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self.outage.call(lambda: attribute(*args, **kwargs))


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
    unreachable backend delays them but never stops training, and the end of the trial waits for
    them. `client` is a RetryingClient (the Tracker's)."""

    def __init__(self, client: RetryingClient, run_id: str):
        self.client, self.run_id = client, run_id
        # The writer retries through the shared Outage itself, with the plain client under it.
        self.writer = MetricWriter(lambda metrics, step, stamp: log_metrics(client.client, run_id, metrics, step, stamp),
                                   client.outage)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start:start + MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queued: returns at once. TrackingUnavailable when the backend has been away too long."""
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
        self.client.log_text(self.run_id, text, name)

    def finish(self, state: str, reason: str | None = None, pruned_epoch: int | None = None,
               paused_at: int | None = None) -> None:
        """Write what is queued, tag the Optuna outcome and end the run with the matching status
        (`paused_at`: a pause, which Optuna records PRUNED; the checkpoint stays for a thaw).
        TrackingUnavailable when the backend stays away: the run is left as it is."""
        self.writer.close()
        self.writer.raise_if_gave_up()  # what it still holds is in the trial's checkpoint
        tags = {"optuna.state": state}
        if reason:
            tags["hpsearch.reason"] = reason[:MAX_PARAM_CHARS]
        if pruned_epoch is not None:
            tags["hpsearch.pruned_epoch"] = str(pruned_epoch)
        if paused_at is not None:
            tags["hpsearch.paused_at"] = str(paused_at)
        self.set_tags(tags)
        # A continued trial's run still says why, and where, it stopped the first time: no longer true.
        held = self.client.get_run(self.run_id).data.tags
        for stale in ("hpsearch.reason", "hpsearch.paused_at"):
            if stale in held and stale not in tags:
                self.client.delete_tag(self.run_id, stale)
        self.client.set_terminated(self.run_id, status=RUN_STATUS[state])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
