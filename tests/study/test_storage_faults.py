"""The Optuna storage (PostgreSQL) goes away in the middle of a study: a short outage is ridden
out, a long one stops the worker with a one-line, resumable error (exit 75), and running the same
command again continues the cut trial from its checkpoint. The outage is real: a TCP proxy in
front of the real server cuts every connection and refuses new ones."""

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy import event

from hpsearch.study.resilient_storage import ResilientRDBStorage
from hpsearch.study.storage import StorageLost
from tests.faults import TcpProxy
from tests.helpers import needs_postgres, pg_storage, tiny_study

PASSWORD = "s3cret"


pytestmark = needs_postgres()


@pytest.fixture
def proxy():
    with TcpProxy(5432) as running:
        yield running


@pytest.fixture
def study_name(pg_study_name):
    yield pg_study_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def url_through(proxy: TcpProxy) -> str:
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{proxy.port}/postgres"


@pytest.fixture
def resilient(proxy):
    """Opens ResilientRDBStorages through the proxy; their pooled connections are closed after the test."""
    opened = []

    def open_storage(retry_seconds: float, **kwargs) -> ResilientRDBStorage:
        opened.append(ResilientRDBStorage(url_through(proxy), retry_seconds=retry_seconds,
                                          engine_kwargs={"pool_pre_ping": True}, **kwargs))
        return opened[-1]
    yield open_storage
    for storage in opened:
        storage.engine.dispose()


def read_directly(study_name: str) -> optuna.Study:
    """The study as the database holds it, read directly (not through the proxy)."""
    return optuna.load_study(study_name=study_name, storage=pg_storage())


# -- in process: the storage's calls ----------------------------------------------------------------

def test_calls_during_a_short_outage_wait_for_the_storage_and_succeed(proxy, resilient, study_name, capsys):
    storage = resilient(retry_seconds=60)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial_id = study.ask()._trial_id
    errors, steps = [], []

    def report_steadily():  # what a trial does: report, attrs, should_prune's read
        for step in range(25):
            try:
                storage.set_trial_intermediate_value(trial_id, step, float(step))
                storage.set_trial_user_attr(trial_id, "epochs_trained", step)
                storage.get_all_trials(study._study_id)
                steps.append(step)
            except BaseException as err:
                errors.append(err)
            time.sleep(0.1)

    worker = threading.Thread(target=report_steadily)
    worker.start()
    while len(steps) < 3:
        time.sleep(0.05)
    proxy.cut()
    cut_at = len(steps)
    time.sleep(3)
    assert len(steps) <= cut_at + 1, "calls went on while the storage was cut"
    proxy.restore()
    worker.join()

    assert errors == []
    stored = read_directly(study_name).trials[0]
    assert sorted(stored.intermediate_values) == list(range(25))
    assert stored.user_attrs["epochs_trained"] == 24
    err = capsys.readouterr().err
    masked = f"postgresql://postgres:***@127.0.0.1:{proxy.port}/postgres"
    assert re.search(rf"optuna storage {re.escape(masked)}: connection lost \(\w+Error: .+\); retrying for up to 60 s", err)
    assert re.search(rf"optuna storage {re.escape(masked)}: reachable again after \d+\.\d s", err)
    assert err.count("connection lost") == 1  # one outage, one line, however many calls waited
    assert PASSWORD not in err


def test_an_outage_longer_than_the_bound_raises_storage_lost_in_one_line_without_the_password(proxy, resilient, study_name):
    storage = resilient(retry_seconds=2)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial_id = study.ask()._trial_id
    proxy.cut()
    with pytest.raises(StorageLost) as lost:
        storage.set_trial_intermediate_value(trial_id, 1, 0.5)
    message = str(lost.value)
    assert "\n" not in message and PASSWORD not in message
    assert message.startswith(f"optuna storage postgresql://postgres:***@127.0.0.1:{proxy.port}/postgres: unreachable for ")
    assert message.endswith("the running trial is checkpointed and continues when the same command is run again")
    # Not an ordinary failure: study.optimize(catch=(Exception,)) must not swallow it.
    assert not isinstance(lost.value, Exception)
    # Lost for good: the next call does not wait out another bound, even with the storage back.
    proxy.restore()
    with pytest.raises(StorageLost):
        storage.set_trial_user_attr(trial_id, "x", 1)


def test_real_errors_are_not_retried(proxy, resilient, study_name, capsys):
    storage = resilient(retry_seconds=60)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial = study.ask()
    study.tell(trial, 1.0)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial._trial_id, "late", 1)
    with pytest.raises(KeyError):
        storage.get_trial(10**9)
    assert "connection lost" not in capsys.readouterr().err


