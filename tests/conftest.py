"""Shared fixtures: a real local Ray runtime (2 CPUs) and small simulated cohorts.

Also the guard of the fast subset (``pytest -m 'not ray'``): a test that reaches Ray without the
``ray`` marker is an error, so the subset cannot start Ray again unnoticed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
# before any test module imports Ray: `ray_local`, like a command's own runtime, and the heads
# tests start with `ray start --head` (they inherit it) listen on 127.0.0.1 only
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # runtime.LOOPBACK_SWITCH


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path_factory, monkeypatch):
    """Every test runs in a fresh empty folder of its own: what commands write to the working
    directory by default (results.json, ./mlruns, ./ray_results) never lands in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


#: Subjects of the test cohorts: two of the paper's training and two of its test subjects.
TINY_SUBJECTS = ("P3", "P4", "P6", "P11")


def error_lines(stderr: str) -> list[str]:
    """The ``oefray: error:`` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("oefray: error:")]


_RAY_WAS_UP = pytest.StashKey[bool]()


def _ray_is_up() -> bool:
    """Whether this process holds a Ray runtime (never imports ray: a test that did not load it
    cannot have started it)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _unmarked_ray_message(item: pytest.Item, how: str) -> str:
    return (
        f"{item.nodeid} {how} but is not marked @pytest.mark.ray, so the fast subset "
        "`pytest -m 'not ray'` would start Ray; mark it (or its module's pytestmark)"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test is set up: a test that needs a Ray fixture (``ray_local``,
    a module's ``ray_head``: fixtures that start Ray are named ``ray_*``), directly or through
    another fixture such as ``tiny_features``, must be marked; and remember whether Ray was up."""
    if item.get_closest_marker("ray") is None:
        used = sorted(f for f in getattr(item, "fixturenames", ()) if f.startswith("ray_"))
        if used:
            how = f"uses the Ray fixture {', '.join(used)}"
            pytest.fail(_unmarked_ray_message(item, how), pytrace=False)
    item.stash[_RAY_WAS_UP] = _ray_is_up()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    """After the test: an unmarked test that brought Ray up in this process (``ray.init`` itself,
    or a command run in-process) is an error, reported once its fixtures are torn down."""
    started = (
        item.get_closest_marker("ray") is None
        and not item.stash.get(_RAY_WAS_UP, True)
        and _ray_is_up()
    )
    result = yield
    if started:
        pytest.fail(_unmarked_ray_message(item, "started Ray in the test process"), pytrace=False)
    return result


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray runtime with 2 CPUs, started once for the session and stopped after it;
    on 127.0.0.1 only, as :func:`~oefray.orchestration.runtime.ray_runtime` starts one."""
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


@pytest.fixture(scope="session")
def qsm_forward_cohort(tmp_path_factory) -> Path:
    """A dataset written by qsm-forward 0.32 (``qsm-forward simple``, 16^3, 4 echoes, seeded
    noise), once per session; its layout: :mod:`tests.peer_datasets`."""
    from .peer_datasets import qsm_forward_dataset

    return qsm_forward_dataset(tmp_path_factory.mktemp("peer") / "qsm-forward")


@pytest.fixture(scope="session")
def qsmxt_cohort(tiny_cohort, tmp_path_factory) -> Path:
    """The `tiny` cohort as a dcm2bids/heudiconv + QSMxT user has it (``ses-01``, ``acq-gre``,
    ``run-1``, plain ``.nii``, ``derivatives/qsmxt``; ground truth renamed alike), once per
    session; its layout and mapping: :mod:`tests.peer_datasets`."""
    from .peer_datasets import qsmxt_layout

    return qsmxt_layout(tiny_cohort, tmp_path_factory.mktemp("peer") / "qsmxt")
