"""`hpsearch.optimize` around a training loop hpsearch did not write: what each call of `hpsearch.Trial`
records, the errors it gives for misuse, and the example in examples/ killed and run again."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

import hpsearch
from hpsearch.config.study_attrs import proxy_history
from hpsearch.study.console import Console
from tests.helpers import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "own_loop.py"


def study(tmp_path: Path, **changes) -> dict:
    cfg = {"name": "mine", "n_trials": 2, "workdir": str(tmp_path / "runs"), "training": {"epochs": 4},
           "pruning": {"name": "none"}}
    for section, value in changes.items():
        cfg[section] = value
    return cfg


def optimize(objective, cfg: dict, **overrides) -> tuple[optuna.Study, str]:
    out = io.StringIO()
    found = hpsearch.optimize(objective, cfg, console=Console(cfg["n_trials"], cfg["training"]["epochs"], stream=out),
                              **overrides)
    return found, out.getvalue()


def history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def test_each_epoch_goes_to_mlflow_and_the_proxy_to_optuna_and_the_history(tmp_path):
    def objective(trial: hpsearch.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        for epoch in range(1, trial.epochs + 1):
            trial.report_epoch(epoch, knn_accuracy=x * epoch / 10, ssl_loss=5.0 - epoch)
        return x

    found, out = optimize(objective, study(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    for trial in found.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == trial.params["x"]
        x, run_id = trial.params["x"], trial.user_attrs["mlflow_run_id"]
        assert trial.intermediate_values == {e: x * e / 10 for e in range(1, 5)}
        assert [h["epoch"] for h in proxy_history(trial)] == [1, 2, 3, 4]
        assert history(client, run_id, "ssl_loss") == [(e, 5.0 - e) for e in range(1, 5)]
        run = client.get_run(run_id)
        assert float(run.data.params["x"]) == x  # suggested inside the objective, still an MLflow param
        assert run.data.tags["mlflow.parentRunId"] == found.user_attrs["mlflow_study_run_id"]
        assert run.data.metrics["linear_probe_accuracy"] == x and run.info.status == "FINISHED"
    assert "trial   1  COMPLETE" in out


def test_the_pruner_stops_a_trial_from_report_epoch_with_its_reason(tmp_path):
    seen = []

    def objective(trial: hpsearch.Trial) -> float:
        good = trial.number < 3  # three good trials, then a bad one the median pruner must stop
        for epoch in range(1, trial.epochs + 1):
            try:
                trial.report_epoch(epoch, knn_accuracy=0.8 if good else 0.1)
            except optuna.TrialPruned:
                seen.append((trial.number, epoch))
                raise
        return 0.8 if good else 0.1

    cfg = study(tmp_path, n_trials=4, pruning={"name": "median", "warmup_epochs": 2, "args": {"n_startup_trials": 3}})
    found, _ = optimize(objective, cfg)
    pruned = found.trials[3]
    assert pruned.state == optuna.trial.TrialState.PRUNED and seen == [(3, 2)]  # not before the warm-up
    assert pruned.user_attrs["epochs_trained"] == 2 and "median" in pruned.user_attrs["reason"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.data.tags["hpsearch.reason"] == pruned.user_attrs["reason"] and run.info.status == "KILLED"


def test_a_metric_of_your_own_as_the_proxy(tmp_path):
    def objective(trial: hpsearch.Trial) -> float:
        assert trial.proxy == "probe_acc"
        for epoch in range(1, trial.epochs + 1):
            trial.report_epoch(epoch, probe_acc=0.1 * epoch, knn_accuracy=0.0)
        return 0.5

    found, _ = optimize(objective, study(tmp_path, n_trials=1, evaluation={"proxy": "probe_acc"}))
    assert found.trials[0].intermediate_values == {e: pytest.approx(0.1 * e) for e in range(1, 5)}


@pytest.mark.parametrize("misuse, reason", [
    (lambda t: (t.report_epoch(1, knn_accuracy=0.5), t.report_epoch(1, knn_accuracy=0.6)), "epoch 1 reported after epoch 1"),
    (lambda t: (t.report_epoch(2, knn_accuracy=0.5), t.report_epoch(1, knn_accuracy=0.6)), "epoch 1 reported after epoch 2"),
    (lambda t: t.report_epoch(5, knn_accuracy=0.5), "epoch must be an integer from 1 to trial.epochs (4), got 5"),
    (lambda t: t.report_epoch(1, knn_accuracy="high"), "knn_accuracy must be a number, got str"),
    (lambda t: t.report_epoch(1), "no metric given"),
    (lambda t: t.save_checkpoint(1, {"model": object()}), "safe loading refuses"),
])
def test_misuse_fails_the_trial_with_a_reason_that_says_what_was_expected(tmp_path, misuse, reason):
    def objective(trial: hpsearch.Trial) -> float:
        misuse(trial)
        return 1.0

    found, _ = optimize(objective, study(tmp_path, n_trials=1))
    trial = found.trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL and reason in trial.user_attrs["reason"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and reason in run.data.tags["hpsearch.reason"]


def test_a_non_finite_metric_stops_the_trial_as_diverged_and_a_nan_value_fails_it(tmp_path):
    def objective(trial: hpsearch.Trial) -> float:
        trial.report_epoch(1, knn_accuracy=0.5, ssl_loss=1.0)
        if trial.number == 0:
            trial.report_epoch(2, knn_accuracy=0.5, ssl_loss=math.nan)
        return math.nan

    found, out = optimize(objective, study(tmp_path))
    diverged, returned_nan = found.trials
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert diverged.user_attrs["reason"] == "diverged: ssl_loss=nan at epoch 2"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert history(client, diverged.user_attrs["mlflow_run_id"], "ssl_loss") == [(1, 1.0)]  # no NaN logged
    assert history(client, diverged.user_attrs["mlflow_run_id"], "knn_accuracy") == [(1, 0.5), (2, 0.5)]
    assert returned_nan.state == optuna.trial.TrialState.FAIL and "returned nan" in returned_nan.user_attrs["reason"]


def test_an_objective_that_reports_no_epoch_completes_and_says_so(tmp_path):
    found, out = optimize(lambda trial: trial.suggest_float("x", 0, 1), study(tmp_path, n_trials=1))
    assert found.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert "reported no epoch (trial.report_epoch)" in out


def test_checkpoints_follow_checkpoint_every_and_load_back(tmp_path):
    import torch

    loaded = []

    def objective(trial: hpsearch.Trial) -> float:
        loaded.append(trial.load_checkpoint())
        for epoch in range(1, trial.epochs + 1):
            trial.save_checkpoint(epoch, {"w": torch.full((2,), float(epoch))})
            trial.report_epoch(epoch, knn_accuracy=0.5)
        epoch, state = trial.load_checkpoint()
        assert epoch == 4 and torch.equal(state["w"], torch.full((2,), 4.0))
        return 1.0

    optimize(objective, study(tmp_path, n_trials=1, recovery={"checkpoint_every": 2}))
    assert loaded == [None]
    saved = sorted(p.name for p in (tmp_path / "runs" / "checkpoints" / "mine" / "trial-0").glob("*.pt"))
    assert saved == ["epoch00002-step0000002.pt", "epoch00004-step0000004.pt"]  # every 2nd epoch (the last is 4)


def test_hpsearch_resume_and_export_say_they_cannot_run_your_loop(tmp_path):
    optimize(lambda trial: 1.0, study(tmp_path, n_trials=1))
    with pytest.raises(hpsearch.StudyFileError, match="training loop of your own"):
        hpsearch.resume_study("mine", workdir=str(tmp_path / "runs"))
    result = run_cli("export", "mine", "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "enc"), cwd=tmp_path)
    assert result.returncode == 2 and "training loop of your own" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _example(workdir: Path, n_trials: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(EXAMPLE), "--workdir", str(workdir), "--n-trials", str(n_trials)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_the_example_killed_mid_trial_and_run_again_continues_bit_exactly(tmp_path):
    """SIGKILL while trial 1 trains, rerun: the study ends with every trial finished, each epoch of
    each MLflow run logged once, and the killed trial's value equal to an uninterrupted run's."""
    n_trials = 3
    killed_dir = tmp_path / "killed"
    worker = _example(killed_dir, n_trials)
    journal = killed_dir / "checkpoints" / "own_loop" / "trial-1" / "reported.jsonl"
    deadline = time.monotonic() + 300
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 3):
        assert worker.poll() is None, worker.stdout.read()
        assert time.monotonic() < deadline, "trial 1 never reached epoch 3"
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again = _example(killed_dir, n_trials)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "died on this host; it continues from its last checkpoint" in out

    reference = _example(tmp_path / "reference", n_trials)
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out

    storage = f"sqlite:///{killed_dir / 'optuna.db'}"
    found = optuna.load_study(study_name="own_loop", storage=storage)
    assert not found.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    finished = [t for t in found.trials if t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == n_trials
    client = MlflowClient(f"sqlite:///{killed_dir / 'mlflow.db'}")
    for trial in finished:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status in ("FINISHED", "KILLED")
        steps = [step for step, _ in history(client, run.info.run_id, "ssl_loss")]
        assert steps == list(range(1, trial.user_attrs["epochs_trained"] + 1))  # each epoch once
    retry = next(t for t in finished if t.user_attrs.get("retry_of") == 1)
    uninterrupted = optuna.load_study(study_name="own_loop", storage=f"sqlite:///{tmp_path / 'reference' / 'optuna.db'}")
    same = uninterrupted.trials[1]
    assert same.params == retry.params and same.state == retry.state
    if retry.state == optuna.trial.TrialState.COMPLETE:
        assert retry.value == same.value  # resumed from the checkpoint bit-exactly on the CPU
    assert retry.intermediate_values == same.intermediate_values
