"""The `hpsearch` command as users run it: a real process, then the MLflow UI serving its results."""

import json
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
import yaml

from tests.helpers import free_port, process_tree, run_cli, stop_group, tiny_study, wait_until_served


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli")
    cfg = tiny_study(home / "ignored", n_trials=2)
    del cfg["workdir"]  # the default ./hpsearch-runs, relative to where the command runs
    (home / "study.yaml").write_text(yaml.safe_dump(cfg))
    result = run_cli("run", "study.yaml", "--set", "training.epochs=2", cwd=home)
    return home, result


def test_run_prints_progress_table_best_and_ui_command(cli_run):
    home, result = cli_run
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "random-init encoder: linear probe" in out
    assert out.count("COMPLETE") >= 2  # one progress line and one table row per trial
    assert "best trial" in out and "training.optimizer.lr" in out
    assert f"hpsearch ui --workdir {home / 'hpsearch-runs'}" in out
    assert "runs?workflowType=machine_learning" in out
    assert (home / "hpsearch-runs" / "optuna.db").exists() and (home / "hpsearch-runs" / "mlflow.db").exists()


def test_overrides_from_the_command_line_reach_the_trials(cli_run):
    home, _ = cli_run
    # Changing the budget of an existing study changes its search: it needs --force.
    result = run_cli("run", "study.yaml", "--n-trials", "3", "--set", "training.epochs=1",
                     "--set", "evaluation.eval_every=1", "--force", cwd=home)
    assert result.returncode == 0, result.stderr
    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{home / 'hpsearch-runs' / 'optuna.db'}")
    assert len(study.trials) == 3
    assert study.trials[-1].user_attrs["epochs_trained"] == 1


def test_ui_from_the_venv_bin_serves_the_study_as_one_light_process_tree(cli_run):
    home, _ = cli_run
    # A venv's bin/hpsearch called by its full path, with a PATH on which no `mlflow` exists:
    # the UI must come from the interpreter hpsearch runs in.
    hpsearch = os.path.join(os.path.dirname(sys.executable), "hpsearch")
    assert os.path.exists(hpsearch), "install the project (pip install -e .) so that bin/hpsearch exists"
    path = "/usr/bin:/bin"
    assert shutil.which("mlflow", path=path) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"PATH": path}
    port = free_port()
    server = subprocess.Popen([hpsearch, "ui", "--port", str(port)], cwd=home, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_served(base + "/health", server, timeout=90, output=lambda: server.stdout.read().decode())

        # Light: the server and one web worker. MLflow 3.17's defaults add a job runner, 8 huey
        # consumers and 3 more workers (15 processes, ~3.2 GB), which browsing runs never uses.
        tree = process_tree(server.pid)
        assert len(tree) <= 2, tree
        assert not any("huey" in c or "_job_runner" in c for c in tree), tree

        def post(path, body):
            request = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            return json.load(urllib.request.urlopen(request, timeout=10))

        experiments = post("/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
        experiment = next(e for e in experiments if e["name"] == "tiny")
        runs = post("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parents = [r for r, t in zip(runs, tags) if t.get("hpsearch.role") == "study"]
        assert len(parents) == 1
        children = [t for t in tags if t.get("mlflow.parentRunId") == parents[0]["info"]["run_id"]]
        assert len(children) >= 2
        assert urllib.request.urlopen(base + "/", timeout=10).status == 200  # the UI page itself
    finally:
        stop_group(server)


def test_ui_without_results_says_what_to_do(tmp_path):
    result = run_cli("ui", "--workdir", "nothing-here", cwd=tmp_path)
    assert result.returncode == 2
    assert "no MLflow database here" in result.stderr
