"""The features manifest: the raw reader's checks, and FeaturesManifest's typed round trip."""

from __future__ import annotations

import json

import pytest

from oefray.errors import FeaturesError
from oefray.io import features as fio
from oefray.io.manifest import (
    FORMAT,
    MANIFEST,
    FeaturesManifest,
    SubjectRecord,
    read_manifest,
)


def _record(split: str, te=(0.0045, 0.0095)) -> SubjectRecord:
    return SubjectRecord(
        rows=12,
        checksum="xsum64:00000000000000ff",
        status_counts={"0": 11, "3": 1},
        split=split,
        shape=(4, 5, 6),
        affine=((2.0, 0, 0, -4), (0, 2.0, 0, -5), (0, 0, 2.0, -6), (0, 0, 0, 1)),
        echo_times_s=te,
        source_files={"chi": "c.nii.gz"},
        created="2026-12-01T00:00:00+00:00",
    )


def _manifest() -> FeaturesManifest:
    return FeaturesManifest(
        source={"dataset": "/data/bids", "name": "cohort"},
        options={"normalize": "none"},
        has_truth=True,
        columns=list(fio.columns(True)),
    )


def test_manifest_checks(tmp_path):
    assert read_manifest(tmp_path) is None
    assert FeaturesManifest.read(tmp_path) is None
    with pytest.raises(FeaturesError, match="no _manifest.json: not a features folder"):
        FeaturesManifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(FeaturesError, match="malformed manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FeaturesError, match="not an oefray features manifest"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "format_version": 0, "subjects": {}})
    )
    with pytest.raises(FeaturesError, match="format version 0"):
        FeaturesManifest.load(tmp_path)
    with pytest.raises(FeaturesError, match="format version 0"):
        fio.read_features(tmp_path)
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "format_version": 1, "subjects": {}})
    )
    with pytest.raises(FeaturesError, match="features format version 1 is not the supported 3"):
        FeaturesManifest.load(tmp_path)
    # version 2 is read under its own name only (manifest.json), version 3 under _manifest.json
    (tmp_path / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "format_version": 2, "subjects": {}})
    )
    with pytest.raises(FeaturesError, match="features format version 2 is not the supported 3"):
        FeaturesManifest.load(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": FORMAT, "format_version": 3}))
    with pytest.raises(FeaturesError, match="malformed manifest .KeyError"):
        FeaturesManifest.load(tmp_path)


def test_manifest_round_trip_orders_subjects_and_shares_the_echo_scheme(tmp_path):
    m = _manifest()
    m.add_subject("P11", _record("test"), "9.9")
    m.add_subject("P3", _record("train"), "9.9")
    path = m.save(tmp_path)
    assert path == tmp_path / MANIFEST
    raw = read_manifest(tmp_path)
    assert raw is not None and list(raw["subjects"]) == ["P3", "P11"]  # natural order
    assert raw["echo_times_s"] == [0.0045, 0.0095] and raw["oefray_version"] == "9.9"
    back = FeaturesManifest.load(tmp_path)
    assert back == m
    assert back.checksums == {"P3": "xsum64:00000000000000ff", "P11": "xsum64:00000000000000ff"}
    assert back.split_subjects(tmp_path) == (["P3"], ["P11"])
    # another scheme for one subject: no shared scheme any more
    m.add_subject("P11", _record("test", te=(0.003, 0.006)), "9.9")
    assert m.echo_times_s is None


def test_digest_changes_with_options_and_checksums():
    m = _manifest()
    m.add_subject("P3", _record("train"), "1")
    d = m.digest()
    assert len(d) == 16 and int(d, 16) >= 0
    assert m.digest(["P3"]) == d
    m.add_subject("P6", _record("test"), "1")
    assert m.digest(["P3", "P6"]) == m.digest(["P6", "P3"]) == m.digest() != d
    assert m.digest(["P3"]) == d
    m.options = {"normalize": "first-echo"}
    assert m.digest() != d
    m.options = {"normalize": "none"}
    m.add_subject("P3", SubjectRecord(**{**_record("train").__dict__, "checksum": "xsum64:1"}), "1")
    assert m.digest() != d


def test_split_subjects_refuses_empty_sides_and_overlap(tmp_path):
    m = _manifest()
    m.add_subject("P3", _record("train"), "1")
    with pytest.raises(
        FeaturesError, match="need training and test subjects .split: 1 train, 0 test"
    ):
        m.split_subjects(tmp_path)
    m.add_subject("P9", _record(""), "1")
    assert m.split_subjects(tmp_path, test=["P9"]) == (["P3"], ["P9"])
    with pytest.raises(FeaturesError, match="subject.s. not in the features: P10"):
        m.split_subjects(tmp_path, test=["P10"])
    with pytest.raises(FeaturesError, match="subjects both in training and test: P3"):
        m.split_subjects(tmp_path, train=["P3"], test=["P3"])


def test_the_split_is_by_subject_across_sessions(tmp_path):
    """A subject name takes every session of the subject; a session of a training subject
    cannot be a test scan (the subject would leak)."""
    m = _manifest()
    for key, split in (("P3_ses-01", "train"), ("P3_ses-02", "train"), ("P6_ses-01", "test")):
        m.add_subject(key, _record(split), "1")
    assert m.split_subjects(tmp_path) == (["P3_ses-01", "P3_ses-02"], ["P6_ses-01"])
    assert m.split_subjects(tmp_path, train=["P6"], test=["P3"]) == (
        ["P6_ses-01"],
        ["P3_ses-01", "P3_ses-02"],
    )
    with pytest.raises(FeaturesError, match="subjects both in training and test: P3"):
        m.split_subjects(tmp_path, train=["P3_ses-01"], test=["P3_ses-02"])


@pytest.mark.parametrize(
    "label", ["x/../../victim", "..", "P3 ", "", "sub-P3", "P3/", "P3_ses-..", "P3_ses-01/../x"]
)
def test_a_subject_label_that_is_not_a_bids_label_is_refused(tmp_path, label):
    """A hostile manifest cannot make oefray touch a path outside the features folder: its
    labels become folder names, so anything but letters and digits is refused on reading."""
    m = _manifest()
    m.add_subject("P3", _record("train"), "1")
    raw = m.to_dict()
    raw["subjects"][label] = raw["subjects"].pop("P3")
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(FeaturesError, match="is not a BIDS subject label or <subject>_ses-"):
        FeaturesManifest.load(tmp_path)


@pytest.mark.parametrize(
    "name", ["../../victim.parquet", "/etc/passwd", "part-z0000-0004.parquet/..", "x.parquet"]
)
def test_a_file_name_that_is_not_a_slab_file_is_refused(tmp_path, name):
    """File names of the manifest become paths too: only ``part-z<z0>-<z1>.parquet``."""
    m = _manifest()
    m.add_subject("P3", _record("train"), "1")
    raw = m.to_dict()
    raw["subjects"]["P3"]["files"] = {name: {"sha256": "0" * 64, "bytes": 1}}
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(FeaturesError, match="is not a slab file name"):
        FeaturesManifest.load(tmp_path)
