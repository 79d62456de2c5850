"""Opening the Optuna study: what it records in the storage for other Optuna tools to read."""

import optuna
import pytest

from hpsearch.evaluation import FINAL_METRIC_KEYS
from hpsearch.study.storage import open_study
from hpsearch.study.studyfile import load_study
from tests.helpers import tiny_study


@pytest.mark.parametrize("final_metric", ["linear_probe", "knn", "finetune"])
def test_the_study_names_its_objective_after_the_final_metric(tmp_path, final_metric):
    cfg, _ = load_study(tiny_study(tmp_path, **{"evaluation.final_metric": final_metric}))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_study(cfg, optuna.storages.RDBStorage(url))
    # Read back through a fresh connection, as optuna-dashboard and `optuna trials` do: the name is
    # the key the trial's final metric is logged under in MLflow, not "Objective 0".
    stored = optuna.load_study(study_name=cfg.name, storage=url)
    assert stored.metric_names == [FINAL_METRIC_KEYS[final_metric]]


def test_a_study_created_without_a_metric_name_gets_one_when_continued(tmp_path):
    cfg, _ = load_study(tiny_study(tmp_path))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name=cfg.name, storage=url, direction="maximize")  # as older hpsearch did
    assert optuna.load_study(study_name=cfg.name, storage=url).metric_names is None
    open_study(cfg, optuna.storages.RDBStorage(url))
    # Continuing names it; the rule: every open sets the name the study file's final metric implies.
    assert optuna.load_study(study_name=cfg.name, storage=url).metric_names == ["linear_probe_accuracy"]
