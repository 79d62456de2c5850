"""A real study end to end: SQLite Optuna storage, SQLite MLflow backend, real digits, real training."""

import optuna
import pytest

import hpsearch
from hpsearch.config.study_attrs import proxy_history
from tests.helpers import tiny_study


def children_of(client, experiment_id, parent_run_id):
    runs = client.search_runs([experiment_id], max_results=1000)
    return sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id),
                  key=lambda r: int(r.data.tags["hpsearch.trial"]))


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e") / "runs"
    study = hpsearch.run_study(tiny_study(workdir, n_trials=3))
    return study, workdir


def test_study_holds_the_requested_finished_trials(finished_study):
    study, _ = finished_study
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(study.trials) == 3 and len(trials) == 3
    assert all(0.0 <= t.value <= 1.0 for t in trials)
    # Every proxy at every evaluation stays with the trial (for calibration and pruners).
    history = proxy_history(trials[0])
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"knn_accuracy", "rankme", "alpha_req", "ssl_loss"} <= set(history[0])
    assert 0.0 < study.user_attrs["random_init_linear_probe"] <= 1.0  # the baseline is measured and kept


def test_mlflow_has_one_parent_and_one_child_run_per_trial(finished_study, mlflow_client):
    study, workdir = finished_study
    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], "tags.`hpsearch.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == study.user_attrs["mlflow_study_run_id"]
    children = children_of(client, experiment.experiment_id, parent.info.run_id)
    assert [c.info.run_name for c in children] == ["trial-0", "trial-1", "trial-2"]
    for child, trial in zip(children, study.trials):
        knn_steps = [m.step for m in client.get_metric_history(child.info.run_id, "knn_accuracy")]
        assert knn_steps == [1, 2]  # evaluated every epoch, step = epoch, each step once
        assert child.data.metrics["linear_probe_accuracy"] == pytest.approx(trial.value)
        assert {"ssl_loss", "lr", "epoch_time_s", "rankme", "alpha_req", "alignment", "uniformity",
                "normalised_std"} <= set(child.data.metrics)  # the proxies, at each evaluation
        assert child.data.params["trial_number"] == str(trial.number)
        assert float(child.data.params["training.optimizer.lr"]) == pytest.approx(trial.params["training.optimizer.lr"])
        assert child.data.params["training.epochs"] == "2"  # the fixed config is logged too
        assert child.data.tags["optuna.state"] == "COMPLETE"
        assert child.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] == 3
    assert parent.data.metrics["best_linear_probe_accuracy"] == pytest.approx(study.best_value)
    assert "random_init_linear_probe_accuracy" in parent.data.metrics
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "study")]
    assert "study/resolved_config.yaml" in artifacts


def test_running_again_adds_trials_up_to_the_total_and_reuses_the_parent(finished_study, mlflow_client):
    study, workdir = finished_study
    cfg = tiny_study(workdir, n_trials=4)
    again = hpsearch.run_study(cfg)
    assert len(again.trials) == 4  # one more, not four more
    assert again.user_attrs["mlflow_study_run_id"] == study.user_attrs["mlflow_study_run_id"]
    client = mlflow_client(workdir)
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id], "tags.`hpsearch.role` = 'study'")) == 1
    assert len(children_of(client, experiment.experiment_id, again.user_attrs["mlflow_study_run_id"])) == 4
    # The continued study did not replay the first run's proposals.
    lrs = [t.params["training.optimizer.lr"] for t in again.trials]
    assert len(set(lrs)) == 4
    # A third run with the total already reached trains nothing.
    assert len(hpsearch.run_study(cfg).trials) == 4


def test_a_pruned_trial_is_pruned_in_optuna_and_tagged_in_mlflow(tmp_path, mlflow_client):
    # A threshold no kNN accuracy can reach prunes every trial at the first epoch allowed.
    cfg = tiny_study(tmp_path / "runs", n_trials=1,
                     pruning={"name": "threshold", "args": {"lower": 1.01}, "warmup_epochs": 1})
    study = hpsearch.run_study(cfg)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert study.trials[0].intermediate_values == {1: pytest.approx(study.trials[0].intermediate_values[1])}
    client = mlflow_client(tmp_path / "runs")
    run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert run.data.tags["optuna.state"] == "PRUNED"
    assert run.data.tags["hpsearch.pruned_epoch"] == "1"
    assert "threshold pruner" in run.data.tags["hpsearch.reason"]
    assert run.info.status == "KILLED"
    assert "linear_probe_accuracy" not in run.data.metrics


def test_same_seed_gives_the_same_result_on_cpu(tmp_path):
    values = [hpsearch.run_study(tiny_study(tmp_path / f"runs{i}", n_trials=1)).trials[0].value for i in range(2)]
    assert values[0] == values[1]
