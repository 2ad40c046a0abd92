"""Features Parquet helpers: schema, content checksum, atomic publish, manifest checks."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from oefray.errors import FeaturesError
from oefray.io import features as fio
from oefray.io.integrity import file_record

from .features_reference import checksum_subject


def _cols(idx: np.ndarray, with_truth: bool) -> dict[str, np.ndarray]:
    n = len(idx)
    x, y, z = np.unravel_index(idx, (10, 10, 10))
    cols = {
        "x": x,
        "y": y,
        "z": z,
        "idx": idx,
        "A": np.linspace(0.9, 1.1, n),
        "B": np.linspace(10, 30, n),
        "E": np.full(n, 1e-3),
        "S": np.zeros(n),
        "status": np.zeros(n, np.int8),
    }
    if with_truth:
        cols.update({c: np.full(n, 0.5) for c in fio.TRUTH_COLUMNS})
    return cols


def test_schema_and_columns():
    assert fio.columns(False) == ("subject", "x", "y", "z", "idx", "A", "B", "E", "S", "status")
    assert fio.columns(True)[-5:] == ("Y", "v", "R2", "S0", "chi_nb")
    t = fio.table_from_columns(_cols(np.arange(5), True), True)
    assert t.schema == fio.file_schema(True)
    assert str(t.schema.field("A").type) == "float" and str(t.schema.field("idx").type) == "int64"


def test_checksum_depends_on_content_not_on_file_split(tmp_path):
    idx = np.arange(0, 1000, 3)
    table = fio.table_from_columns(_cols(idx, False), False)
    one, two = tmp_path / "one", tmp_path / "two"
    fio.write_slab_table(one, table, 0, 10)
    fio.write_slab_table(two, table.slice(150), 5, 10)  # the same rows in two files
    fio.write_slab_table(two, table.slice(0, 150), 0, 5)
    n1, h1, s1 = checksum_subject(one)
    n2, h2, s2 = checksum_subject(two)
    assert (n1, s1) == (len(idx), {"0": len(idx)})
    assert (n1, h1, s1) == (n2, h2, s2)
    # one changed value changes the checksum
    cols = _cols(idx, False)
    cols["B"][7] += 1e-3
    three = tmp_path / "three"
    fio.write_slab_table(three, fio.table_from_columns(cols, False), 0, 10)
    assert checksum_subject(three)[1] != h1


def test_write_slab_is_idempotent_and_leaves_no_temporaries(tmp_path):
    t = fio.table_from_columns(_cols(np.arange(10), False), False)
    p1 = fio.write_slab_table(tmp_path, t, 0, 4)
    p2 = fio.write_slab_table(tmp_path, t, 0, 4)
    assert p1 == p2 and p1.name == "part-z0000-0004.parquet"
    assert [p.name for p in tmp_path.iterdir()] == [p1.name]
    assert pq.read_table(p1).equals(t)


def test_publish_replaces_atomically(tmp_path):
    final = tmp_path / "subject=A"
    for value in (1, 2):
        staged = tmp_path / f"stage{value}"
        staged.mkdir()
        (staged / "f").write_text(str(value))
        fio.publish_subject(staged, final)
        assert (final / "f").read_text() == str(value) and not staged.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subject=A"]


def test_read_features_requires_a_manifest(tmp_path):
    with pytest.raises(FeaturesError, match="no manifest.json"):
        fio.read_features(tmp_path)


def test_a_truncated_parquet_file_is_one_line_naming_it(tmp_path):
    import numpy as np

    from oefray.io.manifest import FeaturesManifest, SubjectRecord

    cols = {
        "x": np.zeros(3), "y": np.zeros(3), "z": np.zeros(3), "idx": np.arange(3),
        "A": np.ones(3), "B": np.ones(3), "E": np.ones(3), "S": np.zeros(3),
        "status": np.zeros(3),
    }  # fmt: skip
    path = fio.write_slab_table(
        fio.subject_dir(tmp_path, "P3"), fio.table_from_columns(cols, False), 0, 4
    )
    manifest = FeaturesManifest(
        source={}, options={"normalize": "none"}, has_truth=False, columns=list(fio.columns(False))
    )
    record = SubjectRecord(
        3, "xsum64:0", {"0": 3}, "train", (1, 1, 3), ((1.0,) * 4,) * 4, (0.01, 0.02),
        files={path.name: file_record(path)},
    )  # fmt: skip
    manifest.add_subject("P3", record, "1")
    manifest.save(tmp_path)
    assert fio.read_features(tmp_path).num_rows == 3
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(FeaturesError, match="is 40 bytes.*truncated") as info:
        fio.read_features(tmp_path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