def test_optimize_stops_with_storage_lost_and_leaves_the_cut_trial_running_for_its_retry(proxy, resilient, study_name,
                                                                                          capsys):
    """What Optuna does with a KeyboardInterrupt: it tells the trial FAIL through the storage that is
    down. That must neither wait out another bound, nor replace StorageLost by another error, nor
    store FAIL (the next run retries a RUNNING trial of a dead process from its checkpoint)."""
    storage = resilient(retry_seconds=2, heartbeat_interval=1)
    study = optuna.create_study(study_name=study_name, storage=storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        for step in range(10):
            trial.report(float(step), step)
            if step == 2:
                proxy.cut()
        return 1.0

    with pytest.raises(StorageLost):
        study.optimize(objective, n_trials=3, catch=(Exception,))
    proxy.restore()
    trials = read_directly(study_name).trials
    assert [(t.state, sorted(t.intermediate_values)) for t in trials] == [(TrialState.RUNNING, [0, 1, 2])]
    err = capsys.readouterr().err
    assert "Traceback" not in err and "failed with" not in err  # Optuna's "trial failed" records are dropped


def test_a_new_trial_whose_commit_was_cut_is_not_created_twice(proxy, resilient, study_name):
    storage = resilient(retry_seconds=60)
    study = optuna.create_study(study_name=study_name, storage=storage)
    armed = threading.Event()

    @event.listens_for(storage.engine, "commit")
    def cut_this_commit(connection):  # the connection drops as the COMMIT goes out, then is back
        if armed.is_set():
            armed.clear()
            proxy.cut()
            threading.Timer(0.2, proxy.restore).start()

    armed.set()
    with pytest.raises(StorageLost, match="could create it twice"):
        storage.create_new_trial(study._study_id)  # what ask() and a queued retry call; one COMMIT
    time.sleep(0.5)
    assert len(read_directly(study_name).trials) <= 1


# -- end to end: the `hpsearch run` command ---------------------------------------------------------

def write_study(home: Path, name: str, url: str, **changes) -> Path:
    cfg = tiny_study(home / "runs", name=name, storage=url, **{
        "training.epochs": 6, "n_trials": 2,
        # Every trial trains all its epochs: no SSL heuristic may stop a tiny model early.
        "pruning.heuristics": {"collapse": {"enabled": False}, "no_learning": {"enabled": False}},
        # Beats often, so an outage is noticed by the heartbeat too; a long grace period: only the
        # dead-process rule may retry the cut trial on the next run.
        "recovery": {"heartbeat_interval": 1, "grace_period": 600}, **changes})
    path = home / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", path.name], cwd=path.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_a_trial_midway(name: str, worker: subprocess.Popen, epochs: int = 6) -> optuna.trial.FrozenTrial:
    """The first RUNNING trial with at least two epochs reported and more to go, read directly."""
    deadline = time.time() + 600
    while time.time() < deadline:
        assert worker.poll() is None, f"the worker exited ({worker.returncode}): {worker.communicate()}"
        try:
            study = read_directly(name)
        except KeyError:  # not created yet
            time.sleep(0.5)
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if 2 <= len(trial.intermediate_values) < epochs - 1:
                return trial
        time.sleep(0.2)
    raise AssertionError("no trial got midway within 600 s")


def test_a_short_outage_mid_trial_is_ridden_out(tmp_path, proxy, study_name):
    path = write_study(tmp_path, study_name, url_through(proxy))
    worker = start(path)
    wait_for_a_trial_midway(study_name, worker)
    proxy.cut()
    time.sleep(4)
    proxy.restore()
    out, err = worker.communicate(timeout=900)

    assert worker.returncode == 0, err
    trials = read_directly(study_name).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(sorted(t.intermediate_values) == list(range(1, 7)) for t in trials)
    masked = f"postgresql://postgres:***@127.0.0.1:{proxy.port}/postgres"
    assert f"optuna storage {masked}: connection lost" in err and "retrying for up to 120 s" in err
    assert f"optuna storage {masked}: reachable again after" in err
    assert PASSWORD not in out + err


def test_a_long_outage_exits_75_and_the_same_command_continues_the_cut_trial(tmp_path, proxy, study_name,
                                                                              mlflow_client):
    path = write_study(tmp_path, study_name, url_through(proxy), n_trials=1,
                       **{"recovery.storage_retry_seconds": 3})
    worker = start(path)
    cut = wait_for_a_trial_midway(study_name, worker)
    proxy.cut()
    out, err = worker.communicate(timeout=600)  # cut until the worker gives up
    proxy.restore()

    assert worker.returncode == 75, err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(rf"hpsearch: optuna storage postgresql://postgres:\*\*\*@127\.0\.0\.1:{proxy.port}/postgres: "
                        r"unreachable for \d+ s \(.+\); stopped: the running trial is checkpointed and continues "
                        r"when the same command is run again", last), last
    assert "Traceback" not in err and PASSWORD not in out + err
    assert read_directly(study_name).trials[0].state == TrialState.RUNNING

    again = start(path)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err
    assert f"continuing trial {cut.number} from its checkpoint" in out
    trials = read_directly(study_name).trials
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == cut.number)
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == list(range(1, 7))
    # Each epoch reached MLflow once: those before the cut by the first worker, the rest by the retry.
    client = mlflow_client(tmp_path / "runs")
    steps = sorted(m.step for m in client.get_metric_history(retry.user_attrs["mlflow_run_id"], "ssl_loss"))
    assert steps == list(range(1, 7))
