"""kill -9, then the same command again at once: nothing is left RUNNING, every epoch of every
MLflow run is logged once, and a kill costs at most `checkpoint_every` epochs of training again.
Also: a stop between checkpoints, workers interrupted together, and what Ctrl-C prints."""

import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

import hpsearch
from hpsearch.study.console import Console
from hpsearch.config.study_attrs import proxy_history
from hpsearch.study.interrupt import Interrupted
from hpsearch.training import checkpoint
from tests.helpers import run_cli, tiny_study

KILLABLE = {"data.pretrain_size": None, "data.image_size": 16, "training.epochs": 4, "n_trials": 3,
            # a long grace period: only the dead-PID rule may notice the killed trials at once
            "recovery": {"heartbeat_interval": 30, "grace_period": 600}}


def write_study(home: Path, name: str, **changes) -> Path:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_study(home / "runs", name=name, **{**KILLABLE, **changes}), sort_keys=False))
    return path


def start(path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", path.name, *args], cwd=path.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def load(home: Path, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{home / 'runs' / 'optuna.db'}")


def logged_steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "ssl_loss"))


def modified(path: Path) -> float:
    """A file's mtime, or 0 when the worker has just rotated it away."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def trial_runs(client, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else [r for r in client.search_runs([experiment.experiment_id])
                                          if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.parametrize("every", [1, 2])
def test_random_kills_and_immediate_reruns_leave_nothing_running_and_log_every_epoch_once(tmp_path, mlflow_client,
                                                                                          every):
    path = write_study(tmp_path, "killed", **{"recovery.checkpoint_every": every})
    client = mlflow_client(tmp_path / "runs")
    rng = random.Random(every)
    checkpoints = tmp_path / "runs" / "checkpoints" / "killed"
    retrained = []
    for cycle in range(4):
        total = str(2 * cycle + 2)  # each cycle asks for 2 more trials: the killed worker always has work
        started = time.time()
        worker = start(path, "--n-trials", total)
        # Once this worker has written a checkpoint, at a random moment within the next ~3 epochs:
        # in an epoch, an evaluation, a checkpoint write or between trials.
        while not [f for f in checkpoints.glob("trial-*/*.pt") if modified(f) > started]:
            assert worker.poll() is None, worker.communicate()
            assert time.time() < started + 240
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        # Epochs each killed trial had completed (recorded with Optuna before its checkpoint is written);
        # a trial killed before its MLflow run was opened has no checkpoint key, and nothing to continue.
        trained = {t.user_attrs["checkpoint_key"].removeprefix("trial-"): t.user_attrs.get("epochs_trained", 0)
                   for t in load(tmp_path, "killed").trials
                   if t.state == optuna.trial.TrialState.RUNNING and "checkpoint_key" in t.user_attrs}
        # The next run starts at once: the dead trial is retried now, not after the grace period.
        result = run_cli("run", path.name, "--n-trials", total, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        for match in re.finditer(r"continuing trial (\d+) from its checkpoint at epoch (\d+)", result.stdout):
            retrained.append(trained[match[1]] - int(match[2]))
    print(f"checkpoint_every {every}: completed epochs trained again per kill: {retrained}")
    assert all(0 <= n <= every for n in retrained), retrained

    study = load(tmp_path, "killed")
    assert not [t.number for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING,
                                                              optuna.trial.TrialState.WAITING)]
    runs = trial_runs(client, "killed")
    for run in runs:  # every configuration's run: each epoch it trained, exactly once, and ended
        steps = logged_steps(client, run.info.run_id)
        assert steps == sorted(set(steps)), (run.info.run_name, steps)
        assert run.info.status != "RUNNING", run.info.run_name
        if run.data.tags["optuna.state"] == "COMPLETE":
            assert steps == [1, 2, 3, 4]
    configurations = {t.user_attrs["checkpoint_key"] for t in study.trials if "checkpoint_key" in t.user_attrs}
    assert len(runs) == len(configurations)  # one MLflow run per configuration, however often it was killed


class StopAtEpoch(Console):
    """A console that sends this process SIGTERM when trial 0 has recorded `epoch`: a stop that
    arrives between checkpoints, after the epoch was logged."""

    def __init__(self, epoch: int):
        super().__init__(1, 4, stream=io.StringIO())
        self.at = epoch

    def epoch(self, trial_number, epoch, metrics):
        if (trial_number, epoch) == (0, self.at):
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_between_checkpoints_checkpoints_what_was_recorded(tmp_path, mlflow_client):
    cfg = tiny_study(tmp_path / "runs", name="between", n_trials=1,
                     **{"training.epochs": 4, "recovery.checkpoint_every": 2})
    with pytest.raises(Interrupted):
        hpsearch.run_study(cfg, console=StopAtEpoch(3))
    trial = load(tmp_path, "between").trials[0]
    state = checkpoint.load_latest(tmp_path / "runs" / "checkpoints" / "between" / "trial-0")
    assert state["training"]["epoch"] == 3  # not 2: epoch 3 was logged, so it is in a checkpoint
    study = hpsearch.run_study(cfg, console=Console(1, 4, stream=io.StringIO()))
    run_id = study.trials[-1].user_attrs["mlflow_run_id"]
    assert run_id == trial.user_attrs["mlflow_run_id"]
    assert logged_steps(mlflow_client(tmp_path / "runs"), run_id) == [1, 2, 3, 4]  # 3 once
    history = proxy_history(study.trials[-1])
    assert {h["epoch"]: h["knn_accuracy"] for h in history} == study.trials[-1].intermediate_values


def test_workers_interrupted_together_each_queue_one_retry_and_ctrl_c_prints_one_line(tmp_path, mlflow_client):
    path = write_study(tmp_path, "together", **{"n_trials": 4, "training.epochs": 6})
    first = start(path)
    time.sleep(1.5)  # the second starts once the first has created the storage
    second = start(path)
    study_dir = tmp_path / "runs" / "checkpoints" / "together"
    deadline = time.time() + 240
    while len([d for d in study_dir.glob("trial-*") if list(d.glob("*.pt"))]) < 2:
        assert first.poll() is None and second.poll() is None, (first.communicate(), second.communicate())
        assert time.time() < deadline
        time.sleep(0.05)
    for worker in (first, second):
        os.killpg(worker.pid, signal.SIGINT)
    outputs = [worker.communicate(timeout=120) for worker in (first, second)]
    assert [w.returncode for w in (first, second)] == [130, 130]
    for out, err in outputs:
        assert "Traceback" not in err and "failed" not in err, err  # no Optuna traceback or warning
        said = [line for line in err.splitlines() if line.startswith("hpsearch:")]
        assert len(said) == 1 and "Continue with: hpsearch run together.yaml" in said[0], err

    study = load(tmp_path, "together")
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]  # their retries do not inherit it
    assert len(interrupted) == 2
    for trial in interrupted:
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
        assert len(retries) == 1, (trial.number, [t.number for t in retries])  # one retry each, not two
        assert list((study_dir / trial.user_attrs["checkpoint_key"]).glob("*.pt"))  # its checkpoint survived

    result = run_cli("run", path.name, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # One identity per configuration: its first trial number, and the Optuna trial that continued it.
    for trial in interrupted:
        retry = next(t for t in load(tmp_path, "together").trials if t.user_attrs.get("retry_of") == trial.number)
        assert re.search(rf"^trial +{trial.number} \(as #{retry.number}\) +COMPLETE", result.stdout, re.M), result.stdout
        run = mlflow_client(tmp_path / "runs").get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and "hpsearch.reason" not in run.data.tags  # no stale "interrupted"
