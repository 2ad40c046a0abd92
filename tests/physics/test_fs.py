"""Tests of the static-dephasing function f_s against independent references.

References: direct adaptive quadrature of the Bessel integral (scipy.integrate.quad, QAWS with the
sqrt(1 - u) endpoint weight) and mpmath's hyp1f2 of the closed form.
"""

import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
from scipy import integrate, special

from oefray.physics import fs
from oefray.physics.fs import X_MAX, build_fs_table, f_s, f_s_asymptotic


def _one_minus_j0(y: float) -> float:
    """1 - J0(y) without cancellation for small y (Taylor series, error < 1e-22 for y < 0.01)."""
    if y < 1e-2:
        y2 = y * y
        return y2 / 4.0 * (1.0 - y2 / 16.0 * (1.0 - y2 / 36.0 * (1.0 - y2 / 64.0)))
    return 1.0 - float(special.j0(y))


def fs_quad(x: float) -> float:
    """f_s(x) = (1/3) ∫_0^1 (2+u) sqrt(1-u) / u^2 [1 - J0(1.5 x u)] du by quadrature.

    The sqrt(1 - u) factor is passed as an algebraic endpoint weight (QUADPACK QAWS), which keeps
    quad accurate (~1e-11 against mpmath up to x = 1000) despite the oscillations of J0.
    """
    k = 1.5 * x
    value, _ = integrate.quad(
        lambda u: (2.0 + u) / (u * u) * _one_minus_j0(k * u) / 3.0,
        0.0,
        1.0,
        weight="alg",
        wvar=(0.0, 0.5),
        limit=1000,
        epsabs=1e-13,
        epsrel=1e-13,
    )
    return value


