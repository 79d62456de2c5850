"""SSL early-stopping rules on hand-made evaluation histories, and one wired into a real study."""

import pytest

import hpsearch
from tests.helpers import tiny_study
from hpsearch.pruning.heuristics import Collapse, NoLearning, Plateau, first_reason, rules_for
from hpsearch.config.schema import HeuristicsConfig


def history(knn=None, std=None):
    n = len(knn or std)
    return [{"epoch": i + 1, **({"knn_accuracy": knn[i]} if knn else {}), **({"normalised_std": std[i]} if std else {})}
            for i in range(n)]


CASES = [
    # (rule, history, stops?, rule it checks)
    (Collapse(0.1, 2), history(std=[0.9, 0.05, 0.04]), True, "below threshold k evaluations in a row"),
    (Collapse(0.1, 2), history(std=[0.05, 0.5, 0.04]), False, "a healthy evaluation resets the count"),
    (Collapse(0.1, 3), history(std=[0.05, 0.04]), False, "not enough evaluations yet"),
    (NoLearning(0.7, 3), history(knn=[0.5, 0.6, 0.7]), True, "at the random-init kNN counts as no learning"),
    (NoLearning(0.7, 3), history(knn=[0.5, 0.6, 0.71]), False, "above the random-init kNN is learning"),
    (NoLearning(0.7, 3), history(knn=[0.5, 0.6]), False, "no verdict before after_epoch (slow starters)"),
    (Plateau(2, 0.01), history(knn=[0.5, 0.8, 0.805, 0.79]), True, "no gain of min_delta in patience evaluations"),
    (Plateau(2, 0.01), history(knn=[0.5, 0.8, 0.805, 0.82]), False, "a gain of min_delta resets the plateau"),
    (Plateau(3, 0.0), history(knn=[0.5, 0.4, 0.3]), False, "not longer than patience yet"),
]


@pytest.mark.parametrize("rule, evaluations, stops, why", CASES, ids=[c[3] for c in CASES])
def test_rule(rule, evaluations, stops, why):
    reason = rule.reason_to_stop(evaluations)
    assert (reason is not None) == stops, why
    if stops:
        assert reason.split(":")[0] in ("collapse", "no learning", "plateau")  # the reason names the rule


def test_collapse_is_not_applied_where_the_method_makes_it_meaningless():
    # VICReg and Barlow Twins regularise the variance directly: their std says nothing.
    rules = rules_for(HeuristicsConfig(), collapse_meaningful=False, random_init_knn=0.5)
    assert not any(isinstance(r, Collapse) for r in rules)
    assert first_reason(rules, history(std=[0.0, 0.0, 0.0])) is None


def test_a_heuristic_stops_a_real_trial_and_says_why(tmp_path, mlflow_client):
    # A collapse threshold no healthy run can meet stops the trial at its second evaluation.
    cfg = tiny_study(tmp_path / "runs", n_trials=1, **{"training.epochs": 4},
                     pruning={"name": "none", "heuristics": {"collapse": {"threshold": 100.0, "patience": 2}}})
    study = hpsearch.run_study(cfg)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epochs_trained"] == 2
    assert trial.user_attrs["reason"].startswith("collapse:")
    run = mlflow_client(tmp_path / "runs").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.tags["hpsearch.reason"].startswith("collapse:") and run.info.status == "KILLED"


def test_the_heuristics_wait_for_the_pruning_warm_up(tmp_path, mlflow_client):
    # The same always-firing collapse rule with pruning.warmup_epochs: 3 (the quickstart's): the
    # rule would stop the trial at epoch 2, but nothing prunes before the warm-up, so it stops at
    # epoch 3, the first epoch the warm-up allows, and not later.
    cfg = tiny_study(tmp_path / "runs", n_trials=1, **{"training.epochs": 4},
                     pruning={"name": "none", "warmup_epochs": 3,
                              "heuristics": {"collapse": {"threshold": 100.0, "patience": 2}}})
    trial = hpsearch.run_study(cfg).trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epochs_trained"] == 3
    assert trial.user_attrs["reason"].startswith("collapse:")
