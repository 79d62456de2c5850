"""Issue 11 in the replay: the TPE trial carries the replayed configuration's parameters, many workers
count the epochs in progress, `--cost seconds`, and pause / thaw (asha_thaw, calibrated_thaw) in
real in-memory Optuna studies over synthetic curves (tests/replay/synthetic.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from optuna.trial import TrialState

from hpsearch.pruning.rungs import PAUSED_ATTR, THAW_ATTR
from hpsearch.replay.chooser import PROPOSAL_ATTR
from hpsearch.replay.report import replay, summarize
from hpsearch.replay.simulate import simulate, simulate_study, target_value, top_indices
from hpsearch.replay.table import Table, TableError
from tests.replay.synthetic import EPOCHS, make_study, ranked_trials, synthetic_trials

THAW = ("asha_thaw", "calibrated_thaw")


@pytest.fixture(scope="module")
def table() -> Table:
    return Table.from_study(make_study(synthetic_trials(history=True)))


def _replayed(study):
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(PROPOSAL_ATTR)]


def _configuration(table: Table, trial) -> int:
    matches = [i for i, r in enumerate(table.trials) if r.params == trial.params]
    assert len(matches) == 1, (trial.number, trial.params)
    return matches[0]


# -- TPE -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("strategy", ["none", "median", "asha_thaw"])
def test_tpe_trials_carry_the_replayed_configurations_parameters(table, workers, strategy):
    run, study = simulate_study(table, strategy, sampler="tpe", seed=3, workers=workers, horizon=1e9)
    trials = _replayed(study)
    assert len(trials) == run.trials + run.thawed
    for trial in trials:
        recording = table.trials[_configuration(table, trial)]
        # ... and reports that configuration's curve: what TPE learns from is what was run.
        assert trial.intermediate_values == {s: v for s, v in recording.curves["knn_accuracy"].items()
                                             if s in trial.intermediate_values}
        if trial.state == TrialState.COMPLETE:
            assert trial.value == recording.final
    proposals = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(PROPOSAL_ATTR)]
    assert len(proposals) == run.trials and all(t.state == TrialState.FAIL for t in proposals)
    # TPE proposed off-table values; the replaying trials never keep one.
    assert any(t.params not in [r.params for r in table.trials] for t in proposals)


# -- many workers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 4, 7])
def test_many_workers_count_the_epochs_in_progress_when_the_target_finishes(table, workers):
    # Every configuration takes EPOCHS, so without pruning trial k of the order finishes at time
    # EPOCHS * (k // W + 1), when all W workers have worked that long.
    for seed in range(4):
        order = np.random.default_rng(seed).permutation(len(table.trials))
        target = target_value(table, 1.0)
        first = next(k for k, i in enumerate(order) if table.trials[i].final >= target)
        run = simulate(table, "none", seed=seed, workers=workers)
        assert run.epochs_to_target == workers * EPOCHS * (first // workers + 1), seed
        # Finishing together, a wave of trials is recorded at the study's full spend.
        assert [spent for spent, _ in run.completions[:workers]] == [workers * EPOCHS] * workers


def test_idle_workers_spend_nothing(table):
    run = simulate(table, "none", seed=0, workers=1024, horizon=1e9)
    assert run.epochs_to_target == table.budget  # all ran at once: finished together, after the whole budget
    assert run.trials == len(table.trials) and run.completions[-1][0] == table.budget


@pytest.mark.parametrize("workers", [1, 16, 128, 1024])
def test_every_strategy_runs_with_up_to_1024_workers(table, workers):
    summary = summarize(table, replay(table, ["none", "median", "hyperband", *THAW], seeds=2, workers=workers))
    for name, values in summary["strategies"].items():
        assert values["missed_rate"] == 0.0, (name, workers)


# -- cost in seconds -------------------------------------------------------------------------------


def _timed(table: Table) -> Table:
    """The table with a recorded wall clock per trial: 1 s an epoch for odd trials, 3 s for even ones."""
    return dataclasses.replace(table, trials=[dataclasses.replace(r, seconds=float(r.epochs * (3 if i % 2 == 0 else 1)))
                                              for i, r in enumerate(table.trials)])


def test_cost_seconds_charges_each_epoch_its_recorded_seconds(table):
    timed = _timed(table)
    target = target_value(timed, 1.0)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(timed.trials))
        spent, expected = 0.0, None
        for index in order:
            spent += timed.trials[index].seconds
            if timed.trials[index].final >= target:
                expected = spent
                break
        assert simulate(timed, "none", seed=seed, cost="seconds").epochs_to_target == pytest.approx(expected)
        assert simulate(timed, "none", seed=seed).epochs_to_target == EPOCHS * (list(order).index(
            next(i for i in order if timed.trials[i].final >= target)) + 1)
    summary = summarize(timed, replay(timed, ["none", "asha_thaw"], seeds=3, cost="seconds"), "seconds")
    assert summary["cost_unit"] == "seconds" and summary["exhaustive_budget"] == sum(r.seconds for r in timed.trials)
    assert summary["exhaustive_budget_epochs"] == table.budget


def test_cost_seconds_without_timings_is_one_error_naming_the_study(table):
    untimed = dataclasses.replace(table, trials=[dataclasses.replace(r, seconds=None) for r in table.trials])
    with pytest.raises(TableError, match=r"--cost seconds: study 'synthetic' keeps no timings"):
        replay(untimed, ["none"], seeds=1, cost="seconds")


# -- pause and thaw --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", THAW)
@pytest.mark.parametrize("workers", [1, 4])
def test_thaw_replay_is_deterministic_for_a_seed(table, strategy, workers):
    for seed in (0, 1):
        first = simulate(table, strategy, seed=seed, workers=workers, horizon=0.5)
        assert first == simulate(table, strategy, seed=seed, workers=workers, horizon=0.5), seed
        assert first.paused > 0 and first.thawed > 0  # it did pause and thaw
    assert simulate(table, strategy, seed=0, workers=workers) != simulate(table, strategy, seed=1, workers=workers)


@pytest.mark.parametrize("strategy", THAW)
@pytest.mark.parametrize("workers", [1, 3])
def test_a_thaw_continues_where_it_paused_and_costs_only_the_epochs_left(table, strategy, workers):
    # To the end: with nothing new left, paused trials are thawed until every configuration has run
    # to its last epoch, and that costs exactly the exhaustive budget: no epoch is paid twice.
    run, study = simulate_study(table, strategy, seed=5, workers=workers, horizon=1e9, gap=-1.0)
    assert run.completions[-1][0] == table.budget
    assert sorted(f for _, f in run.completions) == sorted(table.finals())
    assert run.trials == len(table.trials) and run.paused == run.thawed > 0
    trials = {t.number: t for t in _replayed(study)}
    for trial in trials.values():
        if THAW_ATTR not in trial.user_attrs:
            continue
        paused = trials[trial.user_attrs[THAW_ATTR]]
        assert paused.state == TrialState.PRUNED and trial.params == paused.params
        at = paused.user_attrs[PAUSED_ATTR]
        assert max(paused.intermediate_values) == at
        # The thawed trial reports the paused curve again, then goes on from the paused epoch.
        assert {s: v for s, v in trial.intermediate_values.items() if s <= at} == paused.intermediate_values
        assert max(trial.intermediate_values) > at
    thawed = [t.user_attrs[THAW_ATTR] for t in trials.values() if THAW_ATTR in t.user_attrs]
    assert len(thawed) == len(set(thawed))  # a paused trial is thawed once


@pytest.mark.parametrize("strategy", THAW)
def test_a_paused_top_configuration_never_thawed_is_lost(table, strategy):
    top = top_indices(table)
    seen = {"lost": False, "kept": False}
    for seed in range(12):
        # Any finished trial is a target and the study stops at 5% of the budget: trials are still paused.
        run, study = simulate_study(table, strategy, seed=seed, workers=2, gap=100.0, horizon=0.05)
        trials = _replayed(study)
        thawed = {t.user_attrs[THAW_ATTR] for t in trials if THAW_ATTR in t.user_attrs}
        still_paused = {_configuration(table, t) for t in trials
                        if PAUSED_ATTR in t.user_attrs and t.number not in thawed}
        finished = {_configuration(table, t) for t in trials if t.state == TrialState.COMPLETE}
        started = {_configuration(table, t) for t in trials}
        assert run.top_pruned == bool(top & still_paused), seed
        assert run.top_lost == bool(top & (started - finished)), seed
        assert run.top_paused == bool(top & {_configuration(table, t) for t in trials if PAUSED_ATTR in t.user_attrs})
        seen["lost" if run.top_pruned else "kept"] = True
    assert seen["lost"], "no seed paused a top configuration: the test shows nothing"


def test_thawing_rescues_a_slow_starting_best_configuration():
    # The best configuration is last at every early epoch: a kill at rung 1 loses it for good, a
    # pause loses it only until the study thaws it.
    table = Table.from_study(make_study(ranked_trials(slow_best=True)))
    summary = summarize(table, replay(table, ["successive_halving", "asha_thaw"], seeds=8))["strategies"]
    assert summary["successive_halving"]["top3_lost_rate"] > 0.5
    assert summary["asha_thaw"]["missed_rate"] == 0.0
    assert summary["asha_thaw"]["top3_paused_rate"] > 0.5 and summary["asha_thaw"]["top3_lost_rate"] == 0.0
    assert math.isfinite(summary["asha_thaw"]["epochs_to_target_median"])
