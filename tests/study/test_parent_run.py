"""One MLflow parent run per study, however many workers open it at once and wherever they run: the
workers of several machines share the Optuna storage (PostgreSQL) and an MLflow tracking server,
but no file lock, so the parent run is elected on the storage."""

import multiprocessing
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch.study.parent_run import study_parent_run
from hpsearch.tracking.server import server_command, server_env
from hpsearch.tracking.tracker import Tracker
from tests.helpers import needs_postgres, free_port, pg_storage, stop_group, tiny_study, wait_until_served

POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS = 6


postgres_only = needs_postgres(POSTGRES)


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on its own SQLite backend, as the workers of many machines share."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    # Two web workers, so that requests of the workers are served side by side; without the job
    # runner MLflow starts for its GenAI features, which a busy test machine takes minutes to start.
    with open(log, "w") as out:
        server = subprocess.Popen(server_command(f"sqlite:///{tmp_path / 'mlflow.db'}", "127.0.0.1", port, 2),
                                  env=server_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(f"{url}/health", server, timeout=300, output=log.read_text)
        yield url
    finally:
        stop_group(server)



def study_runs(client, experiment_id: str) -> list:
    """The experiment's parent runs that are not deleted."""
    return [r for r in client.search_runs([experiment_id]) if r.data.tags.get("hpsearch.role") == "study"]


def _elect(study_name: str, tracking_uri: str, artifact_root: str, barrier, results) -> None:
    """One worker: open the study and the tracker, wait for the others, then ask for the parent run."""
    study = optuna.load_study(study_name=study_name, storage=pg_storage())
    tracker = Tracker(tracking_uri, study_name, Path(artifact_root))
    barrier.wait(timeout=120)
    results.put(study_parent_run(study, tracker, study_name))


@postgres_only
def test_workers_starting_at_once_on_many_machines_agree_on_one_parent_run(tmp_path, mlflow_server, pg_study_name):
    study = optuna.create_study(study_name=pg_study_name, storage=pg_storage(), direction="maximize")
    # The experiment exists before the workers start: this test is about the parent run, and
    # Tracker's get-or-create of the experiment is a separate race.
    tracker = Tracker(mlflow_server, pg_study_name, tmp_path / "mlartifacts")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WORKERS), context.Queue()
    workers = [context.Process(target=_elect, args=(pg_study_name, mlflow_server, str(tmp_path / "mlartifacts"),
                                                    barrier, results))
               for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    run_ids = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    assert len(set(run_ids)) == 1, run_ids
    (parent,) = study_runs(tracker.client, tracker.experiment_id)
    assert parent.info.run_id == run_ids[0] == study.user_attrs["mlflow_study_run_id"]
    assert parent.info.status == "RUNNING"


def test_a_deleted_parent_run_is_replaced_and_a_live_one_reopened(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"  # claims hold on SQLite as on PostgreSQL
    study = optuna.create_study(study_name="stale", storage=storage)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stale", tmp_path / "mlartifacts")

    first = study_parent_run(study, tracker, "stale")
    tracker.end_study_run(first, "KILLED")
    # A continued study reopens its run.
    assert study_parent_run(study, tracker, "stale") == first
    assert tracker.client.get_run(first).info.status == "RUNNING"

    tracker.client.delete_run(first)  # someone tidied the runs table
    second = study_parent_run(optuna.load_study(study_name="stale", storage=storage), tracker, "stale")
    assert second != first
    assert study.user_attrs["mlflow_study_run_id"] == second
    (parent,) = study_runs(tracker.client, tracker.experiment_id)
    assert parent.info.run_id == second
    assert parent.data.tags["hpsearch.study"] == "stale"
    assert parent.info.status == "RUNNING"


@postgres_only
def test_two_machines_running_one_study_log_to_one_parent_run(tmp_path, mlflow_server, pg_study_name):
    # Two work dirs (each machine's own, with its own file lock) and one checkpoint root that both
    # machines share, as a study on many machines needs for its retries.
    cfg = tiny_study(tmp_path / "machine-a", name=pg_study_name, n_trials=3, storage=POSTGRES,
                     **{"recovery.checkpoint_dir": str(tmp_path / "shared-checkpoints")})
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # As in the test above, the experiment is there before the workers start.
    tracker = Tracker(mlflow_server, pg_study_name, tmp_path / "mlartifacts")
    workers = [subprocess.Popen([sys.executable, "-m", "hpsearch", "run", "study.yaml", "--workdir",
                                 str(tmp_path / machine), "--tracking-uri", mlflow_server],
                                cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for machine in ("machine-a", "machine-b")]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, out + err

    study = optuna.load_study(study_name=pg_study_name, storage=pg_storage())
    (parent,) = study_runs(tracker.client, tracker.experiment_id)
    assert parent.info.run_id == study.user_attrs["mlflow_study_run_id"]
    trial_runs = [r for r in tracker.client.search_runs([tracker.experiment_id]) if r.info.run_id != parent.info.run_id]
    assert sorted(r.info.run_id for r in trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in study.trials)
    for run in trial_runs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
