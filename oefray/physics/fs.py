"""Yablonskiy–Haacke static-dephasing function ``f_s`` (DESIGN.md section 2).

``f_s`` is evaluated from a table of the exact hypergeometric form (values and first derivatives
on a uniform grid, shipped as ``oefray/physics/data/fs_table.npz``) by cubic Hermite
interpolation on ``[0, x_max]``, and from its complete large-``x`` asymptotic expansion beyond.
The table is loaded lazily on the first call. ``build_fs_table`` regenerates it with mpmath (a
development dependency only); ``scripts/build_fs_table.py`` writes the file.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["X_MAX", "STEP", "f_s", "f_s_asymptotic", "build_fs_table"]

#: Upper end of the tabulated range (the shipped table's value; ``f_s`` reads it from the file).
X_MAX: float = 60.0

#: Node spacing of the shipped table.
STEP: float = 0.01

_TABLE_FILE = "fs_table.npz"

# Number of terms kept in the two asymptotic series (algebraic, oscillatory). At x = 60 the last
# kept terms are < 1e-12 and the truncation error is ~2e-14 (checked against mpmath).
_N_ALGEBRAIC = 8
_N_OSCILLATORY = 8


@functools.cache
def _table() -> tuple[float, float, np.ndarray, np.ndarray]:
    """Load the shipped table: ``(x_max, step, f, dfdx)``, read once per process."""
    path = resources.files("oefray.physics").joinpath("data", _TABLE_FILE)
    with path.open("rb") as fh, np.load(fh) as npz:
        f = np.ascontiguousarray(npz["f"], dtype=np.float64)
        dfdx = np.ascontiguousarray(npz["dfdx"], dtype=np.float64)
        x_max = float(npz["x_max"])
    step = x_max / (f.size - 1)
    return x_max, step, f, dfdx


def _pochhammer(q: float, n: int) -> float:
    """Rising factorial ``(q)_n``."""
    out = 1.0
    for i in range(n):
        out *= q + i
    return out


@functools.cache
def _asymptotic_coefficients() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coefficients of the large-``x`` expansion of ``f_s``; see ``f_s_asymptotic``.

    Returns ``(b, c_cos, c_sin)``: ``b[k]`` multiplies ``x * (16 / (9 x^2))**k`` and
    ``c_cos[j]``, ``c_sin[j]`` multiply ``cos(1.5 x) / (1.5 x)**(2 + j)`` and
    ``sin(1.5 x) / (1.5 x)**(2 + j)``.
    """
    a, b1, b2 = -0.5, 0.75, 1.25
    # Algebraic series of 1F2(a; b1, b2; -w), w = 9 x^2 / 16 (the Gamma prefactor is 4/3 and
    # w^(1/2) = 3x/4, so its leading term is exactly x):
    # b_k = (-1)^k (a)_k (1 + a - b1)_k (1 + a - b2)_k / k!.
    b = np.array(
        [
            (-1.0) ** k
            * _pochhammer(a, k)
            * _pochhammer(1 + a - b1, k)
            * _pochhammer(1 + a - b2, k)
            / math.factorial(k)
            for k in range(_N_ALGEBRAIC)
        ]
    )
    # Oscillatory series: endpoint u = 1 of -(1/3) ∫ (2+u) sqrt(1-u) u^-2 J0(k u) du, k = 1.5 x,
    # with the Hankel expansion J0(y) = Re sqrt(2/(pi y)) e^{i(y - pi/4)} sum_m i^m a_m y^-m and
    # the Taylor series in s = 1 - u of (1/3)(3 - s)(1 - s)^-(5/2 + m) = sum_n c_mn s^n;
    # ∫_0^∞ s^(n+1/2) e^{-iks} ds = Gamma(n + 3/2) (ik)^-(n + 3/2).
    coeffs = np.zeros(_N_OSCILLATORY, dtype=np.complex128)
    for j in range(_N_OSCILLATORY):
        total = 0j
        for m in range(j + 1):
            n = j - m
            hankel = 1.0  # Hankel coefficient a_m(0) = prod_i (-(2i - 1)^2) / (m! 8^m)
            for i in range(1, m + 1):
                hankel *= -((2 * i - 1) ** 2)
            hankel /= math.factorial(m) * 8.0**m
            p = 2.5 + m
            c_mn = _pochhammer(p, n) / math.factorial(n)
            if n >= 1:
                c_mn -= _pochhammer(p, n - 1) / math.factorial(n - 1) / 3.0
            total += (
                1j**m * hankel * c_mn * math.gamma(n + 1.5) * np.exp(-0.5j * math.pi * (n + 1.5))
            )
        coeffs[j] = -math.sqrt(2.0 / math.pi) * np.exp(-0.25j * math.pi) * total
    # Re[e^{ik} C] = Re(C) cos k - Im(C) sin k.
    return b, coeffs.real.copy(), -coeffs.imag


