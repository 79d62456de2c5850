"""Fixtures shared across the test packages (each package's own live in its conftest.py)."""

from pathlib import Path

import pytest


@pytest.fixture
def mlflow_client(tmp_path):
    def open_client(workdir: Path):
        from mlflow.tracking import MlflowClient

        return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")

    return open_client
