"""The asynchronous rung rule and its thaw policy on a real in-memory Optuna study: running trials
count at a rung (no barrier), a stop is a pause, and a paused trial is promoted once the rung's
quota reaches it."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpsearch.pruning.rungs import PAUSED_ATTR, THAW_ATTR, RungPruner, paused_trials
from hpsearch.pruning.thaw import RungThaw


def _report(study, value: float, step: int = 1) -> optuna.Trial:
    trial = study.ask()
    trial.report(value, step)
    return trial


def test_running_trials_count_at_a_rung_and_a_trial_goes_on_only_in_the_top_third():
    pruner = RungPruner(reduction_factor=3)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    first, second = _report(study, 0.5), _report(study, 0.9)  # both still running
    assert first.should_prune() and second.should_prune()  # 2 at the rung: a quota of 0
    third = _report(study, 0.7)
    assert third.should_prune()  # 3 at the rung, quota 1, and 0.9 (running) is better
    fourth = _report(study, 0.95)
    assert not fourth.should_prune()  # the best of 4: goes on
    assert "paused at rung 1" in pruner.reasons[third.number]


def test_a_paused_trial_is_promoted_when_the_quota_reaches_it_and_counted_once_after():
    pruner = RungPruner(reduction_factor=3)
    study = optuna.create_study(direction="minimize", pruner=pruner)  # a loss: lower is better
    policy = RungThaw(pruner)
    best = _report(study, 0.1)
    assert best.should_prune()
    best.set_user_attr(PAUSED_ATTR, 1)
    study.tell(best, state=TrialState.PRUNED)
    assert policy.choose(study) is None  # alone at the rung: sample a new configuration
    assert policy.choose(study, exhausted=True).number == best.number  # nothing new left: thaw it anyway
    for value in (0.5, 0.6):
        other = _report(study, value)
        assert other.should_prune()
        other.set_user_attr(PAUSED_ATTR, 1)
        study.tell(other, state=TrialState.PRUNED)
    chosen = policy.choose(study)
    assert chosen.number == best.number and "promoted at rung 1" in policy.reasons[best.number]
    study.enqueue_trial({}, user_attrs={THAW_ATTR: best.number})
    thawed = study.ask()
    thawed.report(0.1, 1)
    # One lineage: the rung still holds 3 values, and the paused trial is no longer a candidate.
    assert pruner.rung_values(study.get_trials(deepcopy=False), 1, -1.0) == [-0.5, -0.6, -0.1]
    assert [t.number for t in paused_trials(study.get_trials(deepcopy=False))] == [1, 2]
    assert policy.choose(study) is None  # 0.5 and 0.6 are outside the quota of 1
