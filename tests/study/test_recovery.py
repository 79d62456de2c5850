"""Crashes, signals and faults: real processes killed with real signals, real SQLite storage and
MLflow backend. A killed or interrupted trial continues from its checkpoint to the same result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import hpsearch
from tests.helpers import run_cli, tiny_study

RESUMABLE = {
    # Long enough epochs (~0.3 s) that a signal lands mid-trial; fast heartbeat so a dead worker is
    # noticed within seconds.
    "data.pretrain_size": None, "data.image_size": 16, "training.epochs": 5, "n_trials": 1,
    "recovery": {"heartbeat_interval": 1, "grace_period": 2},
}


def study_file(home: Path, name: str) -> Path:
    cfg = tiny_study(home / "runs", name=name, **RESUMABLE)
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # keep the search-space order
    return path


def start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", path.name], cwd=path.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_checkpoint(directory: Path, process: subprocess.Popen, epoch: int) -> None:
    deadline = time.time() + 180
    while not any(int(p.name[5:10]) >= epoch for p in directory.glob("epoch*.pt")):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def trial_runs(client, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    return [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]


def newest_epoch(directory: Path) -> int:
    return max(int(p.name[5:10]) for p in directory.glob("epoch*.pt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same study run without interruption: the value a resumed trial must reproduce."""
    home = tmp_path_factory.mktemp("reference")
    study = hpsearch.run_study(tiny_study(home / "runs", name="resume", **RESUMABLE))
    return study.trials[0].value


def test_sigkilled_worker_is_continued_from_its_checkpoint(tmp_path, reference, mlflow_client):
    path = study_file(tmp_path, "resume")
    worker = start(path)
    checkpoints = tmp_path / "runs" / "checkpoints" / "resume" / "trial-0"
    wait_for_checkpoint(checkpoints, worker, epoch=2)
    os.killpg(worker.pid, signal.SIGKILL)  # no handler, no cleanup: as the OOM killer would
    worker.wait()
    killed_at = newest_epoch(checkpoints)
    assert killed_at < 5
    time.sleep(3)  # past the grace period: the dead trial's heartbeat is stale

    result = run_cli("run", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"continuing trial 0 from its checkpoint at epoch {killed_at}" in result.stdout

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE"]  # the dead trial, then its retry: nothing lost, nothing duplicated
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4, 5]  # the whole curve, for the pruner
    assert retry.value == reference  # bit for bit the uninterrupted result (same seed, CPU)

    client = mlflow_client(tmp_path / "runs")
    runs = trial_runs(client, "resume")
    assert len(runs) == 1  # the retry continued the same MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
    for metric in ("ssl_loss", "knn_accuracy"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(steps) == [1, 2, 3, 4, 5]  # each epoch recorded exactly once


def test_sigterm_checkpoints_exits_cleanly_and_a_later_run_continues(tmp_path, reference, mlflow_client):
    path = study_file(tmp_path, "resume")
    worker = start(path)
    wait_for_checkpoint(tmp_path / "runs" / "checkpoints" / "resume" / "trial-0", worker, epoch=1)
    os.killpg(worker.pid, signal.SIGTERM)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]
    assert "Continue with: hpsearch run resume.yaml" in last  # one line that says how to resume

    client = mlflow_client(tmp_path / "runs")
    experiment = client.get_experiment_by_name("resume").experiment_id
    (run,) = trial_runs(client, "resume")
    assert run.info.status == "KILLED"  # no MLflow run is left RUNNING
    (parent,) = client.search_runs([experiment], "tags.`hpsearch.role` = 'study'")
    assert parent.info.status == "KILLED"

    result = run_cli("run", path.name, cwd=tmp_path)  # at once: no grace period to wait for
    assert result.returncode == 0, result.stderr
    assert "continuing trial 0 from its checkpoint" in result.stdout
    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert study.trials[1].value == reference  # resumed mid-epoch, bit for bit
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "ssl_loss")) == [1, 2, 3, 4, 5]


def test_divergence_prunes_and_out_of_memory_fails_while_the_study_goes_on(tmp_path, mlflow_client):
    workdir = tmp_path / "runs"
    cfg = tiny_study(workdir, name="faults", n_trials=3, search_space={})
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    workdir.mkdir()
    # Known configurations queued up front (a standard Optuna feature): a learning rate that makes
    # the loss explode, a backbone too wide to allocate (a real allocation failure on the CPU,
    # about 260 GB), and a sane one.
    cfg["search_space"] = {"training.optimizer.lr": {"type": "float", "low": 0.01, "high": 1e9, "log": True},
                           "model.width": {"type": "int", "low": 8, "high": 60000}}
    study = optuna.create_study(study_name="faults", storage=storage, direction="maximize")
    study.enqueue_trial({"training.optimizer.lr": 1e9, "model.width": 8})
    study.enqueue_trial({"training.optimizer.lr": 0.1, "model.width": 60000})
    study.enqueue_trial({"training.optimizer.lr": 0.1, "model.width": 8})
    study = hpsearch.run_study(cfg)
    diverged, oom, sane = study.trials
    assert diverged.state.name == "PRUNED" and diverged.user_attrs["reason"].startswith("diverged")
    assert oom.state.name == "FAIL" and oom.user_attrs["reason"] == "oom"
    assert sane.state.name == "COMPLETE"
    client = mlflow_client(workdir)
    oom_run = client.get_run(oom.user_attrs["mlflow_run_id"])
    assert oom_run.info.status == "FAILED" and oom_run.data.tags["hpsearch.reason"] == "oom"
    assert "traceback.txt" in [a.path for a in client.list_artifacts(oom_run.info.run_id)]


def test_locked_mlflow_backend_buffers_metrics_and_loses_nothing(tmp_path, mlflow_client):
    import sqlite3

    cfg = tiny_study(tmp_path / "runs", name="locked", **{**RESUMABLE, "training.epochs": 8})
    path = tmp_path / "locked.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    worker = start(path)
    checkpoints = tmp_path / "runs" / "checkpoints" / "locked" / "trial-0"
    wait_for_checkpoint(checkpoints, worker, epoch=1)
    # Another process holds the MLflow database locked for longer than MLflow's 20 s busy
    # timeout, as a stuck writer would: training must go on, and the metrics follow later.
    lock = sqlite3.connect(tmp_path / "runs" / "mlflow.db", timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    locked_at = time.time()
    time.sleep(25)
    while newest_epoch(checkpoints) < 8 and time.time() - locked_at < 180:
        time.sleep(0.2)
    assert newest_epoch(checkpoints) == 8  # training reached its end while MLflow was locked
    lock.rollback()
    lock.close()
    out, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err
    assert "unreachable" in err and "is back after" in err  # the outage is announced, and its end

    client = mlflow_client(tmp_path / "runs")
    (run,) = trial_runs(client, "locked")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "ssl_loss"))
    assert steps == list(range(1, 9))  # every epoch once: nothing lost, nothing doubled
