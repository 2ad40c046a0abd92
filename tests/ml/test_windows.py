"""Sequence windows: shapes, order, anchors, exclusions, subject boundaries, the split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from oefray.ml.windows import (
    FEATURES,
    TARGETS,
    WindowConfig,
    Windows,
    make_windows,
    make_windows_table,
)


def _columns(m: int, *, start: int = 0, stride: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """One subject's columns with traceable values: feature f of element k is 10*k + f, target
    p of element k is 100*k + p; idx is increasing with gaps (voxels outside the mask)."""
    rng = np.random.default_rng(seed)
    idx = start + stride * np.arange(m, dtype=np.int64) + rng.integers(0, 2, m).cumsum()
    cols: dict[str, np.ndarray] = {"idx": idx, "status": np.zeros(m, dtype=np.int8)}
    k = np.arange(m, dtype=np.float32)
    for f, name in enumerate(FEATURES):
        cols[name] = 10 * k + f
    for p, name in enumerate(TARGETS):
        cols[name] = 100 * k + p
    return cols


def _table(subjects: dict[str, dict[str, np.ndarray]]) -> pa.Table:
    names = ["idx", "status", *FEATURES, *TARGETS]
    data = {"subject": [label for label, c in subjects.items() for _ in range(len(c["idx"]))]}
    for name in names:
        data[name] = np.concatenate([c[name] for c in subjects.values()])
    return pa.table(data)


def test_config_validation():
    assert WindowConfig().length == 5 and WindowConfig().anchor == "centre"
    assert WindowConfig(4, "last").offset == 3 and WindowConfig(5).offset == 2
    for bad in [dict(length=0), dict(length=4), dict(length=3, anchor="middle")]:
        with pytest.raises(ValueError):
            WindowConfig(**bad)


@pytest.mark.parametrize("length", [1, 3, 5, 7])
def test_shapes_and_order_centre(length):
    m = 23
    cols = _columns(m)
    w = make_windows(cols, WindowConfig(length), subject="P3")
    n = m - length + 1
    assert w.x.shape == (n, length, 4) and w.x.dtype == np.float32
    assert w.y.shape == (n, 5) and w.y.dtype == np.float32
    assert w.idx.dtype == np.int64 and w.subject.shape == (n,)
    assert set(w.subject) == {"P3"}
    k = np.arange(n)
    # window k holds sequence elements k .. k + L - 1, features in FEATURES order (exact)
    expected = 10 * (k[:, None, None] + np.arange(length)[None, :, None]) + np.arange(4)
    np.testing.assert_array_equal(w.x, expected.astype(np.float32))
    # centre anchor: element k + L // 2
    anchor = k + length // 2
    np.testing.assert_array_equal(w.y, (100 * anchor[:, None] + np.arange(5)).astype(np.float32))
    np.testing.assert_array_equal(w.idx, cols["idx"][anchor])
    assert (w.n_voxels, w.n_excluded, w.n_no_window) == (m, 0, 2 * (length // 2))


@pytest.mark.parametrize("length", [1, 4, 5])
def test_last_anchor(length):
    m = 17
    cols = _columns(m)
    w = make_windows(cols, WindowConfig(length, "last"))
    n = m - length + 1
    anchor = np.arange(n) + length - 1
    np.testing.assert_array_equal(w.y[:, 0], 100 * anchor)
    np.testing.assert_array_equal(w.idx, cols["idx"][anchor])
    np.testing.assert_array_equal(w.x[:, -1, 0], 10 * anchor)  # the anchor is the last element
    assert w.n_no_window == length - 1


def test_every_eligible_voxel_gets_exactly_one_window():
    m, length = 50, 5
    cols = _columns(m)
    cols["status"][[0, 7, 8, 30, 49]] = [1, 2, 1, 3, 1]
    w = make_windows(cols, WindowConfig(length))
    eligible = cols["idx"][cols["status"] == 0]
    reach = length // 2
    np.testing.assert_array_equal(w.idx, eligible[reach:-reach])  # each once, in order
    assert len(np.unique(w.idx)) == len(w)
    assert len(w) + w.n_excluded + w.n_no_window == w.n_voxels == m


def test_failed_and_non_finite_voxels_are_excluded_and_counted():
    m = 20
    cols = _columns(m)
    cols["status"][3] = 2
    cols["E"][10] = np.nan
    cols["S"][11] = np.inf
    w = make_windows(cols, WindowConfig(3))
    assert w.n_excluded == 3
    dropped = cols["idx"][[3, 10, 11]]
    assert not np.isin(w.idx, dropped).any()
    assert np.all(np.isfinite(w.x))
    # the sequence closes up over dropped voxels: element after 2 is 4
    k2 = int(np.flatnonzero(w.idx == cols["idx"][2])[0])
    np.testing.assert_array_equal(w.x[k2, :, 0], [10, 20, 40])
    assert len(w) == m - 3 - 2


def test_tiny_subject_gives_zero_windows():
    for m in [0, 1, 4]:
        w = make_windows(_columns(m), WindowConfig(5))
        assert w.x.shape == (0, 5, 4) and w.y.shape == (0, 5) and w.idx.shape == (0,)
        assert (w.n_voxels, w.n_excluded, w.n_no_window) == (m, 0, m)


def test_without_targets_needs_no_truth():
    cols = {k: v for k, v in _columns(9).items() if k not in TARGETS}
    w = make_windows(cols, WindowConfig(5), with_targets=False)
    assert w.y is None and len(w) == 5
    with pytest.raises(ValueError, match="missing column"):
        make_windows(cols, WindowConfig(5))


def test_bad_inputs_raise():
    cols = _columns(9)
    cols["idx"] = cols["idx"][::-1].copy()
    with pytest.raises(ValueError, match="sorted"):
        make_windows(cols, WindowConfig(3))
    cols = _columns(9) | {"subject": np.array(["P3"] * 4 + ["P4"] * 5)}
    with pytest.raises(ValueError, match="one subject"):
        make_windows(cols, WindowConfig(3))


def test_subject_boundaries_are_never_crossed():
    a, b = _columns(12, seed=1), _columns(8, start=5, seed=2)
    b = {k: (v + 1000 if k in FEATURES else v) for k, v in b.items()}  # tell subjects apart
    table = _table({"P3": a, "P4": b})
    w = make_windows_table(table, WindowConfig(5))
    assert len(w) == (12 - 4) + (8 - 4)
    assert list(w.subject) == ["P3"] * 8 + ["P4"] * 4
    in_b = w.x[:, :, 0] >= 1000
    assert np.all(in_b.all(axis=1) | (~in_b).all(axis=1))  # no window mixes the two subjects
    np.testing.assert_array_equal(in_b[:, 0], w.subject == "P4")
    assert (w.n_voxels, w.n_excluded, w.n_no_window) == (20, 0, 8)
    # matches the per-subject function
    np.testing.assert_array_equal(w.x[:8], make_windows(a, WindowConfig(5)).x)
    np.testing.assert_array_equal(w.idx[8:], make_windows(b, WindowConfig(5)).idx)


def test_table_subject_selection_and_order():
    table = _table({"P3": _columns(7), "P4": _columns(9), "P5": _columns(2)})
    w = make_windows_table(table, WindowConfig(3), subjects=["P4", "P3"])
    assert list(dict.fromkeys(w.subject)) == ["P4", "P3"]
    assert w.n_voxels == 16
    w_all = make_windows_table(table, WindowConfig(3))
    assert list(dict.fromkeys(w_all.subject)) == ["P3", "P4"]  # P5 has too few voxels
    assert w_all.n_no_window == 2 + 2 + 2
    with pytest.raises(ValueError, match="not in the table"):
        make_windows_table(table, WindowConfig(3), subjects=["P99"])
    empty = make_windows_table(table, WindowConfig(3), subjects=[])
    assert isinstance(empty, Windows) and len(empty) == 0


def test_interleaved_table_rows_are_grouped_by_subject():
    a, b = _columns(6), _columns(6, seed=3)
    t = _table({"P3": a, "P4": b})
    order = np.argsort(np.tile(np.arange(6), 2), kind="stable")  # P3, P4, P3, P4, ...
    w = make_windows_table(t.take(pa.array(order)), WindowConfig(3))
    np.testing.assert_array_equal(w.idx[:4], make_windows(a, WindowConfig(3)).idx)
    np.testing.assert_array_equal(w.idx[4:], make_windows(b, WindowConfig(3)).idx)


def test_cheap_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import oefray.ml, oefray.ml.windows, oefray.ml.scaling, oefray.ml.metrics\n"
        "bad = ('tensorflow', 'keras', 'ray', 'mlflow', 'nibabel')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_dictionary_subject_column_is_accepted():
    table = _table({"P3": _columns(7), "P4": _columns(9)})
    encoded = table.set_column(0, "subject", table["subject"].dictionary_encode())
    a = make_windows_table(table, WindowConfig(3))
    b = make_windows_table(encoded, WindowConfig(3))
    np.testing.assert_array_equal(a.subject, b.subject)
    np.testing.assert_array_equal(a.x, b.x)
