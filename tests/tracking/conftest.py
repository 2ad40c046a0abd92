"""Fixtures of the tracking tests: one real local SQLite store (no server) and fresh experiments."""

from __future__ import annotations

import uuid

import pytest

from oefray.tracking import Tracker, default_tracking_uri


@pytest.fixture(scope="session")
def tracker(tmp_path_factory) -> Tracker:
    """One SQLite store for the tracking tests (creating its tables takes a few seconds)."""
    return Tracker(default_tracking_uri(tmp_path_factory.mktemp("store")))


@pytest.fixture
def experiment() -> str:
    """A new experiment name (MLflow experiments in tests get unique names)."""
    return f"test-{uuid.uuid4().hex[:10]}"
