"""The calibrated pruner inside real in-memory Optuna studies (ask, report, should_prune, tell)."""

import json
import math

import numpy as np
import optuna
import pytest

from hpsearch.pruning.calibrated import CalibratedPruner
from hpsearch.pruning.calibration import HISTORY_ATTR

EPOCHS = 20


def saturating(level: float, rate: float = 0.5):
    return lambda t: level * (1 - math.exp(-rate * t))


def finish(study, curve, final=None, params=None, proxies=None):
    """One trial reported step by step through the real Optuna API, then completed."""
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)} if params is None else params)
    history = []
    for step in range(1, EPOCHS + 1):
        trial.report(curve(step), step)
        history.append({"epoch": step, "knn_accuracy": curve(step), **({k: f(step) for k, f in proxies.items()} if proxies else {})})
    trial.set_user_attr(HISTORY_ATTR, history)
    study.tell(trial, curve(EPOCHS) if final is None else final)


def first_prune(study, curve, params=None, with_history=True):
    """Report `curve` until the pruner stops the trial; the step it stopped at (None = ran to the end)."""
    trial = study.ask(params or {})
    history = []
    for step in range(1, EPOCHS + 1):
        trial.report(curve(step), step)
        if with_history:
            history.append({"epoch": step, "knn_accuracy": curve(step)})
            trial.set_user_attr(HISTORY_ATTR, history)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, curve(EPOCHS))
    return None


def calibrated_study(levels, pruner=None, direction="maximize"):
    study = optuna.create_study(direction=direction, pruner=pruner or CalibratedPruner(min_trials=8, seed=0))
    for level in levels:
        finish(study, saturating(level))
    return study


LEVELS = np.linspace(0.3, 0.8, 12)


def test_cold_start_is_a_median_rule_at_rungs():
    study = optuna.create_study(direction="maximize", pruner=CalibratedPruner(min_trials=8, cold_start_trials=5))
    for level in LEVELS[:6]:
        finish(study, saturating(level))
    assert first_prune(study, saturating(0.1)) == 1  # below the median at the first rung
    assert first_prune(study, saturating(0.79)) is None


def test_prunes_a_hopeless_trial_at_the_first_rung_and_says_why():
    pruner = CalibratedPruner(min_trials=8, seed=0)
    study = calibrated_study(LEVELS, pruner)
    assert first_prune(study, saturating(0.2)) == 1
    number = study.trials[-1].number
    assert "knn_accuracy at step 1" in pruner.reasons[number] and "rho 1.00" in pruner.reasons[number]


def test_keeps_a_trial_that_can_reach_the_top():
    assert first_prune(calibrated_study(LEVELS), saturating(0.79)) is None
    assert sorted(LEVELS)[-3] < 0.72  # just above the third best final
    assert first_prune(calibrated_study(LEVELS), saturating(0.72)) is None
    # Within `margin` below it counts too: the final metric is that noisy.
    assert first_prune(calibrated_study(LEVELS), saturating(sorted(LEVELS)[-3] - 0.005)) is None
    assert first_prune(calibrated_study(LEVELS), saturating(sorted(LEVELS)[-3] - 0.05)) == 1


def test_decides_only_at_rungs():
    study = calibrated_study(LEVELS, CalibratedPruner(min_trials=8, seed=0, reduction_factor=3))
    # Good at step 1 (no prune), then collapses: judged next at rung 3, not at step 2.
    collapse = lambda t: 0.79 * (1 - math.exp(-0.5 * t)) if t < 2 else 0.01
    assert first_prune(study, collapse) == 3


def test_never_prunes_where_no_proxy_predicts_the_final():
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", pruner=CalibratedPruner(min_trials=8, seed=0))
    for level in LEVELS:  # finals unrelated to the curves
        finish(study, saturating(level), final=float(rng.uniform(0.3, 0.8)))
    assert first_prune(study, saturating(0.05)) is None


def test_a_slow_starter_is_judged_by_where_its_curve_is_going():
    # First rung at 5: the extrapolation has five evaluations to go on.
    study = calibrated_study(LEVELS, CalibratedPruner(min_trials=8, seed=0, min_resource=5))
    slow = saturating(1.0, rate=0.08)  # reaches ~0.80 at epoch 20, above the top 3
    line_at_5 = slow(5) / (1 - math.exp(-2.5))  # where the finished trials' line puts it: ~0.36
    assert line_at_5 < sorted(LEVELS)[-3] and slow(20) > sorted(LEVELS)[-3]
    assert first_prune(study, slow) is None
    # The same start, then no more climb: pruned at the next rung.
    flat = lambda t: min(slow(t), slow(5))
    assert first_prune(study, flat) == 15


def test_uses_the_most_predictive_proxy():
    pruner = CalibratedPruner(min_trials=4, seed=0)  # other proxies than kNN need 3 * min_trials
    study = optuna.create_study(direction="maximize", pruner=pruner)
    rng = np.random.default_rng(1)
    for level in LEVELS:  # kNN is noise here, while rankme tracks the final exactly
        noise = float(rng.uniform(0.2, 0.6))
        finish(study, lambda t, n=noise: n, final=level, proxies={"rankme": lambda t, v=level: 100 * v})
    trial = study.ask()
    trial.report(0.6, 1)
    trial.set_user_attr(HISTORY_ATTR, [{"epoch": 1, "knn_accuracy": 0.6, "rankme": 5.0}])
    assert trial.should_prune()
    assert "rankme at step 1" in pruner.reasons[trial.number]


