"""Honest evaluation: trial values, the best trial and every pruning decision come from the
validation split; the test split is read only to report the chosen configurations, when the study
ends and on demand (`hpsearch report NAME --test`)."""

import io

import optuna
import pytest
import torch

import hpsearch
from hpsearch.data import load_splits
from hpsearch.evaluation import Evaluator
from hpsearch.study.console import Console
from hpsearch.study.on_test import RANDOM_INIT, results_on_test
from hpsearch.study.space import with_values
from hpsearch.training import checkpoint
from hpsearch.training.pretrain import Pretraining
from tests.helpers import run_cli, tiny_study


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 3-trial study of the tiny config, its console output and its work dir."""
    workdir = tmp_path_factory.mktemp("validation") / "runs"
    out = io.StringIO()
    study = hpsearch.run_study(tiny_study(workdir, n_trials=3), console=Console(3, 2, stream=out))
    return study, out.getvalue(), workdir


def test_the_trial_value_is_the_validation_metric_of_the_trained_encoder(finished):
    study, _, workdir = finished
    cfg, _ = hpsearch.load_study(tiny_study(workdir, n_trials=3))
    splits = load_splits(cfg.data)
    best = study.best_trial
    # The kept checkpoint holds the encoder as the trial ended; its validation metric is the value.
    state = checkpoint.load_latest(workdir / "checkpoints" / "tiny" / best.user_attrs["checkpoint_key"],
                                   map_location="cpu")
    session = Pretraining(with_values(cfg, best.params), splits, torch.device("cpu"), best.user_attrs["seed"])
    session.load_state_dict(state["training"])
    evaluator = Evaluator.of(session)
    assert evaluator.final_metric(session.method.backbone, "val").accuracy == best.value
    # ... and the test figure is what was reported for it: a different split, measured the same way.
    on_test = evaluator.final_metric(session.method.backbone, "test").accuracy
    assert results_on_test(study)[str(best.number)]["value"] == on_test


def test_only_the_best_trial_and_the_random_encoder_are_measured_on_test(finished, mlflow_client):
    study, _, workdir = finished
    tested = results_on_test(study)
    assert set(tested) == {str(study.best_trial.number), RANDOM_INIT}  # evaluation.test_top_k defaults to 1
    client = mlflow_client(workdir)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    trials = {int(r.data.tags["hpsearch.trial"]): r for r in runs if "hpsearch.trial" in r.data.tags}
    parent = next(r for r in runs if r.data.tags.get("hpsearch.role") == "study")
    for number, run in trials.items():
        assert run.data.metrics["linear_probe_accuracy"] == study.trials[number].value  # validation
        assert ("test_linear_probe_accuracy" in run.data.metrics) == (number == study.best_trial.number)
    assert parent.data.metrics["test_linear_probe_accuracy"] == tested[str(study.best_trial.number)]["value"]
    assert parent.data.metrics["test_random_init_linear_probe_accuracy"] == tested[RANDOM_INIT]["value"]
    assert parent.data.metrics["best_linear_probe_accuracy"] == study.best_value  # validation


def test_the_final_table_shows_validation_next_to_test(finished):
    study, out, _ = finished
    header = next(line for line in out.splitlines() if line.startswith("#"))
    assert header.split()[:4] == ["#", "state", "val", "test"]
    best = study.best_trial
    test_value = results_on_test(study)[str(best.number)]["value"]
    assert f"best trial {best.number}: validation linear-probe accuracy {best.value:.4f}, test {test_value:.4f}" in out


def test_report_test_measures_more_of_the_best_trials_on_demand(finished):
    study, _, workdir = finished
    done = run_cli("report", "tiny", "--workdir", str(workdir), "--test", "--top", "2", cwd=workdir.parent)
    assert done.returncode == 0, done.stderr
    ranked = sorted(study.trials, key=lambda t: -t.value)[:2]
    tested = results_on_test(optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'optuna.db'}"))
    assert {str(t.number) for t in ranked} <= set(tested)  # the second best is measured now
    for trial in ranked:
        row = next(line.split() for line in done.stdout.splitlines() if line.split()[:1] == [str(trial.number)])
        assert row[1:] == [f"{trial.value:.4f}", f"{tested[str(trial.number)]['value']:.4f}"]


def test_test_top_k_needs_kept_checkpoints(tmp_path):
    with pytest.raises(hpsearch.StudyFileError, match=r"evaluation\.test_top_k: expected at most recovery\.keep_best \(1\)"):
        hpsearch.load_study(tiny_study(tmp_path, **{"evaluation.test_top_k": 2, "recovery.keep_best": 1}))
