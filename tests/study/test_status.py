"""`hpsearch status`'s facts, read from a real storage: a finished tiny study, trials left RUNNING
by a process that really died, by one of another host whose heartbeat stopped, and a study that
hpsearch did not create."""

import shutil
import socket
import subprocess
import sys
import time

import optuna
import pytest

from hpsearch.study.owner import OWNER_ATTR, this_worker
from hpsearch.study.status import status_json, status_text, storage_location, storage_status
from hpsearch.study.studyfile import StudyFileError


@pytest.fixture
def storage(finished_tiny_study, tmp_path) -> str:
    """A copy of the finished study's storage, for a test to add trials to."""
    shutil.copy(finished_tiny_study / "optuna.db", tmp_path / "optuna.db")
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def status_of(url: str, name: str = "tiny"):
    return next(s for s in storage_status(url) if s.name == name)


def test_a_finished_study_shows_its_counts_and_best_value(finished_tiny_study):
    url = storage_location(workdir=str(finished_tiny_study))
    study = optuna.load_study(study_name="tiny", storage=url)
    status = status_of(url)
    assert status.hpsearch and status.directions == ["maximize"]
    assert status.counts == {"RUNNING": 0, "COMPLETE": 2, "PRUNED": 0, "FAIL": 0, "WAITING": 0}
    # The study maximises: its best is the highest value.
    assert status.best_value == max(t.value for t in study.trials)
    assert status.best_trial == study.best_trial.number
    assert status.running == [] and status.stale == []
    text = status_text(url, [status])
    assert "tiny (maximize linear_probe_accuracy)" in text and "2 complete, 0 pruned, 0 failed" in text
    assert f"best: {status.best_value:.4f} (trial {status.best_trial})" in text


def test_a_trial_whose_process_died_here_is_stale_at_once_and_a_live_one_is_not(storage):
    # A worker that takes a trial, records its first epoch and dies (here: exits) without telling.
    code = (f"import optuna; from hpsearch.study.owner import this_worker; "
            f"t = optuna.load_study(study_name='tiny', storage={storage!r}).ask(); "
            f"t.set_user_attr({OWNER_ATTR!r}, this_worker()); t.set_user_attr('epochs_trained', 1); print(t.number)")
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dead_number = int(dead.stdout)
    # This process, alive, runs another.
    live = optuna.load_study(study_name="tiny", storage=storage).ask()
    live.set_user_attr(OWNER_ATTR, this_worker())

    status = status_of(storage)
    assert status.counts["RUNNING"] == 2
    running = {t.number: t for t in status.running}
    gone = running[dead_number]
    assert (gone.host, gone.epoch, gone.epochs) == (socket.gethostname(), 1, 2)  # epochs from the stored config
    assert gone.stale and "died" in gone.stale
    # Alive and beating (its grace period is 1 s but it never beat: Optuna only judges trials that did).
    assert running[live.number].stale is None and running[live.number].epoch is None
    assert [t.number for t in status.stale] == [dead_number]
    text = status_text(storage, [status])
    assert f"trial {dead_number}, epoch 1/2, on {socket.gethostname()}" in text and "STALE" in text
    assert f"stale: 1 (trial {dead_number}); `hpsearch resume tiny` retries it" in text
    # Run elsewhere than in the default work dir, the command says where.
    elsewhere = status_text(storage, [status], location="--workdir runs")
    assert "`hpsearch resume tiny --workdir runs` retries it" in elsewhere


@pytest.mark.filterwarnings("ignore:.*heartbeat", "ignore:Heartbeat")  # experimental, meant for optimize()
def test_a_trial_of_another_host_is_stale_once_its_heartbeat_is_older_than_the_grace_period(storage):
    beating = optuna.storages.RDBStorage(storage, heartbeat_interval=1, grace_period=1)
    trial = optuna.load_study(study_name="tiny", storage=beating).ask()
    trial.set_user_attr(OWNER_ATTR, {"host": "another-host", "pid": 1, "started": 0})  # not ours to check
    beating.record_heartbeat(trial._trial_id)
    assert status_of(storage).stale == []  # it beat just now

    time.sleep(3)  # the study's grace period is 1 s (SQLite's clock counts whole seconds)
    (stale,) = status_of(storage).stale
    assert (stale.number, stale.host, stale.stale) == (trial.number, "another-host", "no heartbeat for over 1 s")


def test_a_study_hpsearch_did_not_create_is_listed_with_its_own_direction(storage):
    plain = optuna.create_study(study_name="plain", storage=storage, direction="minimize")
    for value in (3.0, 1.0, 2.0):
        plain.tell(plain.ask(), value)
    plain.ask()  # running, owner unknown: nothing says it is stale

    assert [s.name for s in storage_status(storage)] == ["plain", "tiny"]
    status = status_of(storage, "plain")
    assert not status.hpsearch and status.directions == ["minimize"] and status.metric_names is None
    assert (status.best_value, status.best_trial) == (1.0, 1)  # minimising: the lowest
    assert [(t.host, t.epochs, t.stale) for t in status.running] == [(None, None, None)]
    text = status_text(storage, [status])
    assert "plain (minimize; not created by hpsearch)" in text and "owner unknown" in text


def test_the_json_holds_every_study_with_its_stale_trial_numbers(storage):
    import json

    found = json.loads(status_json(storage, storage_status(storage)))
    assert found["storage"] == storage
    (tiny,) = found["studies"]
    assert tiny["name"] == "tiny" and tiny["counts"]["COMPLETE"] == 2 and tiny["stale"] == []


def test_no_storage_in_the_work_dir_is_an_error_that_names_it(tmp_path):
    with pytest.raises(StudyFileError, match="no Optuna storage here"):
        storage_location(workdir=str(tmp_path / "nothing"))
    assert not (tmp_path / "nothing").exists()  # looking created nothing
