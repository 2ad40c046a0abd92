"""``preprocess`` of a gzipped dataset (one streaming task per subject) equals that of the same
dataset as plain ``.nii`` (one task per slab): the same rows, checksums and file bytes, and the
same per-slab progress."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from oefray.config import PreprocessConfig
from oefray.io import features as fio
from oefray.io import scans
from oefray.orchestration.preprocess import plan_slabs, plan_tasks, preprocess

from ..conftest import TINY_SUBJECTS

pytestmark = pytest.mark.ray


def _gunzip_copy(cohort: Path, root: Path, only: str | None = None) -> Path:
    """A copy of ``cohort`` whose ``.nii.gz`` images are plain ``.nii`` (byte for byte the same
    NIfTI); with ``only``, just the files whose name contains it."""
    shutil.copytree(cohort, root)
    for gz in root.rglob("*.nii.gz"):
        if only is None or only in gz.name:
            gz.with_name(gz.name[:-3]).write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    return root


def _record(out: Path) -> dict[str, tuple]:
    """Per subject: rows, content checksum, status counts and each file's SHA-256."""
    subjects = json.loads((out / fio.MANIFEST).read_text())["subjects"]
    return {
        label: (
            e["rows"],
            e["checksum"],
            e["status_counts"],
            {name: f["sha256"] for name, f in e["files"].items()},
        )
        for label, e in subjects.items()
    }


@pytest.fixture(scope="module")
def plain_cohort(tiny_cohort, tmp_path_factory):
    return _gunzip_copy(tiny_cohort, tmp_path_factory.mktemp("plain") / "tiny")


@pytest.mark.parametrize("slab", [1, 5, 40])  # one plane, ragged slabs, more than the depth
def test_gzip_and_plain_give_identical_features(
    tiny_cohort, plain_cohort, ray_local, tmp_path, slab
):
    gz_index = scans.scan_dataset(tiny_cohort)
    plain_index = scans.scan_dataset(plain_cohort)
    gz_subjects, plain_subjects = (
        list(gz_index.scans.values()),
        list(plain_index.scans.values()),
    )
    # the plans differ: one streaming task per gzipped subject, one task per plain slab
    assert len(plan_tasks(gz_subjects, slab)) == len(TINY_SUBJECTS)
    assert plan_tasks(plain_subjects, slab) == plan_slabs(plain_subjects, slab)

    runs = {}
    for name, cohort in (("gzip", tiny_cohort), ("plain", plain_cohort)):
        calls: list[tuple[int, int]] = []
        out = tmp_path / name
        result = preprocess(
            cohort,
            out,
            PreprocessConfig(slab=slab),
            progress=lambda done, total, _msg, calls=calls: calls.append((done, total)),
        )
        assert result.ok and sorted(result.completed) == sorted(TINY_SUBJECTS)
        total = len(plan_slabs(gz_subjects, slab))
        assert calls == [(k, total) for k in range(total + 1)]  # every slab reported, once
        runs[name] = _record(out)
        assert not list(out.glob(f"{fio.STAGING_PREFIX}*"))
    assert runs["gzip"] == runs["plain"]
    assert all(rows > 500 for rows, *_ in runs["gzip"].values())


def test_a_subject_with_gzipped_and_plain_images(tiny_cohort, plain_cohort, ray_local, tmp_path):
    mixed = _gunzip_copy(tiny_cohort, tmp_path / "mixed", only="_echo-2_")
    assert preprocess(mixed, tmp_path / "m", PreprocessConfig(slab=3), subjects=["P4"]).ok
    assert preprocess(plain_cohort, tmp_path / "p", PreprocessConfig(slab=3), subjects=["P4"]).ok
    assert _record(tmp_path / "m") == _record(tmp_path / "p")


def test_a_corrupt_gzip_image_fails_its_subject_only(tiny_cohort, ray_local, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tiny_cohort, root)
    bad = root / "sub-P6" / "anat" / "sub-P6_echo-5_part-mag_MEGRE.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size * 2 // 3])
    out = tmp_path / "f"
    result = preprocess(root, out, PreprocessConfig(slab=2, keep_going=True))
    assert list(result.failed) == ["P6"] and "corrupt or truncated" in result.failed["P6"]
    assert bad.name in result.failed["P6"]
    assert sorted(result.completed) == ["P11", "P3", "P4"]
    assert not fio.scan_dir(out, "P6").exists()
    assert not list(out.glob(f"{fio.STAGING_PREFIX}*"))


def test_read_threads_share_the_idle_cpus():
    from oefray.orchestration.preprocess import MAX_READ_THREADS, read_threads

    assert read_threads(1, 1) == 1  # one worker: one read-ahead thread
    assert read_threads(2, 1) == 2  # one gzipped subject on two workers: both CPUs
    assert read_threads(2, 18) == 1  # a cohort: the subjects' tasks fill the CPUs
    assert read_threads(64, 1) == MAX_READ_THREADS
    assert read_threads(4, 0) == 4 and read_threads(2, 3) == 1
