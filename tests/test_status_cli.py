"""`hpsearch status` as users run it: a real process reading a finished study's storage."""

import json

import pytest

from tests.helpers import run_cli


def test_status_lists_the_study_with_its_counts_and_best(finished_tiny_study):
    result = run_cli("status", "--workdir", str(finished_tiny_study), cwd=finished_tiny_study)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"sqlite:///{finished_tiny_study / 'optuna.db'}: 1 study"
    assert "tiny (maximize linear_probe_accuracy)" in lines
    assert "  trials: 2 complete, 0 pruned, 0 failed, 0 running, 0 waiting" in lines
    assert any(line.startswith("  best: 0.") for line in lines)


def test_status_json_is_for_scripts(finished_tiny_study):
    # The default work dir is ./hpsearch-runs: here, given as --storage instead.
    url = f"sqlite:///{finished_tiny_study / 'optuna.db'}"
    result = run_cli("status", "--storage", url, "--json", cwd=finished_tiny_study)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    (tiny,) = found["studies"]
    assert found["storage"] == url and tiny["name"] == "tiny" and tiny["hpsearch"] is True
    assert tiny["counts"]["COMPLETE"] == 2 and tiny["running"] == [] and tiny["stale"] == []
    assert 0 < tiny["best_value"] <= 1


@pytest.mark.parametrize(("where", "expected"), [
    (["--workdir", "nothing-here"], "no Optuna storage here; pass --workdir or --storage"),
    # a server that is not there: one line, the password masked
    (["--storage", "postgresql://hp:secret@127.0.0.1:1/optuna"], "storage postgresql://hp:***@127.0.0.1:1/optuna: cannot read it"),
])
def test_status_of_no_storage_is_one_line_naming_it(tmp_path, where, expected):
    result = run_cli("status", *where, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr and "secret" not in result.stderr
    assert not (tmp_path / "nothing-here").exists()
