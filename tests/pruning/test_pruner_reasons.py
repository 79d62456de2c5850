"""A pruned trial's reason says what it was compared with (issue 10: `median pruner: kNN 0.7700 at
epoch 3` did not give the median)."""

import optuna
import pytest

from hpsearch.pruning.pruners import build_pruner, explain


def study_with_complete_trials(pruner, finals: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in finals:
        trial = study.ask()
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
        study.tell(trial, curve[-1])
    return study


@pytest.mark.parametrize(("name", "args", "bar", "words"), [
    ("median", {}, 0.6, "below the median 0.6000"),  # the median of 0.5, 0.6, 0.7 at step 2
    ("percentile", {"percentile": 25.0}, 0.65, "below the 25th-percentile 0.6500"),  # Optuna keeps the top 25%
])
def test_the_reason_names_the_bar_the_trial_fell_below(name, args, bar, words):
    pruner = build_pruner(name, {"n_startup_trials": 0, "n_warmup_steps": 0, **args})
    study = study_with_complete_trials(pruner, [[0.4, 0.5], [0.5, 0.6], [0.6, 0.7]])
    trial = study.ask()
    trial.report(0.3, 1)
    trial.report(0.35, 2)
    assert trial.should_prune()  # the rule the reason explains: best 0.35 < the bar
    reason = explain(study.pruner, study, {1: 0.3, 2: 0.35})
    assert reason.startswith(f"{name if name == 'median' else '25th-percentile'} pruner: best kNN 0.3500 by epoch 2")
    assert words in reason and "of 3 complete trials at epoch 2" in reason


def test_pruners_without_a_bar_over_complete_trials_give_no_explanation():
    study = study_with_complete_trials(build_pruner("hyperband", {}), [[0.4, 0.5]])
    assert explain(study.pruner, study, {1: 0.3}) is None