def fs_mpmath(x: float, dps: int = 30) -> float:
    """Closed form 1F2(-1/2; 3/4, 5/4; -9x^2/16) - 1 with mpmath."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(dps):
        xm = mpmath.mpf(float(x))
        return float(mpmath.hyp1f2(-0.5, 0.75, 1.25, -9 * xm**2 / 16) - 1)


@pytest.fixture
def quad_points() -> np.ndarray:
    """200 points: a regular grid and random points on [0, X_MAX], and 20 beyond it."""
    rng = np.random.default_rng(20261125)
    return np.concatenate(
        [
            np.linspace(0.0, X_MAX, 100),
            rng.uniform(0.0, X_MAX, 80),
            [1e-3, 0.05, 0.5, 15.9, 16.1, X_MAX - 1e-9],
            X_MAX + rng.uniform(0.0, 5.0, 4),
            rng.uniform(X_MAX, 400.0, 10),
        ]
    )


def test_matches_quadrature(quad_points: np.ndarray) -> None:
    # Tolerance: 1e-8 absolute (observed ~2e-11, the accuracy of the quadrature itself).
    assert quad_points.size == 200
    reference = np.array([fs_quad(x) for x in quad_points])
    np.testing.assert_allclose(f_s(quad_points), reference, rtol=0.0, atol=1e-8)


def test_matches_mpmath_at_selected_points() -> None:
    # Tolerance: 1e-10 absolute, on the table (interpolated) and beyond (asymptotic expansion).
    xs = np.array([0.0, 0.01, 0.123, 1.0, 2.5, 7.77, 16.0, 33.3, 59.995, 60.0, 61.0, 100.0, 1e3])
    reference = np.array([fs_mpmath(x) for x in xs])
    np.testing.assert_allclose(f_s(xs), reference, rtol=0.0, atol=1e-10)


def test_interpolation_error_at_midpoints() -> None:
    # Cubic Hermite error is largest halfway between nodes; require <= 1e-9 absolute at every
    # midpoint of the shipped grid (observed max 6.7e-12, near x = 0).
    x_max, step, f, _ = fs._table()
    midpoints = (np.arange(f.size - 1) + 0.5) * step
    reference = np.array([fs_mpmath(x) for x in midpoints])
    error = np.abs(f_s(midpoints) - reference)
    assert error.max() <= 1e-9
    assert midpoints[-1] < x_max


def test_small_x_asymptote() -> None:
    # f_s(x) = 0.3 x^2 (1 - 0.0357 x^2 + ...): ratio within 1e-3 of 1 at x = 0.05, within 1e-4
    # from x = 0.01 down to 1e-4.
    assert f_s(0.0) == 0.0
    assert abs(f_s(0.05) / (0.3 * 0.05**2) - 1.0) < 1e-3
    xs = np.geomspace(1e-4, 1e-2, 20)
    np.testing.assert_allclose(f_s(xs) / (0.3 * xs**2), 1.0, rtol=0.0, atol=1e-4)


def test_large_x_asymptote() -> None:
    # f_s(x) - (x - 1) = 1/(6x) + O(x^-2): the residual tends to 0, within 15% of 1/(6x)
    # for x >= 60 and within 0.1% for x >= 1e3.
    xs = np.array([60.0, 100.0, 1e3, 1e4, 1e6])
    residual = f_s(xs) - (xs - 1.0)
    assert np.all(np.abs(residual * 6.0 * xs - 1.0) < 0.15)
    assert np.all(np.abs(residual[2:] * 6.0 * xs[2:] - 1.0) < 1e-3)
    assert np.all(np.diff(np.abs(residual)) < 0)
    assert abs(residual[-1]) < 1e-6


def test_continuous_at_x_max() -> None:
    # Value jump at X_MAX < 1e-12; one-sided slopes agree to 1e-6 (the plain asymptote x - 1
    # would leave a jump of 2.7e-3 there).
    below, at, above = f_s(np.array([np.nextafter(X_MAX, 0.0), X_MAX, np.nextafter(X_MAX, 100.0)]))
    assert abs(above - below) < 1e-12
    assert abs(at - float(f_s_asymptotic(X_MAX))) < 1e-12
    h = 1e-4
    left = (f_s(X_MAX) - f_s(X_MAX - h)) / h
    right = (f_s(X_MAX + h) - f_s(X_MAX)) / h
    assert abs(left - right) < 1e-6  # f''(60) ~ 2e-4, so the O(h f'') difference is ~2e-8


def test_asymptotic_expansion_beyond_table() -> None:
    # The expansion alone: <= 1e-10 absolute against quadrature for x >= 40.
    xs = np.array([40.0, 60.0, 75.5, 120.0, 250.0])
    reference = np.array([fs_quad(x) for x in xs])
    np.testing.assert_allclose(f_s_asymptotic(xs), reference, rtol=0.0, atol=1e-10)


def test_even_and_vectorised() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.0, 80.0, size=(3, 4, 5))
    y = f_s(x)
    assert y.shape == (3, 4, 5)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(f_s(-x), y)  # even: exactly f_s(|x|)
    np.testing.assert_array_equal(y.ravel(), [float(f_s(v)) for v in x.ravel()])
    np.testing.assert_array_equal(f_s(x.T), y.T)  # non-contiguous input


def test_shapes_dtypes_and_special_values() -> None:
    scalar = f_s(2.0)
    assert isinstance(scalar, np.ndarray) and scalar.shape == ()
    assert f_s([]).shape == (0,)
    assert f_s(np.float32(3.0)).dtype == np.float64
    assert f_s([1.0, 2.0]).shape == (2,)
    special_values = f_s(np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(special_values[0])
    assert special_values[1] == np.inf and special_values[2] == np.inf


def test_monotone_increasing() -> None:
    x = np.linspace(0.0, 200.0, 200_001)
    assert np.all(np.diff(f_s(x)) > 0)


def test_shipped_table_matches_generator() -> None:
    # The shipped table agrees with build_fs_table on its first 201 nodes to 1e-15.
    pytest.importorskip("mpmath")
    _, step, f, dfdx = fs._table()
    assert step == pytest.approx(0.01, rel=1e-12)
    rebuilt = build_fs_table(x_max=2.0, step=0.01)
    np.testing.assert_allclose(rebuilt["x"], np.arange(201) * step, rtol=0, atol=1e-14)
    np.testing.assert_allclose(rebuilt["f"], f[:201], rtol=0, atol=1e-15)
    np.testing.assert_allclose(rebuilt["dfdx"], dfdx[:201], rtol=0, atol=1e-15)


def test_build_rejects_bad_grid() -> None:
    with pytest.raises(ValueError):
        build_fs_table(x_max=1.005, step=0.01)


def test_table_file_is_small_package_data() -> None:
    path = resources.files("oefray.physics").joinpath("data", "fs_table.npz")
    assert path.is_file()
    with path.open("rb") as fh:
        assert len(fh.read()) < 2_000_000


def test_lazy_table_and_no_mpmath_at_runtime() -> None:
    code = (
        "import sys\n"
        "import oefray.physics.fs as fs\n"
        "assert fs._table.cache_info().currsize == 0, 'table loaded at import'\n"
        "fs.f_s([0.5, 70.0])\n"
        "assert fs._table.cache_info().currsize == 1\n"
        "assert 'mpmath' not in sys.modules, 'mpmath imported at runtime'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
