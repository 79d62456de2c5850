"""`hpsearch server`: a real MLflow tracking server on a fresh PostgreSQL database or the SQLite
default, its password on no command line and in no output, its artifacts proxied, and every
process it started gone after SIGTERM."""

import os
import signal
import uuid

import psycopg
import pytest

from hpsearch.tracking.tracker import Tracker
from tests.helpers import free_port, needs_postgres, is_alive, process_tree, run_cli, tree_pids
from tests.tracking.servers import start_server

PASSWORD = "s3cret-pw"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def tables_of(database: str) -> set[str]:
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}") as connection:
        rows = connection.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return {name for (name,) in rows}


def environment_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.decode().partition("=")[::2] for item in f.read().split(b"\0") if item)


def stops_on(server, sig: int) -> list[int]:
    """Send `sig` to the server alone (a kill, not a terminal's group); the pids still alive after."""
    pids = tree_pids(server.pid)
    os.kill(server.pid, sig)
    server.wait(timeout=60)
    return [pid for pid in pids if is_alive(pid)]


@needs_postgres(ADMIN)
def test_a_fresh_postgres_database_is_created_and_served_without_its_password_showing(tmp_path):
    database = f"hps_{uuid.uuid4().hex[:12]}"
    port, log = free_port(), tmp_path / "server.log"
    server = start_server(tmp_path, port, "--backend-store-uri",
                          f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{database}", log=log)
    try:
        assert {"experiments", "runs", "metrics", "params", "alembic_version"} <= tables_of(database)
        tree = process_tree(server.pid)
        assert any("mlflow server" in c for c in tree) and all(PASSWORD not in c for c in tree), tree
        assert "--host 127.0.0.1" in " ".join(tree)
        # The password travels in the environment (only its user and root can read it), as libpq's.
        assert all(environment_of(pid).get("PGPASSWORD") == PASSWORD for pid in tree_pids(server.pid))
        assert f"(backend postgresql://postgres:***@127.0.0.1:5432/{database}, artifacts " in log.read_text()
        assert f"workers: --tracking-uri http://127.0.0.1:{port}" in log.read_text()

        assert stops_on(server, signal.SIGTERM) == []
        assert PASSWORD not in log.read_text()
    finally:
        server.kill()
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_the_sqlite_default_serves_runs_and_proxies_their_artifacts(tmp_path):
    port, log = free_port(), tmp_path / "server.log"
    server = start_server(tmp_path, port, log=log)
    url = f"http://127.0.0.1:{port}"
    try:
        home = tmp_path / "hpsearch-server"
        assert (home / "mlflow.db").is_file()
        assert (f"MLflow tracking server on {url} (backend sqlite:///{home / 'mlflow.db'}, artifacts "
                f"{home / 'mlartifacts'}); workers: --tracking-uri {url}") in log.read_text().splitlines()

        # A worker with its own work dir: the experiment's artifacts are the server's to place,
        # and what the worker logs lands in the server's artifacts destination.
        tracker = Tracker(url, "served", tmp_path / "worker" / "mlartifacts", retry_seconds=5)
        assert tracker.client.get_experiment(tracker.experiment_id).artifact_location.startswith("mlflow-artifacts:")
        again = Tracker(url, "served", tmp_path / "other" / "mlartifacts")  # a second worker finds it
        assert again.experiment_id == tracker.experiment_id
        run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
        tracker.log_text(run_id, "hello", "study/note.txt")
        assert [p.read_text() for p in (home / "mlartifacts").rglob("note.txt")] == ["hello"]
        assert not (tmp_path / "worker").exists()

        # A call MLflow refuses (a param changed) is an error at once, not an outage to wait out.
        run = tracker.trial_run(run_id, 0, {"lr": 0.1}, ["lr"])
        with pytest.raises(Exception, match="lr"):
            run.log_params({"lr": 0.2})
        assert "unreachable" not in log.read_text()

        assert stops_on(server, signal.SIGINT) == []
    finally:
        server.kill()


def test_an_unreachable_postgres_is_one_line_without_the_password(tmp_path):
    closed = free_port()
    result = run_cli("server", "--port", str(free_port()), "--backend-store-uri",
                     f"postgresql://postgres:{PASSWORD}@127.0.0.1:{closed}/mlflow", cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"hpsearch: error: cannot prepare the MLflow backend "
                                    f"postgresql://postgres:***@127.0.0.1:{closed}/mlflow: ")
    assert len(result.stderr.splitlines()) == 1 and PASSWORD not in result.stderr