def test_plain_optuna_study_minimising_a_loss():
    # No hpsearch proxies: the reported values are the proxy, and lower is better.
    study = optuna.create_study(direction="minimize", pruner=CalibratedPruner(min_trials=8, seed=0))
    for level in LEVELS:
        loss = lambda t, v=level: 1 - saturating(v)(t)
        trial = study.ask()
        for step in range(1, EPOCHS + 1):
            trial.report(loss(step), step)
        study.tell(trial, loss(EPOCHS))
    assert first_prune(study, lambda t: 1 - saturating(0.2)(t), with_history=False) == 1
    assert first_prune(study, lambda t: 1 - saturating(0.79)(t), with_history=False) is None


def test_within_one_method_when_enough_of_it_finished():
    # byol's proxy scale differs from simclr's: pooled, a good byol trial would look bad.
    pruner = CalibratedPruner(min_trials=8, seed=0)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    method = {"objective.method": optuna.distributions.CategoricalDistribution(["simclr", "byol"])}
    for level in LEVELS:
        study.enqueue_trial({"objective.method": "simclr"})
        finish(study, saturating(level), params=method)
        study.enqueue_trial({"objective.method": "byol"})
        finish(study, lambda t, v=level: 0.2 * saturating(v)(t), final=level, params=method)
    study.enqueue_trial({"objective.method": "byol"})
    assert first_prune(study, lambda t: 0.2 * saturating(0.79)(t), params=method) is None
    study.enqueue_trial({"objective.method": "byol"})
    assert first_prune(study, lambda t: 0.2 * saturating(0.2)(t), params=method) == 1


@pytest.mark.parametrize("args", [{"min_trials": 2}, {"min_rho": 1.5}, {"min_probability": 0}, {"reduction_factor": 1},
                                  {"margin": -0.1}])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match=next(iter(args))):
        CalibratedPruner(**args)


def test_hpsearch_run_uses_the_calibrated_pruner_and_reports_its_calibration(tmp_path, mlflow_client):
    """With `pause: false`, the calibrated pruner's stops are final (its pausing form: test_pause_thaw.py)."""
    import hpsearch
    from tests.helpers import run_cli, tiny_study

    # Four trials queued so that the pruner's decisions follow from the design, not from noise: a
    # width-1 encoder reads ~0.45 kNN after one epoch where width 8 reads ~0.75. With min_trials 4
    # the pruner stays in its cold-start median rule for all four, judging from 2 stopped trials on:
    #   0 wide, 1 narrow: fewer than 2 others, no decision, both complete;
    #   2 wide: above the median of (wide, narrow), completes;
    #   3 narrow: below the median of (wide, narrow, wide) at epoch 1, pruned there.
    # (The calibrated rule proper, with its significance test, is driven above on studies big
    # enough for it; 4 real trials cannot reach the |rho| it needs.) The heuristics are off so that
    # only the pruner decides.
    cfg = tiny_study(tmp_path / "runs", n_trials=4, training={"epochs": 3, "batch_size": 128},
                     pruning={"name": "calibrated", "args": {"min_trials": 4, "cold_start_trials": 2, "pause": False},
                              "warmup_epochs": 1,
                              "heuristics": {"collapse": {"enabled": False}, "no_learning": {"enabled": False}}})
    cfg["search_space"]["model.width"] = {"type": "categorical", "choices": [1, 8]}
    (tmp_path / "runs").mkdir()
    queued = optuna.create_study(study_name=cfg["name"], storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}",
                                 direction="maximize")  # `hpsearch run` continues it, taking the queued trials first
    for width in (8, 1, 8, 1):
        queued.enqueue_trial({"training.optimizer.lr": 0.2, "objective.temperature": 0.2, "model.width": width})

    study = hpsearch.run_study(cfg)
    assert isinstance(study.pruner, CalibratedPruner)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"], states
    pruned = study.trials[3]
    # Pruned at the first rung (epoch 1), with the pruner's own reason, on the trial and its MLflow run.
    assert pruned.user_attrs["epochs_trained"] == 1 and max(pruned.intermediate_values) == 1
    assert pruned.user_attrs["reason"].startswith("calibrated pruner (cold start, 3 finished)")
    assert "below the median" in pruned.user_attrs["reason"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    client = mlflow_client(tmp_path / "runs")
    run = client.get_run(pruned.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["hpsearch.reason"] == pruned.user_attrs["reason"]

    # The calibration table is kept on the parent run and printed by `hpsearch report`; it rests on
    # the complete trials only (a pruned trial has no final value to rank).
    parent = client.get_run(study.user_attrs["mlflow_study_run_id"])
    stored = client.download_artifacts(parent.info.run_id, "calibration/calibration.json", str(tmp_path))
    records = json.loads(open(stored).read())
    knn_at_1 = next(r for r in records if r["proxy"] == "knn_accuracy" and r["step"] == 1)
    assert knn_at_1["n"] == len(complete) >= 3
    report = run_cli("report", "tiny", "--workdir", str(tmp_path / "runs"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"{len(complete)} complete, 1 pruned" in report.stdout
    assert "knn_accuracy" in report.stdout and "Spearman rho" in report.stdout
    missing = run_cli("report", "nope", "--workdir", str(tmp_path / "runs"), cwd=tmp_path)
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr
