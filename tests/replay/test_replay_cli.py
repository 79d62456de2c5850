"""`hpsearch replay` / `hpsearch export NAME --table FILE` as users run them: real processes on real
SQLite studies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from hpsearch.replay.report import replay, summarize
from hpsearch.replay.table import Table
from tests.replay.test_replay import ISSUE_KEYS
from tests.replay.synthetic import diverged_trial, make_study, ranked_trials, synthetic_trials


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
    make_study(synthetic_trials(seed=11, direction="minimize") + [create_trial(state=TrialState.FAIL)],
           direction="minimize", name="plain", storage=url)
    make_study(synthetic_trials(n=30, seed=12, history=True) + [diverged_trial()], name="recorded", storage=url)
    Table.from_study(make_study(ranked_trials(seed=2, slow_best=True), name="slow-best")).save(home / "slow.json")
    first = _finish({
        "replay": _start("replay", url, "--study", "plain", "--seeds", "5", "--json", cwd=home),
        "export": _start("export", "recorded", "--storage", url, "--table", "out/recorded.json.gz",
                         "--recorded-with", "hpsearch run study.yaml", cwd=home),
        # The form before `export --out` (encoders) existed, and a command line naming neither output.
        "old-export": _start("export", url, "--study", "recorded", "-o", "old.json.gz", cwd=home),
        "export-neither": _start("export", "recorded", "--storage", url, cwd=home),
        "export-unknown-study": _start("export", "nope", "--storage", url, "--table", "nope.json", cwd=home),
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
    ("old-export", ["is now `hpsearch export recorded --table old.json.gz --storage sqlite:///"]),
    ("export-neither", ["exactly one of --out DIR", "--table FILE"]),
    ("export-unknown-study", ["no study named 'nope'"]),
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
    assert not list(home.glob("old.json*")) and not list(home.glob("nope.json*"))  # nothing written on bad input


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
