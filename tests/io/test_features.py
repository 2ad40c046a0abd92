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
        "i": x,
        "j": y,
        "k": z,
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
    assert fio.columns(False) == ("subject", "i", "j", "k", "idx", "A", "B", "E", "S", "status")
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
    with pytest.raises(FeaturesError, match="no _manifest.json"):
        fio.read_features(tmp_path)


def test_a_truncated_parquet_file_is_one_line_naming_it(tmp_path):
    import numpy as np

    from oefray.io.manifest import FeaturesManifest, SubjectRecord

    cols = {
        "i": np.zeros(3), "j": np.zeros(3), "k": np.zeros(3), "idx": np.arange(3),
        "A": np.ones(3), "B": np.ones(3), "E": np.ones(3), "S": np.zeros(3),
        "status": np.zeros(3),
    }  # fmt: skip
    path = fio.write_slab_table(
        fio.scan_dir(tmp_path, "P3"), fio.table_from_columns(cols, False), 0, 4
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


def test_a_format_2_folder_is_read_with_the_indices_renamed(tmp_path):
    """Folders written before format 3 (``manifest.json``, voxel indices ``x, y, z``) are still
    read: the same values, the indices under their new names ``i, j, k``."""
    import json

    from oefray.io.manifest import LEGACY_MANIFEST, FeaturesManifest, SubjectRecord

    cols = _cols(np.array([3, 17, 999]), True)
    table = fio.table_from_columns(cols, True)
    old = table.rename_columns(["x", "y", "z", *table.column_names[3:]])
    path = fio.scan_dir(tmp_path, "P3") / "part-z0000-0010.parquet"
    path.parent.mkdir()
    pq.write_table(old, path)
    manifest = FeaturesManifest(
        source={}, options={"normalize": "none"}, has_truth=True, columns=list(fio.columns(True))
    )
    record = SubjectRecord(
        3, fio.format_checksum(fio.checksum(old)), {"0": 3}, "train", (10, 10, 10),
        ((1.0,) * 4,) * 4, (0.01, 0.02), files={path.name: file_record(path)},
    )  # fmt: skip
    manifest.add_subject("P3", record, "1")
    raw = manifest.to_dict()
    raw["format_version"] = 2
    raw["columns"] = ["subject", "x", "y", "z", *raw["columns"][4:]]
    (tmp_path / LEGACY_MANIFEST).write_text(json.dumps(raw))
    back = FeaturesManifest.load(tmp_path)
    assert back.format_version == 2 and back.columns == list(fio.columns(True))
    got = fio.read_features(tmp_path)
    assert got.column_names == list(fio.columns(True))
    for name in fio.file_schema(True).names:
        np.testing.assert_array_equal(got[name].to_numpy(), table[name].to_numpy(), err_msg=name)
    assert fio.verify_features(tmp_path).ok
    with pytest.raises(ValueError, match="format-2 manifest is not rewritten"):
        back.save(tmp_path)