def f_s_asymptotic(x: npt.ArrayLike) -> np.ndarray:
    """Large-argument asymptotic expansion of ``f_s`` (used by ``f_s`` beyond the table).

    Parameters
    ----------
    x : array_like of shape (...)
        Argument, dimensionless (``dw * t``). Only meaningful for large ``|x|``: the series is
        asymptotic (divergent); it is accurate to ~1e-13 for ``|x| >= 50`` and ~1e-9 at 30.

    Returns
    -------
    ndarray of shape (...), float64
        ``x - 1 + 1/(6x) - 1/(72 x^3) + ...`` plus the decaying oscillation
        ``cos(1.5 x) / (sqrt(2) (1.5 x)^2) + ...``. ``inf`` maps to ``inf``, NaN to NaN.

    Notes
    -----
    With ``w = 9 x^2 / 16`` and ``k = 1.5 x``,

    .. math::

        f_s(x) \\sim x - 1 + x \\sum_{k \\ge 1} b_k w^{-k}
                 + \\sum_{j \\ge 0} \\mathrm{Re}\\left[C_j e^{i k}\\right] k^{-2-j},

    the algebraic series of the hypergeometric form ``1F2(-1/2; 3/4, 5/4; -w)`` and the
    contribution of the endpoint ``u = 1`` of the Bessel integral (``C_0 = 1/sqrt(2)``).
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    b, c_cos, c_sin = _asymptotic_coefficients()
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_w = 16.0 / (9.0 * x * x)
        algebraic = np.zeros_like(x)
        for coef in b[:0:-1]:  # Horner in 1/w over k = N-1 .. 1
            algebraic = (algebraic + coef) * inv_w
        k = 1.5 * x
        inv_k = 1.0 / k
        poly_cos = np.zeros_like(x)
        poly_sin = np.zeros_like(x)
        for cc, cs in zip(c_cos[::-1], c_sin[::-1], strict=True):  # Horner in 1/k
            poly_cos = poly_cos * inv_k + cc
            poly_sin = poly_sin * inv_k + cs
        oscillatory = (poly_cos * np.cos(k) + poly_sin * np.sin(k)) * inv_k * inv_k
        out = x - 1.0 + x * algebraic + oscillatory
    # cos(inf) is NaN; the oscillation vanishes there.
    return np.where(np.isinf(x), np.inf, out)


def f_s(x: npt.ArrayLike) -> np.ndarray:
    """Yablonskiy–Haacke static-dephasing function of random cylinders.

    Parameters
    ----------
    x : array_like of shape (...)
        Argument ``dw * t`` (dimensionless: rad/s times s). ``f_s`` is even, so negative values
        are evaluated at ``|x|``. NaN propagates; ``inf`` gives ``inf``.

    Returns
    -------
    ndarray of shape (...), float64
        ``f_s(|x|)``; a 0-d array for scalar input.

    Notes
    -----
    .. math::

        f_s(x) = \\frac{1}{3} \\int_0^1 \\frac{(2+u)\\sqrt{1-u}}{u^2}
                 \\left[1 - J_0(1.5\\,x\\,u)\\right] du
               = {}_1F_2\\!\\left(-\\tfrac12; \\tfrac34, \\tfrac54; -\\tfrac{9x^2}{16}\\right) - 1

    with ``f_s(x) ≈ 0.3 x^2`` for small ``x`` and ``≈ x - 1`` for large ``x``.

    For ``|x| <= X_MAX`` (60) the exact function is interpolated by cubic Hermite polynomials
    through tabulated values and exact first derivatives (node step 0.01); the interpolation
    error is at most 6.7e-12 absolute (at all midpoints against mpmath; largest near x = 0,
    where the fourth derivative is largest). Beyond ``X_MAX`` the complete asymptotic expansion
    ``f_s_asymptotic`` is used, accurate to ~2e-14 there. The
    plain asymptote ``x - 1`` is *not* used as a continuation: its residual is still
    ``f_s(60) - 59 = 2.74e-3`` (decaying only like ``1/(6x)``), which would be a jump.
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    shape = x.shape
    x = x.reshape(-1)
    x_max, step, f, dfdx = _table()
    # Hermite interpolation on the clipped argument; NaN and x > x_max are replaced below.
    u = np.fmin(x, x_max) / step
    i = np.minimum(u.astype(np.intp), f.size - 2)
    t = u - i
    t1 = 1.0 - t
    # Cubic Hermite basis: h00 = (1 + 2t)(1 - t)^2, h10 = t(1 - t)^2, h01 = t^2 (3 - 2t),
    # h11 = -t^2 (1 - t); the derivative terms carry the node step.
    out = (1.0 + 2.0 * t) * t1 * t1 * f[i]
    out += t * t1 * t1 * (step * dfdx[i])
    out += t * t * (3.0 - 2.0 * t) * f[i + 1]
    out -= t * t * t1 * (step * dfdx[i + 1])
    outside = ~(x <= x_max)  # beyond the table, or NaN
    if outside.any():
        out[outside] = f_s_asymptotic(x[outside])
    return out.reshape(shape)


