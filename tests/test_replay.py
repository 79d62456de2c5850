"""`hpsearch replay` / `hpsearch export`: recorded tables read from real Optuna studies, simulated
studies checked against hand-computed results, the summary and the command as users run it.

Every study here is a real Optuna study (in memory, or SQLite under tmp_path for the command) whose
trials carry synthetic curves from a seeded generator: a latent quality q per configuration,
curve(t) = q * (1 - exp(-t / tau)) + noise, final = q + noise; tau = 3, or 8 for slow starters.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, json_to_distribution
from optuna.trial import TrialState, create_trial

from hpsearch.replay.report import BUDGETS, plot, regret, replay, summarize
from hpsearch.replay.simulate import simulate, target_value, top_indices
from hpsearch.replay import DEFAULT_STRATEGIES
from hpsearch.replay.table import FORMAT, Table, TableError

ROOT = Path(__file__).resolve().parents[1]
SMALL_TABLE = ROOT / "tests" / "data" / "replay_small.json.gz"
ISSUE_KEYS = {"epochs_to_target_median", "epochs_to_target_ratio_vs_none", "regret_at_20pct", "top3_pruned_rate",
              "missed_rate"}
EPOCHS = 10
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "temperature": FloatDistribution(0.05, 1.0),
                 "method": CategoricalDistribution(["simclr", "byol"])}

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- synthetic studies -----------------------------------------------------------------------------


def _synthetic_trials(n: int = 40, seed: int = 0, direction: str = "maximize", history: bool = False,
                      slow_fraction: float = 0.25, noise: float = 0.004) -> list[optuna.trial.FrozenTrial]:
    """Complete trials with curves of a latent quality q; a minimized study records 1 - accuracy (a loss)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, EPOCHS + 1)
    trials = []
    for _ in range(n):
        q = rng.uniform(0.3, 0.9)
        slow = rng.random() < slow_fraction
        curve = q * (1 - np.exp(-steps / (8.0 if slow else 3.0))) + rng.normal(0, noise, EPOCHS)
        final = q + rng.normal(0, noise)
        params = {"lr": float(10 ** rng.uniform(-4, 0)), "temperature": float(rng.uniform(0.05, 1.0)),
                  "method": "byol" if slow else "simclr"}
        if direction == "minimize":
            curve, final = 1 - curve, 1 - final
        attrs = {}
        if history:  # as hpsearch's trial loop records it
            attrs = {"epochs_trained": EPOCHS,
                     "proxy_history": [{"epoch": int(s), "knn_accuracy": float(v), "linear_probe": float(v + 0.02),
                                        "ssl_loss": float(4 - 3 * v)} for s, v in zip(steps, curve)]}
        trials.append(create_trial(params=params, distributions=DISTRIBUTIONS, value=float(final),
                                   intermediate_values={int(s): float(v) for s, v in zip(steps, curve)},
                                   user_attrs=attrs))
    return trials


def _study(trials, direction: str = "maximize", name: str = "synthetic", storage: str | None = None) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction=direction)
    for trial in trials:
        study.add_trial(trial)
    return study


def _diverged_trial(epoch: int = 5) -> optuna.trial.FrozenTrial:
    """Pruned by hpsearch because its loss became NaN at `epoch`: history up to the epoch before."""
    history = [{"epoch": e, "knn_accuracy": 0.1 * e, "linear_probe": 0.1 * e, "ssl_loss": 4.0 - e / 10}
               for e in range(1, epoch)]
    return create_trial(state=TrialState.PRUNED, params={"lr": 0.9, "temperature": 0.5, "method": "simclr"},
                        distributions=DISTRIBUTIONS,
                        intermediate_values={h["epoch"]: h["knn_accuracy"] for h in history},
                        user_attrs={"proxy_history": history, "epochs_trained": epoch,
                                    "reason": f"diverged: loss is nan at epoch {epoch}"})


