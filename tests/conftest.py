"""Shared fixtures: a real local Ray runtime (2 CPUs) and small simulated cohorts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

#: Subjects of the test cohorts: two of the paper's training and two of its test subjects.
TINY_SUBJECTS = ("P3", "P4", "P6", "P11")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray runtime with 2 CPUs, started once for the session and stopped after it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A `tiny` BIDS cohort of four subjects (gzipped NIfTI), simulated once per session."""
    from oefray.config import SimulationConfig
    from oefray.orchestration.simulate import simulate_cohort

    out = tmp_path_factory.mktemp("cohort") / "tiny"
    simulate_cohort(out, SimulationConfig(preset="tiny", subjects=TINY_SUBJECTS, seed=7))
    return out


@pytest.fixture(scope="session")
def tiny_features(tiny_cohort, ray_local, tmp_path_factory) -> Path:
    """The `tiny` cohort preprocessed once per session (features with ground truth)."""
    from oefray.config import PreprocessConfig
    from oefray.orchestration.preprocess import preprocess

    out = tmp_path_factory.mktemp("features") / "tiny"
    assert preprocess(tiny_cohort, out, PreprocessConfig(slab=8)).ok
    return out
