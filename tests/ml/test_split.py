"""The hash split (oefray.ml.split): determinism, independence of chunking, the fraction it
gives, and the mixing function against a pure-Python reference."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from oefray.ml.split import DROPPED, TRAIN, VAL, Split, scan_hash, unit_interval, window_hash

MASK64 = (1 << 64) - 1


def _reference_hash(key: str, idx: int, seed: int, salt: int) -> int:
    """SplitMix64's finaliser in Python integers (the independent reference)."""

    def mix(z: int) -> int:
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    golden = 0x9E3779B97F4A7C15
    scan = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    base = (scan + idx * golden) & MASK64
    return mix((mix(base) + (seed % 2**64) * golden + salt) & MASK64)


def test_window_hash_matches_the_python_reference():
    idx = np.array([0, 1, 2, 12345, 2**40 + 7])
    for key, seed, salt in (("P1", 0, 0), ("P2_ses-01", 7, 1), ("sub", 2**63 + 5, 2)):
        got = window_hash(key, idx, seed, salt)
        assert got.dtype == np.uint64
        assert [int(v) for v in got] == [_reference_hash(key, int(i), seed, salt) for i in idx]
    assert scan_hash("P1") != scan_hash("P2")


def test_split_is_a_function_of_each_window_alone():
    """Cutting a scan's windows into any chunks (any block or worker layout) gives the same
    parts as splitting them all at once."""
    split = Split(seed=3, val_fraction=0.2)
    idx = np.arange(0, 50_000, 3)
    whole = split.assign("P4", idx)
    for chunk in (1, 7, 1000, len(idx) + 5):
        parts = np.concatenate(
            [split.assign("P4", idx[k : k + chunk]) for k in range(0, len(idx), chunk)]
        )
        np.testing.assert_array_equal(parts, whole)
    shuffled = np.random.default_rng(0).permutation(len(idx))
    np.testing.assert_array_equal(split.assign("P4", idx[shuffled]), whole[shuffled])


def test_validation_share_is_the_fraction_within_binomial_noise():
    n, f = 200_000, 0.2
    part = Split(seed=0, val_fraction=f).assign("P1", np.arange(n))
    assert set(np.unique(part)) == {TRAIN, VAL}
    sd = np.sqrt(n * f * (1 - f))  # binomial
    assert abs((part == VAL).sum() - n * f) < 5 * sd


def test_hash_is_uniform_and_seeds_and_scans_are_independent():
    idx = np.arange(20_000)
    u = unit_interval(window_hash("P1", idx, 0))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3  # scipy's KS test against U(0, 1)
    a = Split(seed=0).assign("P1", idx) == VAL
    b = Split(seed=1).assign("P1", idx) == VAL
    c = Split(seed=0).assign("P2", idx) == VAL
    # independent streams agree on VAL for about f^2 of the windows (0.04), not f (0.2)
    for other in (b, c):
        assert abs((a & other).mean() - 0.04) < 0.01


def test_subsampling_keeps_about_the_share_and_never_moves_a_window_between_parts():
    idx = np.arange(100_000)
    full = Split(seed=5).assign("P3", idx)
    sub = Split(seed=5, train_keep=0.1, val_keep=0.5).assign("P3", idx)
    assert set(np.unique(sub)) == {TRAIN, VAL, DROPPED}
    kept = sub != DROPPED
    np.testing.assert_array_equal(sub[kept], full[kept])
    n_train, n_val = (full == TRAIN).sum(), (full == VAL).sum()
    assert abs((sub == TRAIN).sum() - 0.1 * n_train) < 5 * np.sqrt(n_train * 0.1 * 0.9)
    assert abs((sub == VAL).sum() - 0.5 * n_val) < 5 * np.sqrt(n_val * 0.25)


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1}, {"train_keep": 0.0}, {"val_keep": 2}]
)
def test_bad_split_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        Split(**kwargs)
