"""What a study leaves in MLflow and Optuna for the tools users read them with: each sampled value
as a numeric param named as in the search space, and the config kept once."""

from mlflow.tracking import MlflowClient

import hpsearch
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
    assert "hpsearch_config" in study.user_attrs and "hpsearch_config_yaml" not in study.user_attrs
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    path = client.download_artifacts(study.user_attrs["mlflow_study_run_id"], "study/resolved_config.yaml", str(tmp_path))
    assert yaml.safe_load(open(path)) == study.user_attrs["hpsearch_config"]