def build_fs_table(x_max: float = X_MAX, step: float = STEP, dps: int = 30) -> dict[str, Any]:
    """Tabulate the exact ``f_s`` and its derivative with mpmath.

    Parameters
    ----------
    x_max : float
        Upper end of the grid; must be a multiple of `step`.
    step : float
        Node spacing.
    dps : int
        mpmath working precision in decimal digits (mpmath raises it internally where the
        hypergeometric series cancels).

    Returns
    -------
    dict
        ``x`` : ndarray of shape (N,), the nodes ``i * x_max / (N - 1)``;
        ``f`` : ndarray of shape (N,), ``f_s(x)``;
        ``dfdx`` : ndarray of shape (N,), ``f_s'(x)``;
        ``x_max`` : float. All float64, rounded from the mpmath values.

    Notes
    -----
    With ``z = -9 x^2 / 16`` and ``d/dz 1F2(a; b1, b2; z) = a / (b1 b2) 1F2(a+1; b1+1, b2+1; z)``,

    .. math::

        f_s'(x) = \\frac{-1/2}{(3/4)(5/4)} \\cdot \\left(-\\frac{9x}{8}\\right)
                  {}_1F_2\\!\\left(\\tfrac12; \\tfrac74, \\tfrac94; z\\right)
                = \\frac{3x}{5}\\, {}_1F_2\\!\\left(\\tfrac12; \\tfrac74, \\tfrac94; z\\right).
    """
    import mpmath  # development dependency only

    n_intervals = round(x_max / step)
    if n_intervals < 1 or not math.isclose(n_intervals * step, x_max, rel_tol=1e-12):
        raise ValueError(f"x_max={x_max} is not a positive multiple of step={step}")
    x = np.arange(n_intervals + 1) * (x_max / n_intervals)
    f = np.empty_like(x)
    dfdx = np.empty_like(x)
    with mpmath.workdps(dps):
        for k, xk in enumerate(x):
            xm = mpmath.mpf(float(xk))  # the float64 node, exactly
            z = -9 * xm**2 / 16
            f[k] = float(mpmath.hyp1f2(-0.5, 0.75, 1.25, z) - 1)
            dfdx[k] = float(3 * xm / 5 * mpmath.hyp1f2(0.5, 1.75, 2.25, z))
    return {"x": x, "f": f, "dfdx": dfdx, "x_max": float(x_max)}
