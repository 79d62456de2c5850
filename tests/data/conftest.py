"""Fixtures of the data tests."""

from pathlib import Path

import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The test's own decoded-image cache, never ~/.cache (modules opt in with `usefixtures`)."""
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
