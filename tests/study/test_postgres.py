"""A study on PostgreSQL storage (what many machines share), with a password in its URL that must
never be printed, stored in the study or logged to MLflow."""

import json
import subprocess
import sys
import time
import uuid

import optuna
import yaml

from tests.helpers import needs_postgres, pg_storage, tiny_study

URL = "postgresql://root:s3cret-pw@127.0.0.1:5432/test"


pytestmark = needs_postgres(URL)


def test_two_workers_share_a_postgres_study_and_no_password_leaks(tmp_path, mlflow_client):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    cfg = tiny_study(tmp_path / "runs", name=name, n_trials=3, storage=URL)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # Two workers start at once on a fresh work dir: one MLflow backend, one parent run, and the
    # study stops at its total, not at 3 trials per worker.
    workers = [subprocess.Popen([sys.executable, "-m", "hpsearch", "run", "study.yaml"], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [(w.communicate(timeout=600), w.returncode) for w in workers]
    for (out, err), code in results:
        assert code == 0, err
        assert "s3cret-pw" not in out + err
        assert "postgresql://root:***@127.0.0.1:5432/test" in out

    study = optuna.load_study(study_name=name, storage=pg_storage(URL))
    # Each worker stops once the study holds 3 finished trials; one may have been mid-trial then.
    assert 3 <= len(study.trials) <= 4
    assert "s3cret-pw" not in json.dumps(study.user_attrs)

    client = mlflow_client(tmp_path / "runs")
    experiment = client.get_experiment_by_name(name).experiment_id
    runs = client.search_runs([experiment])
    trained = [t for t in study.trials if not t.user_attrs.get("surplus")]  # a surplus trial trains nothing
    assert len(runs) == 1 + len(trained)  # one parent run, one run per trial
    for run in runs:
        assert "s3cret-pw" not in json.dumps([run.data.params, run.data.tags])
    parent = next(r for r in runs if r.data.tags.get("hpsearch.role") == "study")
    artifacts = tmp_path / "runs" / "mlartifacts"
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert "s3cret-pw" not in path.read_text(errors="ignore"), path
    assert parent.info.run_id == study.user_attrs["mlflow_study_run_id"]
    optuna.delete_study(study_name=name, storage=pg_storage(URL))


def test_a_study_run_in_process_holds_no_connection_once_it_returns(tmp_path, pg_study_name):
    """A notebook or a sweep script that runs study after study must not hold each one's pooled
    connections: PostgreSQL refuses clients past max_connections (100 by default)."""
    import hpsearch

    label = f"hpsearch-test-{uuid.uuid4().hex[:8]}"  # this test's connections, as PostgreSQL lists them
    url = f"postgresql://postgres@127.0.0.1:5432/postgres?application_name={label}"

    def connections() -> int:
        with pg_storage().engine.connect() as db:
            return db.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                      (label,)).scalar()

    study = hpsearch.run_study(tiny_study(tmp_path / "runs", name=pg_study_name, n_trials=1, storage=url))
    # A closed connection's server process leaves pg_stat_activity a moment after the client hangs
    # up (the client does not wait for it): a leak stays, a closing connection goes within seconds.
    deadline = time.monotonic() + 10
    while connections() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connections() == 0
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]  # the study is still readable
