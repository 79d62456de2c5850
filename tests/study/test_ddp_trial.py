"""`training.devices: 2`: each trial trained by two CPU processes (gloo), through the real `hpsearch run`.
Rank 0 records, prunes and checkpoints; the follower stops with it; Ctrl-C and a rerun continue the
trial bit for bit."""

import ctypes
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from tests.helpers import command_line, is_alive, tiny_study, tree_pids

DDP = {"training.devices": 2, "training.epochs": 3, "n_trials": 1}
IN_MOVED_TO = 0x80  # inotify: a file renamed into the directory (checkpoint.save's atomic os.replace)


def write_study(home: Path, name: str, **changes) -> Path:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_study(home / "runs", name=name, **{**DDP, **changes}), sort_keys=False))
    return path


def start(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", path.name], cwd=path.parent,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def followers_of(pid: int) -> set[int]:
    return {p for p in tree_pids(pid) if "hpsearch.study.ddp_trial" in (command_line(p) or "")}


def watch(run: subprocess.Popen, until=lambda: False, timeout: float = 600) -> set[int]:
    """Follow `run` until it exits or `until()`; returns the DDP follower processes seen meanwhile."""
    seen, deadline = set(), time.time() + timeout
    while run.poll() is None and not until():
        seen |= followers_of(run.pid)
        assert time.time() < deadline, "the run did not end"
        time.sleep(0.1)
    return seen


class Renames:
    """The files renamed into a directory (Linux inotify), each time it happens: who wrote a checkpoint how often."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True)
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and self.libc.inotify_add_watch(self.fd, str(directory).encode(), IN_MOVED_TO) >= 0

    def names(self) -> list[str]:
        found, data = [], b""
        while True:
            try:
                data += os.read(self.fd, 65536)
            except BlockingIOError:
                break
        offset = 0
        while offset < len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
            if mask & IN_MOVED_TO:
                found.append(name)
            offset += 16 + length
        os.close(self.fd)
        return found


def study(home: Path, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{home / 'runs' / 'optuna.db'}")


def curve(client, trial: optuna.trial.FrozenTrial) -> dict[str, list[tuple[int, float]]]:
    """Every metric of the trial's MLflow run, step by step (each step as often as it was logged)."""
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics if key != "epoch_time_s"}  # wall time: the one figure that may differ


def test_a_pruned_ddp_trial_stops_on_both_ranks_at_the_same_epoch_with_one_record_and_checkpoint_each(
        tmp_path, mlflow_client):
    # kNN never reaches 0.99: the threshold pruner prunes the trial once the warm-up allows, at epoch 2 of 3.
    path = write_study(tmp_path, "pruned", **{"pruning": {"name": "threshold", "args": {"lower": 0.99},
                                                          "warmup_epochs": 2}})
    renames = Renames(tmp_path / "runs" / "checkpoints" / "pruned" / "trial-0")
    run = start(path)
    followers = watch(run)
    out, err = run.communicate()
    assert run.returncode == 0, out + err

    trial = study(tmp_path, "pruned").trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"].startswith("threshold pruner"), trial.user_attrs["reason"]
    assert trial.intermediate_values.keys() == {1, 2}  # reported every epoch until pruned
    # Both ranks stopped where the trial did (epoch 2: 2 x 4 steps of 128 images), and each said so
    # itself, which a follower stopped by anything but rank 0's word (killed, failed) does not.
    steps = 2 * (512 // 128)
    assert trial.user_attrs["ranks_stopped_at"] == [[2, steps], [2, steps]]
    assert len(followers) == 1 and not [p for p in followers if is_alive(p)]
    # Rank 0 alone records: each epoch once in MLflow; and checkpoints: each epoch's file written once.
    assert {k: [s for s, _ in v] for k, v in curve(mlflow_client(tmp_path / "runs"), trial).items()
            if k in ("ssl_loss", "knn_accuracy")} == {"ssl_loss": [1, 2], "knn_accuracy": [1, 2]}
    assert sorted(renames.names()) == ["epoch00001-step0000004.pt", "epoch00002-step0000008.pt"]


def test_ctrl_c_mid_ddp_trial_then_running_again_continues_it_bit_exactly(tmp_path, mlflow_client):
    client = mlflow_client(tmp_path / "runs")
    # The uninterrupted run (its own study: the same seed, so the same trial).
    reference = write_study(tmp_path, "whole")
    run = start(reference)
    watch(run)
    out, err = run.communicate()
    assert run.returncode == 0, out + err
    whole = study(tmp_path, "whole").trials[0]

    path = write_study(tmp_path, "cut")
    checkpoints = tmp_path / "runs" / "checkpoints" / "cut" / "trial-0"
    run = start(path)
    followers = watch(run, until=lambda: bool(list(checkpoints.glob("epoch00001-*.pt"))))
    followers |= followers_of(run.pid)
    assert run.poll() is None, run.communicate()
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the whole process group, followers included
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, out + err
    assert "Traceback" not in err, err
    assert followers and not [p for p in followers if is_alive(p)]  # no follower outlives the stop

    again = subprocess.run([sys.executable, "-m", "hpsearch", "run", path.name], cwd=tmp_path, text=True,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "continuing trial 0 from its checkpoint" in again.stdout, again.stdout
    trials = study(tmp_path, "cut").trials
    continued = trials[-1]
    assert continued.user_attrs["retry_of"] == trials[0].number and continued.state == optuna.trial.TrialState.COMPLETE
    # The same curve, bit for bit, each epoch recorded once; the same value, and both ranks at the end.
    assert continued.intermediate_values == whole.intermediate_values
    assert [step for step, _ in curve(client, whole)["ssl_loss"]] == [1, 2, 3]
    assert curve(client, continued) == curve(client, whole)
    assert continued.value == whole.value
    assert continued.user_attrs["ranks_stopped_at"] == whole.user_attrs["ranks_stopped_at"] == [[3, 12], [3, 12]]
