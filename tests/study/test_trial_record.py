"""What a study leaves in MLflow and Optuna for the tools users read them with: each sampled value
as a numeric param named as in the search space, and the config kept once."""

from mlflow.tracking import MlflowClient

import hpsearch
from hpsearch.config.study_attrs import study_config
from tests.helpers import tiny_study


def test_each_sampled_value_is_a_param_of_its_own_named_as_in_the_search_space(tmp_path):
    space = {"augment.crop_scale.0": {"type": "float", "low": 0.1, "high": 0.6},
             "training.optimizer.lr": {"type": "float", "low": 0.05, "high": 0.5, "log": True}}
    study = hpsearch.run_study(tiny_study(tmp_path / "runs", n_trials=1, search_space=space, **{"training.epochs": 1}))
    trial = study.trials[0]
    params = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(trial.user_attrs["mlflow_run_id"]).data.params
    # Rule: a numeric axis for parallel coordinates, not only the list param "[0.52, 1.0]".
    assert float(params["augment.crop_scale.0"]) == trial.params["augment.crop_scale.0"]
    assert float(params["training.optimizer.lr"]) == trial.params["training.optimizer.lr"]
    assert params["augment.crop_scale"].startswith("[")  # the flattened config is still there


def test_the_study_keeps_its_config_once_and_the_parent_run_its_yaml(tmp_path):
    import yaml

    study = hpsearch.run_study(tiny_study(tmp_path / "runs", n_trials=1, **{"training.epochs": 1}))
    assert study_config(study) is not None and "hpsearch_config_yaml" not in study.user_attrs
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    path = client.download_artifacts(study.user_attrs["mlflow_study_run_id"], "study/resolved_config.yaml", str(tmp_path))
    assert yaml.safe_load(open(path)) == study_config(study)


def test_optuna_trials_and_studies_stay_readable_while_the_history_stays_with_each_trial(tmp_path):
    """`optuna trials` and `optuna studies` print every user attr in full: the proxy history, the
    config and the test results (thousands of characters a row) are kept where they do not."""
    import subprocess
    import sys
    from pathlib import Path

    from hpsearch.config.study_attrs import proxy_history, test_results

    study = hpsearch.run_study(tiny_study(tmp_path / "runs", n_trials=2, **{"training.epochs": 3,
                                                                          "evaluation.eval_every": 1}))
    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    optuna_cli = str(Path(sys.executable).parent / "optuna")
    listed = {}
    for command in (["trials", "--study-name", "tiny"], ["studies"]):
        result = subprocess.run([optuna_cli, *command, "--storage", url], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        listed[command[0]] = result.stdout
    assert "tiny" in listed["studies"] and listed["trials"].count("COMPLETE") == 2
    for output in listed.values():
        assert "proxy_history" not in output and "hpsearch_config" not in output and "test_class_accuracy" not in output
    assert max(map(len, listed["trials"].splitlines())) < 600  # was ~1,500 for 3 epochs of history
    assert max(map(len, listed["studies"].splitlines())) < 400  # was ~4,000 with the config and test results
    # What calibration, pruners, `hpsearch report` and replay read is all still there.
    assert all([h["epoch"] for h in proxy_history(t)] == [1, 2, 3] for t in study.trials)
    assert study_config(study)["name"] == "tiny" and str(study.best_trial.number) in test_results(study)
