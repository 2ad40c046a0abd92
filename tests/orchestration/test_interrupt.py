"""An interrupted ``oefray preprocess`` (SIGINT, SIGTERM) leaves no half-written subject, and the
re-run completes the cohort with the same content as an undisturbed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from oefray.config import PAPER_SUBJECTS, PreprocessConfig, SimulationConfig
from oefray.io import features as fio
from oefray.orchestration.preprocess import preprocess
from oefray.orchestration.simulate import simulate_cohort

from ..io.features_reference import checksum_subject

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cohort18(tmp_path_factory):
    out = tmp_path_factory.mktemp("c18") / "bids"
    simulate_cohort(out, SimulationConfig(preset="tiny", subjects=PAPER_SUBJECTS, seed=11))
    return out


@pytest.fixture(scope="module")
def reference(cohort18, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "features"
    assert preprocess(cohort18, out, PreprocessConfig(slab=4)).ok
    return fio.read_manifest(out)


def _complete_subjects(out):
    try:
        manifest = fio.read_manifest(out)
    except fio.FeaturesError:
        return 0
    return 0 if manifest is None else len(manifest["subjects"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_no_half_subject(cohort18, reference, ray_local, tmp_path, sig):
    out = tmp_path / "features"
    env = dict(os.environ, RAY_ADDRESS="")
    cmd = [sys.executable, "-m", "oefray.cli", "preprocess", str(cohort18), "--out", str(out)]
    log = tmp_path / "preprocess.err"  # a file: a pipe nobody reads would fill and block it
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [*cmd, "--slab", "1", "--workers", "1"],  # slow on purpose: 288 one-plane tasks
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = time.monotonic() + 240
    while _complete_subjects(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (
        f"run ended before it could be interrupted: {log.read_text()[-2000:]}"
    )
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0

    manifest = fio.read_manifest(out)
    done = set(manifest["subjects"])
    assert 2 <= len(done) < len(PAPER_SUBJECTS)
    on_disk = {p.name.removeprefix("subject=") for p in out.glob("subject=*")}
    assert on_disk == done  # every published subject is recorded, and only those
    for label in done:  # and each is whole: its files hold exactly what the manifest says
        entry = manifest["subjects"][label]
        rows, checksum, _ = checksum_subject(fio.scan_dir(out, label))
        assert (rows, checksum) == (entry["rows"], entry["checksum"])
        assert checksum == reference["subjects"][label]["checksum"]

    # the re-run skips the finished subjects and completes the rest, equal to an undisturbed run
    result = preprocess(cohort18, out, PreprocessConfig(slab=4))
    assert result.ok and set(result.skipped) == done
    assert set(result.completed) == set(PAPER_SUBJECTS) - done
    final = fio.read_manifest(out)
    assert {s: e["checksum"] for s, e in final["subjects"].items()} == {
        s: e["checksum"] for s, e in reference["subjects"].items()
    }
    assert not list(out.glob(f"{fio.STAGING_PREFIX}*"))
