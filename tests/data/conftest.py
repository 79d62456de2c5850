"""Fixtures of the data tests: each test caches decoded images into its own folder, and works on
a private copy of its module's `small_cifar` ImageFolder."""

from pathlib import Path

import pytest

from tests.data.cifar import linked_copy


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """The test's own decoded-image cache, never ~/.cache."""
    monkeypatch.setenv("HPSEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def folder(small_cifar, tmp_path) -> Path:
    """A private copy of the module's small ImageFolder (hard links: fast, and files may be added
    or removed); each module defines `small_cifar` at the size it needs."""
    return linked_copy(small_cifar, tmp_path / "images")
