"""`hpsearch report NAME [--html FILE]` on a real study, and the report the runner leaves on the
study's MLflow parent run."""

import json
import re
import shutil

import optuna

from hpsearch.config import study_attrs  # not its test_results by name: pytest would collect it
from hpsearch.report import study_report
from tests.helpers import run_cli
from tests.report.conftest import EPOCHS


def test_the_terminal_report_lists_every_trial_and_the_compute_pruning_saved(reported_study):
    study, workdir = reported_study
    result = run_cli("report", "tiny", "--workdir", str(workdir), cwd=workdir.parent)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("study 'tiny': 3 complete, 1 pruned; best trial 0")
    # The leaderboard: every trial with its state, value (complete) and epochs, best first.
    rows = [line for line in out.splitlines() if re.match(r"  \d+  (COMPLETE|PRUNED|FAIL) ", line)]
    by_value = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: -t.value)
    assert [int(r.split()[0]) for r in rows] == [t.number for t in by_value] + [3]
    for trial in study.trials:
        row = next(r for r in rows if r.split()[0] == str(trial.number))
        assert row.split()[1] == trial.state.name and f"{trial.user_attrs['epochs_trained']}/{EPOCHS}" in row
        if trial.state.name == "COMPLETE":
            assert row.split()[2] == f"{trial.value:.4f}"
        else:
            assert "median pruner" in row  # its reason
    # The best trial's test figure, measured when the study ended.
    assert f"{study_attrs.test_results(study)['0']['value']:.4f}" in rows[0]

    # Compute, computed here from the trials: the budget is 4 finished trials x EPOCHS.
    trained = [t.user_attrs["epochs_trained"] for t in study.trials]
    saved = sum(EPOCHS - t.user_attrs["epochs_trained"] for t in study.trials if t.state.name == "PRUNED")
    assert saved == EPOCHS - 1
    assert (f"epochs: {sum(trained)} trained of the {4 * EPOCHS} that running all 4 finished trials to the end "
            f"takes (4 x {EPOCHS}): {saved} saved by pruning 1 trial(s)") in out
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    per_epoch = sum(t.duration.total_seconds() for t in complete) / (len(complete) * EPOCHS)
    spent = sum(t.duration.total_seconds() for t in study.trials)
    assert f"seconds: {spent:.1f} spent" in out and f"about {saved * per_epoch:.1f} saved by pruning" in out
    assert f"each epoch not trained costs {per_epoch:.2f} s" in out

    # Importances over what varied (the temperature did not), per-class accuracy from MLflow, calibration.
    importances = out.split("hyperparameter importances", 1)[1].split("\n\n", 1)[0]
    assert "model.width" in importances and "training.optimizer.lr" in importances
    assert "objective.temperature" not in importances
    classes = out.split("per-class accuracy of the best 3 trial(s)", 1)[1].split("\n\n", 1)[0]
    assert [line.split()[0] for line in classes.splitlines()[2:]] == [*map(str, range(10)), "worst"]
    worst = study.trials[0].user_attrs["worst_class"]
    assert f"{worst['class']}: {worst['accuracy']:.4f}" in classes.splitlines()[-1]
    assert "Spearman rho" in out


def test_the_html_report_is_one_file_with_embedded_plots(reported_study, tmp_path):
    study, workdir = reported_study
    page = tmp_path / "report.html"
    result = run_cli("report", "tiny", "--workdir", str(workdir), "--html", str(page), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"HTML report: {page}" in result.stdout
    html = page.read_text()
    assert len(re.findall(r"src='data:image/png;base64,", html)) == 4  # importances, history, curves, calibration
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", html)  # nothing to load: opens offline
    for trial in study.trials:
        assert f"<tr class='{trial.state.name}'><td>{trial.number}</td>" in html


def test_the_parent_run_holds_the_report_when_the_study_ends(reported_study, mlflow_client):
    study, workdir = reported_study
    client = mlflow_client(workdir)
    logged = {a.path for a in client.list_artifacts(study.user_attrs["mlflow_study_run_id"], "report")}
    assert logged == {f"report/{name}.png" for name in ("importances", "history", "curves", "calibration")} | {
        "report/report.html"}


def test_an_unwritable_html_path_is_one_line_naming_it(reported_study, tmp_path):
    _, workdir = reported_study
    target = tmp_path / "missing" / "report.html"
    result = run_cli("report", "tiny", "--workdir", str(workdir), "--html", str(target), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    expected = f"hpsearch: error: --html {target}: no such directory {target.parent}"
    assert result.stderr.strip().splitlines() == [expected]


def test_without_its_mlflow_store_the_report_says_so_in_one_line(reported_study, tmp_path):
    _, workdir = reported_study
    shutil.copy(workdir / "optuna.db", tmp_path / "optuna.db")  # the Optuna storage alone, moved elsewhere
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    out = study_report(study, workdir=str(tmp_path))
    notes = [line for line in out.splitlines() if "per-class accuracy not shown" in line]
    assert len(notes) == 1 and "mlflow.db: no such file" in notes[0]
    assert not (tmp_path / "mlflow.db").exists()  # a report reads: it created no store
    assert "worst" in out  # the worst class is kept with the Optuna trial


def test_json_still_prints_the_calibration_records(reported_study, tmp_path):
    _, workdir = reported_study
    result = run_cli("report", "tiny", "--workdir", str(workdir), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {r["proxy"] for r in json.loads(result.stdout)} >= {"knn_accuracy"}
