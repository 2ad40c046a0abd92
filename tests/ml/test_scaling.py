"""Standardizer: fitted on training samples only, exact JSON round trip, dtype policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oefray.ml import scaling
from oefray.ml.scaling import Standardizer


def _train_rows(n: int) -> np.ndarray:
    """The training rows of the hash split (oefray.ml.split) of n windows."""
    from oefray.ml.split import TRAIN, Split

    return np.flatnonzero(Split(seed=1).assign("P1", np.arange(n)) == TRAIN)


@pytest.fixture
def windows_x() -> np.ndarray:
    """(n, L, F) float32 windows with very different feature scales, like A, B, E, S."""
    rng = np.random.default_rng(0)
    loc = np.array([1.0, 17.0, 3e-3, -0.02])
    scale = np.array([0.05, 3.0, 1e-3, 0.03])
    return (loc + scale * rng.standard_normal((4000, 5, 4))).astype(np.float32)


def test_transform_of_training_data_is_standard(windows_x):
    train = _train_rows(len(windows_x))
    s = Standardizer.fit(windows_x[train])
    z = s.transform(windows_x[train])
    assert z.dtype == np.float32 and z.shape == windows_x[train].shape
    # per feature over samples and window positions; tolerance 1e-5 (float32 arithmetic)
    np.testing.assert_allclose(z.mean(axis=(0, 1), dtype=np.float64), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 1), dtype=np.float64), 1.0, atol=1e-5)
    # statistics equal numpy's float64 ones to 1e-12 relative
    x64 = windows_x[train].astype(np.float64)
    np.testing.assert_allclose(s.mean, x64.mean(axis=(0, 1)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s.std, x64.std(axis=(0, 1)), rtol=1e-12)


def test_validation_statistics_do_not_leak(windows_x):
    train = _train_rows(len(windows_x))
    val = np.setdiff1d(np.arange(len(windows_x)), train)
    shifted = windows_x.copy()
    shifted[val] += np.float32(100.0)  # change only the validation samples
    a = Standardizer.fit(windows_x[train])
    b = Standardizer.fit(shifted[train])
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    # the val transform uses train statistics, so the shift shows up
    assert a.transform(shifted[val]).mean() > 100


def test_chunked_fit_equals_one_pass(windows_x, monkeypatch):
    whole = Standardizer.fit(windows_x)
    monkeypatch.setattr(scaling, "CHUNK_ROWS", 7)
    chunked = Standardizer.fit(windows_x)
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(chunked.std, whole.std, rtol=1e-12)


def test_targets_2d_and_axis_argument():
    rng = np.random.default_rng(2)
    y = rng.normal([0.6, 0.03, 19.0, 1.1, -0.02], [0.05, 0.007, 3, 0.04, 0.02], (500, 5))
    s = Standardizer.fit(y, axis=0)
    assert s.mean.shape == (5,)
    z = s.transform(y)
    assert z.dtype == np.float64
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-12)
    Standardizer.fit(np.zeros((3, 5, 4)) + 1.0, axis=(0, 1))
    with pytest.raises(ValueError, match="axis"):
        Standardizer.fit(y, axis=1)


def test_round_trip_dict_and_inverse(windows_x):
    s = Standardizer.fit(windows_x)
    restored = Standardizer.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_array_equal(restored.mean, s.mean)  # exact through JSON
    np.testing.assert_array_equal(restored.std, s.std)
    back = restored.inverse_transform(s.transform(windows_x))
    assert back.dtype == np.float32
    # 1e-6 relative to each feature's scale (float32 arithmetic)
    np.testing.assert_allclose((back - windows_x) / s.std.astype(np.float32), 0.0, atol=1e-6)
    x64 = windows_x.astype(np.float64)
    np.testing.assert_allclose(s.inverse_transform(s.transform(x64)), x64, rtol=1e-12, atol=1e-15)


def test_constant_feature_is_only_centred():
    x = np.ones((10, 3), dtype=np.float32)
    x[:, 1] = np.arange(10)
    s = Standardizer.fit(x)
    assert s.std[0] == 1.0 and s.std[2] == 1.0
    z = s.transform(x)
    assert np.all(np.isfinite(z)) and np.all(z[:, 0] == 0)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        Standardizer.fit(np.zeros((0, 4)))
    with pytest.raises(ValueError):
        Standardizer.fit(np.array([[1.0, np.nan]]))
    s = Standardizer.fit(np.arange(8.0).reshape(4, 2))
    with pytest.raises(ValueError):
        s.transform(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        Standardizer(mean=np.zeros(2), std=np.array([1.0, 0.0]))


def test_moments_merged_in_any_chunking_equal_numpy_mean_and_variance():
    """Streaming moments (Chan's merge) against numpy's two-pass mean and variance of all rows
    (float64), relative tolerance 1e-12; and the scaler they give equals Standardizer.fit."""
    from oefray.ml.scaling import Moments

    rng = np.random.default_rng(4)
    x = (rng.normal(3.0, 2.0, size=(10_001, 5, 4)) * [1, 10, 1e-3, 1e3]).astype(np.float32)
    rows = x.reshape(-1, 4).astype(np.float64)
    for chunk in (1_000, 3_333, 10_001):
        parts = [Moments.of(x[k : k + chunk]) for k in range(0, len(x), chunk)]
        merged = Moments.combine(parts[::-1], 4)  # any order
        assert merged.n == rows.shape[0]
        np.testing.assert_allclose(merged.mean, rows.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(merged.m2 / merged.n, rows.var(axis=0), rtol=1e-12)
    fitted = Standardizer.fit(x)
    streamed = Standardizer.from_moments(
        Moments.combine([Moments.of(x[:17]), Moments.of(x[17:])], 4)
    )
    np.testing.assert_allclose(streamed.mean, fitted.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, fitted.std, rtol=1e-12)
    again = Moments.from_dict(Moments.of(x).to_dict())
    np.testing.assert_array_equal(again.mean, Moments.of(x).mean)


def test_moments_of_nothing_merge_as_identity_and_refuse_a_scaler():
    from oefray.ml.scaling import Moments

    some = Moments.of(np.ones((3, 2)))
    assert Moments.empty(2).merge(some) is some and some.merge(Moments.empty(2)) is some
    with pytest.raises(ValueError, match="zero samples"):
        Standardizer.from_moments(Moments.empty(2))
    with pytest.raises(ValueError, match="merge"):
        some.merge(Moments.empty(3))
