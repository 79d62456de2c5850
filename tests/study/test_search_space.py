"""Sampling a search space in a real in-memory Optuna study, and trial configs built from it."""

import optuna
import pytest

from hpsearch.config.schema import StudyConfig
from hpsearch.study.space import sample, set_path, with_values
from hpsearch.study.studyfile import StudyFileError, load_study

SPACE = {
    "augment.jitter_p": {"type": "categorical", "choices": [0.0, 0.8]},
    "augment.brightness": {"type": "float", "low": 0.1, "high": 0.9, "when": {"augment.jitter_p": 0.8}},
    "training.epochs": {"type": "int", "low": 2, "high": 6, "step": 2},
    "training.optimizer.lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
}


def test_conditional_parameter_is_sampled_only_under_its_condition():
    cfg, _ = load_study({"name": "s", "search_space": SPACE})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = sample(trial, cfg.search_space)
        # The rule: augment.brightness exists exactly when augment.jitter_p == 0.8.
        assert ("augment.brightness" in values) == (values["augment.jitter_p"] == 0.8)
        assert values["training.epochs"] in (2, 4, 6)
        assert 0.01 <= values["training.optimizer.lr"] <= 1.0
        seen.add(values["augment.jitter_p"])
        study.tell(trial, 0.0)
    assert seen == {0.0, 0.8}


def test_sampled_values_land_in_the_trial_config():
    cfg = StudyConfig(name="s")
    trial_cfg = with_values(cfg, {"training.optimizer.lr": 0.02, "augment.crop_scale.0": 0.5})
    assert trial_cfg.training.optimizer.lr == 0.02
    assert trial_cfg.augment.crop_scale == (0.5, 1.0)
    assert cfg.training.optimizer.lr != 0.02  # the study's own config is untouched


def test_set_path_creates_missing_sections():
    tree = {"name": "s"}
    set_path(tree, "training.optimizer.lr", 0.1)
    assert tree == {"name": "s", "training": {"optimizer": {"lr": 0.1}}}


@pytest.mark.parametrize("when, message", [
    ({"augment.flip_p": 0.5}, "categorical parameter declared above"),
    ({"augment.jitter_p": 0.3}, "expected one of [0.0, 0.8]"),
])
def test_bad_conditions_are_rejected(when, message):
    space = dict(SPACE, **{"augment.contrast": {"type": "float", "low": 0.1, "high": 0.5, "when": when}})
    with pytest.raises(StudyFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_study({"name": "s", "search_space": space})


def test_study_defining_fields_cannot_be_searched():
    with pytest.raises(StudyFileError, match="cannot be searched"):
        load_study({"name": "s", "search_space": {"n_trials": {"type": "int", "low": 1, "high": 3}}})


def test_a_study_searches_over_the_method_with_conditional_spaces(tmp_path):
    import hpsearch
    from tests.helpers import tiny_study

    space = {
        "objective.method": {"type": "categorical", "choices": ["simclr", "vicreg"]},
        "objective.temperature": {"type": "float", "low": 0.1, "high": 0.5, "when": {"objective.method": "simclr"}},
        "objective.invariance_weight": {"type": "float", "low": 5, "high": 50, "when": {"objective.method": "vicreg"}},
    }
    cfg = tiny_study(tmp_path / "runs", n_trials=4, search_space=space, sampler={"name": "random"},
                     **{"training.epochs": 1, "data.pretrain_size": 256})
    study = hpsearch.run_study(cfg)
    methods = [t.params["objective.method"] for t in study.trials]
    assert set(methods) == {"simclr", "vicreg"}  # seed 0 draws both
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        # The rule: a method's own parameter is sampled exactly when that method is.
        assert ("objective.temperature" in trial.params) == (trial.params["objective.method"] == "simclr")
        assert ("objective.invariance_weight" in trial.params) == (trial.params["objective.method"] == "vicreg")