def _ranked_trials(n: int = 40, seed: int = 1, slow_best: bool = False) -> list[optuna.trial.FrozenTrial]:
    """One configuration (q = 0.9) clearly above the others (q <= 0.8), all on the same fast curve shape
    with little noise, so every early value ranks the finals well; with `slow_best`, the best one
    is instead a very slow starter (last at every early step)."""
    rng = np.random.default_rng(seed)
    qualities = rng.uniform(0.3, 0.8, n)
    best = int(rng.integers(n))
    qualities[best] = 0.9
    steps = np.arange(1, EPOCHS + 1)
    trials = []
    for i, q in enumerate(qualities):
        curve = q * (1 - np.exp(-steps / 3.0)) + rng.normal(0, 0.002, EPOCHS)
        if slow_best and i == best:
            curve = q * (steps / EPOCHS) ** 3
        trials.append(create_trial(params={"lr": float(10 ** rng.uniform(-4, 0))}, distributions={"lr": DISTRIBUTIONS["lr"]},
                                   value=float(q + rng.normal(0, 0.002)),
                                   intermediate_values={int(s): float(v) for s, v in zip(steps, curve)}))
    return trials


@pytest.fixture(scope="module")
def table() -> Table:
    return Table.from_study(_study(_synthetic_trials(history=True)))


@pytest.fixture(scope="module")
def loss_table() -> Table:
    return Table.from_study(_study(_synthetic_trials(seed=3, direction="minimize"), direction="minimize"))


# -- the table -------------------------------------------------------------------------------------


def test_plain_optuna_study_gives_reported_curves_and_counts_left_out_trials():
    complete = _synthetic_trials(n=12, seed=5, direction="minimize")
    extra = [
        create_trial(state=TrialState.PRUNED, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9, 2: 0.8}, user_attrs={"reason": "median pruner: 0.8 at epoch 2"}),
        create_trial(state=TrialState.FAIL, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9}),
        create_trial(state=TrialState.RUNNING, params=complete[0].params, distributions=DISTRIBUTIONS,
                     intermediate_values={1: 0.9, 2: 0.7}),
        create_trial(params=complete[0].params, distributions=DISTRIBUTIONS, value=0.01),  # reported nothing
    ]
    study = _study(complete[:6] + extra + complete[6:], direction="minimize", name="someone-elses")
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
    complete = _synthetic_trials(n=10, seed=6, history=True)
    pruned = create_trial(state=TrialState.PRUNED, params=complete[0].params, distributions=DISTRIBUTIONS,
                          intermediate_values={1: 0.1},
                          user_attrs={"proxy_history": [{"epoch": 1, "knn_accuracy": 0.1}], "epochs_trained": 1,
                                      "reason": "calibrated pruner: P(final >= top-3) = 0.01"})
    study = _study(complete[:4] + [_diverged_trial(5), pruned] + complete[4:])
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
    study = _study(_synthetic_trials(n=1, seed=7) + [_diverged_trial()], name="lonely")
    with pytest.raises(TableError, match="lonely"):
        Table.from_study(study)


