"""Standardizer: fitted on training samples only, exact JSON round trip, dtype policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oefray.ml import scaling
from oefray.ml.scaling import Standardizer
from oefray.ml.windows import train_val_split


@pytest.fixture
def windows_x() -> np.ndarray:
    """(n, L, F) float32 windows with very different feature scales, like A, B, E, S."""
    rng = np.random.default_rng(0)
    loc = np.array([1.0, 17.0, 3e-3, -0.02])
    scale = np.array([0.05, 3.0, 1e-3, 0.03])
    return (loc + scale * rng.standard_normal((4000, 5, 4))).astype(np.float32)


def test_transform_of_training_data_is_standard(windows_x):
    train, _ = train_val_split(len(windows_x), seed=1)
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
    train, val = train_val_split(len(windows_x), seed=1)
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
