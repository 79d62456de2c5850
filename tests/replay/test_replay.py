"""Replay: recorded tables read from real Optuna studies, simulated studies checked against
hand-computed results, and the summary. The studies are real in-memory Optuna studies with
synthetic curves (tests/replay/synthetic.py); the command line is in test_replay_cli.py."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial

from hpsearch.replay.report import BUDGETS, plot, regret, replay, summarize
from hpsearch.replay.simulate import simulate, target_value, top_indices
from hpsearch.replay import DEFAULT_STRATEGIES
from hpsearch.replay.table import FORMAT, Table, TableError
from tests.replay.synthetic import DISTRIBUTIONS, EPOCHS, diverged_trial, make_study, ranked_trials, synthetic_trials

from tests.helpers import ROOT

SMALL_TABLE = Path(__file__).with_name("replay_small.json.gz")
ISSUE_KEYS = {"epochs_to_target_median", "epochs_to_target_ratio_vs_none", "regret_at_20pct", "top3_pruned_rate",
              "top3_lost_rate", "missed_rate"}


@pytest.fixture(scope="module")
def table() -> Table:
    return Table.from_study(make_study(synthetic_trials(history=True)))


@pytest.fixture(scope="module")
def loss_table() -> Table:
    return Table.from_study(make_study(synthetic_trials(seed=3, direction="minimize"), direction="minimize"))

# -- the table -------------------------------------------------------------------------------------


def test_plain_optuna_study_gives_reported_curves_and_counts_left_out_trials():
    complete = synthetic_trials(n=12, seed=5, direction="minimize")
    extra = [
        create_trial(state=TrialState.PRUNED, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9, 2: 0.8}, user_attrs={"reason": "median pruner: 0.8 at epoch 2"}),
        create_trial(state=TrialState.FAIL, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9}),
        create_trial(state=TrialState.RUNNING, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9, 2: 0.7}),
        create_trial(params=complete[0].params, distributions=DISTRIBUTIONS, value=0.01),  # reported nothing
    ]
    study = make_study(complete[:6] + extra + complete[6:], direction="minimize", name="someone-elses")
    table = Table.from_study(study, command="python train.py")

    assert table.study == "someone-elses" and table.direction == "minimize" and table.primary == "reported"
    assert table.command == "python train.py"
    assert table.skipped == {"pruned": 1, "fail": 1, "running": 1, "no intermediate values": 1}
    kept = [t for t in study.trials if t.state == TrialState.COMPLETE and t.intermediate_values]
    assert [r.number for r in table.trials] == [t.number for t in kept]
    for recording, trial in zip(table.trials, kept):
        assert recording.curves == {"reported": trial.intermediate_values}
        assert recording.final == trial.value and recording.params == trial.params
        assert recording.epochs == EPOCHS
    assert table.budget == 12 * EPOCHS
    assert table.best() == min(t.value for t in kept)  # a loss: lower is better
    assert {name: json_to_distribution(text) for name, text in table.space.items()} == DISTRIBUTIONS


def test_hpsearch_history_keeps_every_proxy_and_diverged_trials():
    complete = synthetic_trials(n=10, seed=6, history=True)
    pruned = create_trial(state=TrialState.PRUNED, params=complete[0].params, distributions=DISTRIBUTIONS,
                          intermediate_values={1: 0.1},
                          user_attrs={"proxy_history": [{"epoch": 1, "knn_accuracy": 0.1}], "epochs_trained": 1,
                                      "reason": "calibrated pruner: P(final >= top-3) = 0.01"})
    study = make_study(complete[:4] + [diverged_trial(5), pruned] + complete[4:])
    table = Table.from_study(study)

    assert table.primary == "knn_accuracy" and table.direction == "maximize"
    assert table.skipped == {"pruned": 1}
    assert len(table.trials) == 11
    diverged = table.trials[4]
    assert diverged.number == 4 and diverged.final is None and diverged.epochs == 5
    assert diverged.curves["knn_accuracy"] == {e: 0.1 * e for e in range(1, 5)}
    assert len(table.finals()) == 10 and None not in table.finals()
    for recording, trial in zip([r for r in table.trials if r.final is not None], complete):
        assert set(recording.curves) == {"knn_accuracy", "linear_probe", "ssl_loss"}
        for proxy in recording.curves:
            assert recording.curves[proxy] == {h["epoch"]: h[proxy] for h in trial.user_attrs["proxy_history"]}
        assert recording.final == trial.value


def test_a_study_with_fewer_than_two_finished_trials_is_refused():
    study = make_study(synthetic_trials(n=1, seed=7) + [diverged_trial()], name="lonely")
    with pytest.raises(TableError, match="lonely"):
        Table.from_study(study)


@pytest.mark.parametrize("name", ["table.json", "deeper/table.json.gz"])
def test_save_and_load_give_an_equal_table(tmp_path, name):
    original = Table.from_study(make_study(synthetic_trials(n=8, seed=8, history=True) + [diverged_trial()]),
                                command="hpsearch run study.yaml")
    path = tmp_path / name
    original.save(path)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    assert json.loads(raw)["format"] == FORMAT
    loaded = Table.load(path)
    assert loaded == original
    assert all(isinstance(step, int) for r in loaded.trials for c in r.curves.values() for step in c)


@pytest.mark.parametrize("content", [None, b"not a table at all\n", b"[1, 2, 3]", b'{"format": "something-else/1"}',
                                     gzip.compress(b'{"study": "x"}'), b"\x1f\x8b\x08 truncated gzip"])
def test_loading_something_that_is_not_a_table_names_the_file(tmp_path, content):
    path = tmp_path / "table.json.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TableError) as raised:
        Table.load(path)
    assert str(path) in str(raised.value)


def test_loading_a_table_file_with_missing_fields_names_the_file(tmp_path):
    # A truncated or hand-edited table: the right format tag, but no trials.
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"format": FORMAT, "study": "s", "direction": "maximize", "primary": "reported",
                                "space": {}}))
    with pytest.raises(TableError) as raised:
        Table.load(path)
    assert str(path) in str(raised.value)


# -- one simulated study ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["table", "loss_table"])
@pytest.mark.parametrize("gap", [1.0, 4.0])
def test_no_pruning_with_one_worker_matches_a_hand_computed_search(request, which, gap):
    table = request.getfixturevalue(which)
    finals = [r.final for r in table.trials]
    best = max(finals) if table.direction == "maximize" else min(finals)
    good = [abs(f - best) <= gap / 100 for f in finals]
    for seed in range(6):
        order = np.random.default_rng(seed).permutation(len(table.trials))
        spent, expected, completions = 0, None, []
        for index in order:
            spent += table.trials[index].epochs
            completions.append((spent, finals[index]))
            if good[index]:
                expected = spent
                break
        run = simulate(table, "none", sampler="random", seed=seed, workers=1, gap=gap)
        assert run.epochs_to_target == expected, (seed, gap)
        assert run.completions[:len(completions)] == tuple(completions)
        spent_at = [s for s, _ in run.completions]
        assert spent_at == sorted(spent_at) and len(set(spent_at)) == len(spent_at)
        assert run.pruned == 0 and not run.top_pruned
        # It goes on until `horizon` of the exhaustive budget is spent, replaying the same order.
        assert len(run.completions) == max(len(completions), math.ceil(0.2 * table.budget / EPOCHS))
        assert [f for _, f in run.completions] == [finals[i] for i in order[:len(run.completions)]]


def test_target_and_top_configurations_follow_the_direction(table, loss_table):
    assert target_value(table, 2.0) == pytest.approx(max(table.finals()) - 0.02)
    assert target_value(loss_table, 2.0) == pytest.approx(min(loss_table.finals()) + 0.02)
    assert sorted(table.trials[i].final for i in top_indices(table)) == sorted(table.finals())[-3:]
    assert sorted(loss_table.trials[i].final for i in top_indices(loss_table)) == sorted(loss_table.finals())[:3]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
@pytest.mark.parametrize("workers", [1, 4])
def test_replay_is_deterministic_for_a_seed(table, sampler, workers):
    for strategy in ("none", "median", "calibrated"):
        for seed in (0, 1):
            first = simulate(table, strategy, sampler=sampler, seed=seed, workers=workers)
            again = simulate(table, strategy, sampler=sampler, seed=seed, workers=workers)
            assert first == again, (strategy, seed)
    if sampler == "random":
        runs = {simulate(table, "none", sampler=sampler, seed=seed, workers=workers).completions for seed in range(4)}
        assert len(runs) == 4  # another seed, another order


def test_hyperband_replay_is_deterministic_for_a_seed(table):
    # Optuna's HyperbandPruner puts a trial in a bracket by a hash of the study's *name*; an unnamed
    # in-memory study gets a random one, so the same seed must still give the same run.
    runs = [simulate(table, "hyperband", seed=seed) for seed in range(3) for _ in range(2)]
    assert runs[0::2] == runs[1::2]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_four_workers_run_every_configuration_exactly_once(table, sampler):
    expected = sorted(table.finals())
    # A huge horizon: the study goes on after the target until nothing is left to run.
    run = simulate(table, "none", sampler=sampler, seed=2, workers=4, horizon=1e9)
    assert run.trials == len(table.trials) and run.pruned == 0
    assert sorted(f for _, f in run.completions) == expected  # finals are distinct: each config ran once
    assert run.completions[-1][0] == table.budget
    assert math.isfinite(run.epochs_to_target)
    # A target nobody reaches: every configuration still runs, and the target is missed.
    missed = simulate(table, "none", sampler=sampler, seed=2, workers=4, gap=-1.0)
    assert missed.trials == len(table.trials) and missed.epochs_to_target == math.inf
    assert sorted(f for _, f in missed.completions) == expected
    # With pruning, still no configuration twice.
    pruned = simulate(table, "median", sampler=sampler, seed=2, workers=4, gap=-1.0)
    assert pruned.trials == len(table.trials)
    assert len(pruned.completions) + pruned.pruned == len(table.trials)
    assert len({f for _, f in pruned.completions}) == len(pruned.completions)


def test_a_diverged_recording_costs_its_epochs_and_ends_pruned():
    table = Table.from_study(make_study(synthetic_trials(n=6, seed=9, history=True) + [diverged_trial(5)]))
    run = simulate(table, "none", seed=0, workers=2, horizon=1e9)
    assert run.trials == 7 and run.pruned == 1 and len(run.completions) == 6
    assert table.budget == 6 * EPOCHS + 5 and run.completions[-1][0] <= table.budget


def test_unknown_strategy_or_sampler_is_refused(table):
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        simulate(table, "nope")
    with pytest.raises(ValueError, match="unknown sampler 'grid'"):
        simulate(table, "none", sampler="grid")


# -- many simulated studies ------------------------------------------------------------------------


def test_pruners_trusting_a_good_early_ranking_reach_the_target_sooner():
    table = Table.from_study(make_study(ranked_trials()))
    summary = summarize(table, replay(table, ["none", "top5_after_1", "calibrated"], seeds=20))["strategies"]
    for strategy in ("top5_after_1", "calibrated"):
        assert summary[strategy]["missed_rate"] == 0.0, strategy
        assert summary[strategy]["epochs_to_target_median"] < 0.8 * summary["none"]["epochs_to_target_median"], strategy
        assert summary[strategy]["epochs_to_target_ratio_vs_none"] < 0.8


def test_summary_has_the_fields_of_the_issue(table):
    runs = replay(table, DEFAULT_STRATEGIES, seeds=6)
    summary = summarize(table, runs)
    assert summary["configurations"] == len(table.trials) and summary["exhaustive_budget_epochs"] == table.budget
    assert summary["best"] == table.best()
    assert list(summary["strategies"]) == list(DEFAULT_STRATEGIES)
    for name, values in summary["strategies"].items():
        assert ISSUE_KEYS <= set(values), name
        assert 0 <= values["top3_pruned_rate"] <= 1 and 0 <= values["missed_rate"] <= 1
        # A pruned top configuration is lost; so is one still running when the study ends.
        assert values["top3_pruned_rate"] <= values["top3_lost_rate"] <= 1
        assert values["regret_at_20pct"] == values["regret"]["0.2"] >= 0
        by_budget = [values["regret"][f"{b:g}"] for b in BUDGETS]
        assert by_budget == sorted(by_budget, reverse=True), name  # more budget, never more regret
        assert values["epochs_to_target_median"] == float(np.median([r.epochs_to_target for r in runs[name]]))
    none = summary["strategies"]["none"]
    assert none["epochs_to_target_ratio_vs_none"] == 1.0 and none["missed_rate"] == 0 and none["top3_pruned_rate"] == 0


def test_regret_of_no_pruning_over_the_whole_budget_is_zero(table, loss_table):
    for t in (table, loss_table):
        run = simulate(t, "none", seed=4, horizon=1.0)
        assert regret(t, run, 1.0) == 0
        worst = min(t.finals()) if t.direction == "maximize" else max(t.finals())
        assert regret(t, run, 0.0) == pytest.approx(100 * abs(t.best() - worst))  # nothing finished yet
        assert 0 < regret(t, run, 0.05) <= regret(t, run, 0.0)


def test_replay_gives_the_same_runs_for_any_number_of_jobs(table):
    strategies = ["none", "calibrated"]
    assert replay(table, strategies, seeds=4, jobs=2) == replay(table, strategies, seeds=4, jobs=1)


def test_plot_writes_a_png(table, tmp_path):
    summary = summarize(table, replay(table, ["none", "median"], seeds=2))
    plot({"random, 1 worker(s)": summary, "random, 4 worker(s)": summary}, tmp_path / "regret.png")
    data = (tmp_path / "regret.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_committed_small_table_replays_in_seconds():
    if not SMALL_TABLE.exists():
        pytest.skip(f"{SMALL_TABLE.relative_to(ROOT)} is not committed yet")
    # Real CIFAR-10 curves (31 configurations of studies/cifar10_record.yaml, three methods).
    table = Table.load(SMALL_TABLE)
    assert len(table.trials) == 31 and {r.params["objective.method"] for r in table.trials} == {"simclr", "byol", "vicreg"}
    runs = replay(table, DEFAULT_STRATEGIES, seeds=5)
    summary = summarize(table, runs)
    for name in DEFAULT_STRATEGIES:
        assert ISSUE_KEYS <= set(summary["strategies"][name])
    again = replay(table, ["none", "calibrated"], seeds=5)
    assert again == {name: runs[name] for name in again}