@pytest.mark.parametrize("name", ["table.json", "deeper/table.json.gz"])
def test_save_and_load_give_an_equal_table(tmp_path, name):
    original = Table.from_study(_study(_synthetic_trials(n=8, seed=8, history=True) + [_diverged_trial()]),
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
    table = Table.from_study(_study(_synthetic_trials(n=6, seed=9, history=True) + [_diverged_trial(5)]))
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
    table = Table.from_study(_study(_ranked_trials()))
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


# -- the command -----------------------------------------------------------------------------------


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(processes: dict[str, subprocess.Popen]) -> dict[str, subprocess.CompletedProcess]:
    done = {}
    for key, process in processes.items():
        out, err = process.communicate(timeout=300)
        done[key] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every command line of these tests, run as real processes, in parallel where they are independent."""
    home = tmp_path_factory.mktemp("replay-cli")
    url = f"sqlite:///{home / 's.db'}"
    # A study hpsearch did not record (a loss, minimized; a failed trial) and one it did (proxies, a diverged trial).
    _study(_synthetic_trials(seed=11, direction="minimize") + [create_trial(state=TrialState.FAIL)],
           direction="minimize", name="plain", storage=url)
    _study(_synthetic_trials(n=30, seed=12, history=True) + [_diverged_trial()], name="recorded", storage=url)
    Table.from_study(_study(_ranked_trials(seed=2, slow_best=True), name="slow-best")).save(home / "slow.json")
    first = _finish({
        "replay": _start("replay", url, "--study", "plain", "--seeds", "5", "--json", cwd=home),
        "export": _start("export", url, "--study", "recorded", "-o", "out/recorded.json.gz",
                         "--recorded-with", "hpsearch run study.yaml", cwd=home),
        "no-study": _start("replay", url, cwd=home),
        "unknown-study": _start("replay", url, "--study", "nope", cwd=home),
        "unknown-strategy": _start("replay", url, "--study", "plain", "--strategies", "none,fastest", cwd=home),
        "missing-file": _start("replay", f"sqlite:///{home / 'missing.db'}", "--study", "plain", cwd=home),
        "missed": _start("replay", "slow.json", "--strategies", "none,top5_after_1", "--seeds", "8", "--json", cwd=home),
    })
    second = _finish({"file": _start("replay", "out/recorded.json.gz", "--strategies", "none,median,calibrated",
                                     "--seeds", "5", "--json", "--plot", "regret.png", cwd=home)})
    return home, url, {**first, **second}


def test_cli_replays_a_study_in_storage_as_one_json_object(cli):
    home, url, results = cli
    result = results["replay"]
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    summary = json.loads(result.stdout)
    assert {"none", "median", "hyperband", "calibrated"} <= set(summary["strategies"])
    for name, values in summary["strategies"].items():
        assert ISSUE_KEYS <= set(values), name
        assert 0 <= values["top3_pruned_rate"] <= 1 and 0 <= values["missed_rate"] <= 1
    assert summary["strategies"]["none"]["epochs_to_target_ratio_vs_none"] == 1.0
    # The same numbers as the library gives on the same study (hyperband aside: see its own test).
    table = Table.from_study(optuna.load_study(study_name="plain", storage=url))
    assert table.primary == "reported" and table.direction == "minimize" and table.skipped == {"fail": 1}
    expected = summarize(table, replay(table, ["none", "median", "calibrated"], seeds=5))
    for name in ("none", "median", "calibrated"):
        assert summary["strategies"][name] == expected["strategies"][name]


def test_cli_export_then_replay_of_the_file(cli):
    home, url, results = cli
    export, replayed = results["export"], results["file"]
    assert export.returncode == 0, export.stderr
    assert "out/recorded.json.gz: 31 configurations" in export.stdout  # the diverged one too
    exported = Table.load(home / "out" / "recorded.json.gz")
    assert exported.command == "hpsearch run study.yaml" and exported.primary == "knn_accuracy"
    assert len(exported.trials) == 31 and len(exported.finals()) == 30
    from_storage = Table.from_study(optuna.load_study(study_name="recorded", storage=url))
    from_storage.command = exported.command
    assert exported == from_storage

    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert summary == summarize(exported, replay(exported, ["none", "median", "calibrated"], seeds=5))
    image = (home / "regret.png").read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 5000


@pytest.mark.parametrize("key, names", [
    ("no-study", ["--study"]),
    ("unknown-study", ["--study", "'nope'"]),
    ("unknown-strategy", ["--strategies", "'fastest'"]),
    ("missing-file", ["missing.db"]),
])
def test_cli_bad_input_exits_2_with_one_line_naming_it(cli, key, names):
    home, _, results = cli
    result = results[key]
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), result.stderr
    for name in names:
        assert name in lines[0]
    assert result.stdout == ""
    if key == "missing-file":
        assert not (home / "missing.db").exists()


def test_cli_json_stays_json_when_a_strategy_misses_the_target(cli):
    # The best configuration starts slowest: top5_after_1 prunes it in most simulated studies, so its
    # median epochs to target is infinite. The output must still be JSON (RFC 8259 has no Infinity/NaN).
    _, _, results = cli
    result = results["missed"]
    assert result.returncode == 0, result.stderr
    loose = json.loads(result.stdout)
    assert loose["strategies"]["top5_after_1"]["missed_rate"] > 0.5

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    json.loads(result.stdout, parse_constant=refuse)
