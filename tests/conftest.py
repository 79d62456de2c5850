"""Fixtures shared across the test packages (each package's own live in its conftest.py)."""

from pathlib import Path

import pytest


@pytest.fixture
def mlflow_client(tmp_path):
    def open_client(workdir: Path):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")

    return open_client


@pytest.fixture(scope="session")
def finished_tiny_study(tmp_path_factory) -> Path:
    """The work dir of a finished tiny study (2 trials of 2 epochs), for tests that read one and
    change nothing (or a copy). Its heartbeat beats every second with 1 s of grace, so that a test
    can outwait the grace period of a trial it adds."""
    import hpsearch
    from tests.helpers import tiny_study

    workdir = tmp_path_factory.mktemp("finished") / "runs"
    hpsearch.run_study(tiny_study(workdir, **{"recovery.heartbeat_interval": 1, "recovery.grace_period": 1}))
    return workdir


@pytest.fixture
def pg_study_name(request):
    """A study name of its own on the local PostgreSQL, deleted after the test."""
    import uuid

    import optuna

    from tests.helpers import pg_storage

    name = f"{request.node.name[:20]}-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=pg_storage())
    except KeyError:  # the test failed before the study was made
        pass
