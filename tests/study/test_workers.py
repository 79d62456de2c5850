"""Many workers on one study: `hpsearch run --workers N` and `hpsearch worker`, on a real PostgreSQL
storage, real processes and real signals. However many workers, the study ends with exactly
`n_trials` finished trials, one MLflow run per configuration, one parent run, one finalisation."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpsearch.study.retry import finished_trials
from hpsearch.study.surplus import SURPLUS_ATTR
from tests.helpers import needs_postgres, ROOT, is_alive, pg_storage, run_cli, tiny_study, tree_pids

URL = "postgresql://postgres@127.0.0.1:5432/postgres"
N_TRIALS = 4


pytestmark = needs_postgres(URL)



def write_study(home: Path, name: str, n_trials: int = N_TRIALS, **changes) -> Path:
    """Epochs long enough (all of digits' training images) that a signal lands mid-trial; a long
    grace period, so that only the same-host dead-process rule retries a killed worker's trial."""
    cfg = tiny_study(home / "runs", name=name, storage=URL, n_trials=n_trials,
                     **{"data.pretrain_size": None, "data.image_size": 16, "training.epochs": 4,
                        "recovery": {"heartbeat_interval": 30, "grace_period": 600}, **changes})
    path = home / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start(home: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=home, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def load(name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=pg_storage())


def running(name: str) -> list:
    """The study's RUNNING trials; none while the workers have not created the study yet."""
    try:
        return load(name).get_trials(states=(TrialState.RUNNING,))
    except KeyError:
        return []


def wait_for(condition, process_list, what: str, timeout: float = 400):
    deadline = time.time() + timeout
    while not (found := condition()):
        for process in process_list:
            assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.2)
    return found


def assert_exactly_n_trials(home: Path, name: str, mlflow_client, n_trials: int = N_TRIALS) -> optuna.Study:
    """The study holds exactly `n_trials` finished trials, each its own configuration, one MLflow run
    each under one finished parent run; every other trial is a surplus one or was retried."""
    study = load(name)
    counted = finished_trials(study)
    assert len(counted) == n_trials, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    keys = [t.user_attrs["checkpoint_key"] for t in counted]
    assert len(set(keys)) == n_trials, keys  # no configuration finished twice
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retried = {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}
    for trial in study.trials:
        if trial not in counted and trial.number not in retried:
            assert trial.user_attrs.get(SURPLUS_ATTR) and "mlflow_run_id" not in trial.user_attrs, trial

    client = mlflow_client(home / "runs")
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if r.data.tags.get("hpsearch.role") == "study"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    children = sorted(r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert children == sorted(keys)  # one run per configuration, named after its first trial
    return study


def test_run_with_two_workers_finishes_exactly_n_trials(tmp_path, pg_study_name, mlflow_client):
    path = write_study(tmp_path, pg_study_name)
    result = run_cli("run", path.name, "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 workers, 1 torch thread(s) each" in result.stdout
    assert re.search(r"^\[w1\] worker \S+ on study .*: 0/4 finished$", result.stdout, re.M), result.stdout
    assert re.search(r"^4 trials: 4 finished", result.stdout, re.M), result.stdout  # the combined line
    assert result.stdout.count("measuring the best") == 1  # the end of the study, once
    assert_exactly_n_trials(tmp_path, pg_study_name, mlflow_client)


def test_two_workers_started_together_share_one_study(tmp_path, pg_study_name, mlflow_client):
    path = write_study(tmp_path, pg_study_name)
    workers = [start(tmp_path, "worker", path.name) for _ in range(2)]
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, out[-3000:] + err[-3000:]
        assert re.search(r"^worker \S+:\d+ on study .*: \d/4 finished$", out, re.M), out
    said = "".join(out for out, _ in outputs)
    assert said.count("measuring the best") == 1, said  # one finaliser
    assert_exactly_n_trials(tmp_path, pg_study_name, mlflow_client)


def test_a_killed_workers_trial_is_continued_by_the_other(tmp_path, pg_study_name, mlflow_client):
    path = write_study(tmp_path, pg_study_name)
    workers = {w.pid: w for w in (start(tmp_path, "worker", path.name) for _ in range(2))}

    def reported_trial_of_a_worker():  # a trial mid-way, with an epoch reported (and checkpointed)
        for trial in running(pg_study_name):
            if trial.intermediate_values and trial.user_attrs.get("worker", {}).get("pid") in workers:
                return trial

    victim = wait_for(reported_trial_of_a_worker, workers.values(), "a reported epoch")
    killed = workers.pop(victim.user_attrs["worker"]["pid"])
    os.killpg(killed.pid, signal.SIGKILL)  # no handler, no cleanup
    killed.wait()
    (survivor,) = workers.values()
    out, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, out[-3000:] + err[-3000:]
    configuration = victim.user_attrs["checkpoint_key"].removeprefix("trial-")
    assert f"continuing trial {configuration} from its checkpoint" in out, out

    study = assert_exactly_n_trials(tmp_path, pg_study_name, mlflow_client)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["worker"]["pid"] == survivor.pid
    client = mlflow_client(tmp_path / "runs")
    for metric in ("ssl_loss", "knn_accuracy"):  # each epoch of that configuration logged once
        steps = sorted(m.step for m in client.get_metric_history(victim.user_attrs["mlflow_run_id"], metric))
        assert steps == [1, 2, 3, 4], (metric, steps)


def test_ctrl_c_stops_every_worker_with_one_line_and_the_printed_command_continues(tmp_path, pg_study_name, mlflow_client):
    # Two trials long enough that the second worker, started once the first has measured the
    # baseline, finds one left to take (starting a worker takes a while on a busy machine).
    path = write_study(tmp_path, pg_study_name, n_trials=2, **{"training.epochs": 24})
    launcher = start(tmp_path, "run", path.name, "--workers", "2")

    def both_workers_mid_trial():  # each in a trial, one with epochs reported at least
        trials = running(pg_study_name)
        return len(trials) >= 2 and any(t.intermediate_values for t in trials)

    wait_for(both_workers_mid_trial, [launcher], "two trials running")
    tree = tree_pids(launcher.pid)
    assert len(tree) >= 3  # the launcher and its two workers
    os.killpg(launcher.pid, signal.SIGINT)  # as the terminal's Ctrl-C: the foreground process group
    out, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 130, out[-3000:] + err[-3000:]
    said = [line for line in err.splitlines() if "Continue with:" in line]
    assert len(said) == 1 and said[0].startswith("hpsearch: interrupted"), err
    assert "Traceback" not in err, err
    assert not [pid for pid in tree if is_alive(pid)]  # the launcher waited for every worker

    study = load(pg_study_name)
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 2  # both checkpointed and queued their trial
    again = shlex.split(said[0].split("Continue with: ", 1)[1])
    assert again[:2] == ["hpsearch", "run"]
    result = run_cli(*again[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for trial in interrupted:
        assert f"continuing trial {trial.number} from its checkpoint" in result.stdout, result.stdout
    assert_exactly_n_trials(tmp_path, pg_study_name, mlflow_client, n_trials=2)


def test_a_worker_with_a_checkpoint_root_of_its_own_stops_before_training(tmp_path, pg_study_name):
    path = write_study(tmp_path, pg_study_name, n_trials=1, **{"training.epochs": 1, "data.pretrain_size": 256})
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = run_cli("worker", path.name, "--tracking-uri", tracking, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    trials = len(load(pg_study_name).trials)

    other = run_cli("worker", path.name, "--tracking-uri", tracking, "--workdir", str(tmp_path / "elsewhere"), cwd=tmp_path)
    assert other.returncode == 2, other.stdout + other.stderr
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1, other.stderr
    assert re.fullmatch(
        rf"hpsearch: error: checkpoint root {re.escape(str(tmp_path / 'elsewhere' / 'checkpoints' / pg_study_name))} is not "
        rf"the one this study's other workers use \(host \S+ keeps it at "
        rf"{re.escape(str(tmp_path / 'runs' / 'checkpoints' / pg_study_name))}\): set recovery.checkpoint_dir to a path "
        r"every worker sees", lines[0]), lines[0]
    assert len(load(pg_study_name).trials) == trials  # it started no trial
