"""Compute spent and saved by pruning: exact epochs, seconds estimated from Optuna durations."""

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.figures.compute import compute_of
from hpsearch.study.retry import finished_trials
from tests.figures.trials import EPOCHS, add


def test_epochs_saved_are_the_pruned_trials_unrun_epochs_and_failures_are_kept_apart(study):
    add(study, TrialState.COMPLETE, value=0.8, epochs=EPOCHS, seconds=40)
    add(study, TrialState.COMPLETE, value=0.7, epochs=EPOCHS, seconds=20)
    add(study, TrialState.PRUNED, epochs=1, seconds=5)
    add(study, TrialState.FAIL, epochs=2, seconds=8)
    compute = compute_of(study, finished_trials(study), EPOCHS)
    # Rule: the budget is every finished trial run to training.epochs; pruning saves the epochs a
    # pruned trial did not train; a failure's unrun epochs are not pruning's saving.
    assert (compute.full_epochs, compute.spent_epochs) == (4 * EPOCHS, 2 * EPOCHS + 1 + 2)
    assert (compute.saved_epochs, compute.unrun_epochs) == (EPOCHS - 1, EPOCHS - 2)
    # Rule: seconds spent are the Optuna durations; an unrun epoch costs the complete trials' mean
    # seconds per epoch (60 s over 2 x EPOCHS epochs).
    assert compute.spent_s == pytest.approx(73)
    assert compute.seconds_per_epoch == pytest.approx(60 / (2 * EPOCHS))
    assert compute.saved_s == pytest.approx((EPOCHS - 1) * 60 / (2 * EPOCHS))
    text = "\n".join(compute.lines())
    assert f"{compute.spent_epochs} trained of the {4 * EPOCHS}" in text and f"{EPOCHS - 1} saved by pruning 1" in text
    assert "mean duration per epoch of the complete trials" in text  # the output says how seconds are estimated


def test_a_retried_trial_counts_once_by_its_retry_but_its_seconds_were_spent(study):
    # Trial 0 was interrupted after 2 epochs; its retry (trial 1) inherited the count and finished.
    add(study, TrialState.FAIL, epochs=2, seconds=6, interrupted=True)
    add(study, TrialState.COMPLETE, value=0.8, epochs=EPOCHS, seconds=7, retry_of=0)
    add(study, TrialState.COMPLETE, value=0.7, epochs=EPOCHS, seconds=12)
    compute = compute_of(study, finished_trials(study), EPOCHS)
    assert (compute.n_trials, compute.full_epochs, compute.spent_epochs) == (2, 2 * EPOCHS, 2 * EPOCHS)
    assert compute.spent_s == pytest.approx(25)  # the replaced trial's time was spent too
    # A retry's duration covers only its own epochs: the rate comes from whole trials.
    assert compute.seconds_per_epoch == pytest.approx(12 / EPOCHS)


def test_a_searched_epoch_budget_is_each_trials_own(study):
    trial = optuna.trial.create_trial(state=TrialState.PRUNED, params={"training.epochs": 6},
                                      distributions={"training.epochs": optuna.distributions.IntDistribution(2, 8)},
                                      user_attrs={"epochs_trained": 2})
    study.add_trial(trial)
    compute = compute_of(study, finished_trials(study), EPOCHS)
    assert (compute.full_epochs, compute.saved_epochs) == (6, 4)


def test_without_a_complete_trial_an_epoch_is_costed_from_the_others_and_without_any_not_at_all(study):
    assert compute_of(study, [], EPOCHS).seconds_per_epoch is None
    add(study, TrialState.PRUNED, epochs=2, seconds=6)
    compute = compute_of(study, finished_trials(study), EPOCHS)
    assert compute.seconds_per_epoch == pytest.approx(3) and "none complete" in "\n".join(compute.lines())
