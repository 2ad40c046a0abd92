"""Exact mono-exponential decay fit ``M(TE) ≈ A·exp(-B·TE)`` per voxel (DESIGN.md §1.2, §7).

The fast path (:func:`fit_decay`, :class:`DecayModel`) is an *exact* least-squares fit: it finds
the same optimum as :func:`scipy.optimize.curve_fit` (to ~1e-12 relative in ``B``) several
hundred times faster per core (``benchmarks/decay_fit.py``), in a single-threaded Numba loop.
Parallelism is the caller's business (Ray, elsewhere); the kernel releases the GIL.

:func:`fit_decay_loglinear` is the classic vectorised NumPy shortcut (a straight line through
``log M``). It is *not* the least-squares optimum of the magnitude model and is kept only as the
reference the benchmark compares against.

Voxels that cannot be fitted never raise: they get ``A = B = E = NaN`` and a :class:`FitStatus`
code. Bad *arguments* (echo times, shapes, mask) raise ``ValueError`` early.

Nothing happens at import time: the Numba kernel compiles lazily on its first call and is cached
on disk (``cache=True``), one specialisation per input dtype/layout.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from oefray.physics.decay_kernel import decay_kernel
from oefray.physics.echoes import validate_te

__all__ = [
    "B_MAX_EXPONENT",
    "DecayFit",
    "DecayModel",
    "FitStatus",
    "fit_decay",
    "fit_decay_loglinear",
]

#: ``B`` is searched on ``(0, B_MAX_EXPONENT / (TE_(2) - TE_(1))]`` where ``TE_(1) < TE_(2)`` are
#: the two smallest echo times. At the cap every echo but the first carries a model weight below
#: ``exp(-40) ≈ 4e-18`` relative to the first, i.e. below float64 resolution: the rate is no longer
#: determined by the data, so an optimum beyond it is reported as ``NO_CONVERGENCE``.
B_MAX_EXPONENT: float = 40.0

_B_ATOL_EXPONENT = 1e-14  # ... or changes B·TE_span by less than this (B -> 0 guard)
_UNIFORM_RTOL = 1e-13  # echo spacing counts as even when every TE is this close (× ΔTE) to the grid


class FitStatus(enum.IntEnum):
    """Per-voxel outcome of a decay fit (stored as ``int8``).

    Every code other than ``OK`` comes with ``A = B = E = NaN``. When several apply, the first in
    this order wins: ``MASKED``, ``TOO_FEW_ECHOES``, ``NONFINITE``, ``ZERO``, ``CONSTANT``,
    ``NOT_DECAYING``, ``NO_CONVERGENCE``.

    Attributes
    ----------
    OK : 0
        Converged to a least-squares optimum with ``A > 0`` and ``0 < B <= b_max``.
    NONFINITE : 1
        At least one echo is NaN or ±inf.
    ZERO : 2
        No usable positive signal: every echo is ``<= 0`` (all zero, all negative), or the echoes
        sum to ``<= 0``. The log-linear reference also uses it for any echo ``<= 0`` (no log).
    CONSTANT : 3
        All echoes are exactly equal (and positive): the optimum is ``B = 0``.
    NOT_DECAYING : 4
        The residual does not decrease from ``B = 0`` into ``B > 0``: the echoes do not decay on
        average (``cov(M, TE) >= 0``, e.g. a rising signal), so the optimum has ``B <= 0``
        (``B > 0`` is not searched; see :class:`DecayModel` Notes).
        The log-linear reference uses it when its slope gives ``B <= 0``.
    TOO_FEW_ECHOES : 5
        Fewer than two echo times: every voxel gets this, nothing raises.
    NO_CONVERGENCE : 6
        No finite optimum: the residual still decreases at the cap ``B = b_max`` (the optimum runs
        to ``B -> inf``, e.g. signal only in the first echo), the iteration limit was exhausted,
        or the result is not representable (``A <= 0``, or ``A`` or ``E`` overflows, also on the
        way to a float32 output).
    MASKED : 7
        Outside the mask given to :meth:`DecayModel.fit`; never passed to the kernel.
    """

    OK = 0
    NONFINITE = 1
    ZERO = 2
    CONSTANT = 3
    NOT_DECAYING = 4
    TOO_FEW_ECHOES = 5
    NO_CONVERGENCE = 6
    MASKED = 7


@dataclass(frozen=True, eq=False)
class DecayFit:
    """Result of a mono-exponential decay fit; every array has the data's leading shape.

    Attributes
    ----------
    A : ndarray of shape (...)
        Amplitude at ``TE = 0``, in the signal's units. float32 if the signal was float32,
        float64 otherwise. NaN where ``status != OK``.
    B : ndarray of shape (...)
        Decay rate in s⁻¹ (the echo times are in seconds). Same dtype as ``A``.
    E : ndarray of shape (...)
        RMS residual ``sqrt(mean_k (M_k - A·exp(-B·TE_k))²)`` in the signal's units.
    status : ndarray of int8, shape (...)
        :class:`FitStatus` code per voxel.
    """

    A: NDArray[np.floating]
    B: NDArray[np.floating]
    E: NDArray[np.floating]
    status: NDArray[np.int8]

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading (voxel) shape of the fitted data."""
        return tuple(self.status.shape)

    @property
    def ok(self) -> NDArray[np.bool_]:
        """Boolean array, True where ``status == FitStatus.OK``."""
        return self.status == FitStatus.OK

    def to_dict(self) -> dict[str, NDArray]:
        """The four arrays by name (``A``, ``B``, ``E``, ``status``), e.g. for a Ray batch."""
        return {"A": self.A, "B": self.B, "E": self.E, "status": self.status}


# --------------------------------------------------------------------------------------------
# Python API
# --------------------------------------------------------------------------------------------


def _as_signal(signal: ArrayLike) -> NDArray[np.floating]:
    """The dtype policy: float32 stays float32 (no copy), anything real becomes float64."""
    arr = np.asarray(signal)
    if np.iscomplexobj(arr):
        raise ValueError("signal must be real (magnitude) data, got a complex array")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"signal must be numeric (magnitude) data, got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize in (4, 8):
        if not arr.dtype.isnative:  # Numba reads native byte order only: one same-width copy
            arr = arr.astype(arr.dtype.newbyteorder("="))
        return arr
    return arr.astype(np.float64)


def _voxel_rows(
    signal: ArrayLike, n_echo: int, name: str
) -> tuple[NDArray[np.floating], tuple[int, ...], np.dtype]:
    """`signal` (..., K) as rows (n_voxels, K) under the dtype policy, its leading shape and the
    output dtype; ValueError (naming the argument `name`) unless K == `n_echo`."""
    arr = _as_signal(signal)
    if arr.ndim < 1 or arr.shape[-1] != n_echo:
        raise ValueError(f"{name} must have shape (..., {n_echo}) to match te_s, got {arr.shape}")
    lead = arr.shape[:-1]
    return arr.reshape(math.prod(lead), n_echo), lead, np.dtype(arr.dtype)


def _nan_fit(shape: tuple[int, ...], dtype: np.dtype, code: FitStatus) -> DecayFit:
    return DecayFit(
        A=np.full(shape, np.nan, dtype=dtype),
        B=np.full(shape, np.nan, dtype=dtype),
        E=np.full(shape, np.nan, dtype=dtype),
        status=np.full(shape, int(code), dtype=np.int8),
    )


class DecayModel:
    """Mono-exponential decay model ``M(TE) = A·exp(-B·TE)`` for one echo scheme (dipy-style).

    Holds and validates the echo times once and precomputes everything that does not depend on
    the data; :meth:`fit` then fits any number of voxels.

    Parameters
    ----------
    te_s : array_like of shape (K,)
        Echo times in seconds, in any order (unequal spacing allowed). Must be finite, distinct
        and ``>= 0``. ``K < 2`` is allowed: every voxel then gets ``TOO_FEW_ECHOES``.

    Attributes
    ----------
    te_s : ndarray of shape (K,)
        The validated echo times (read-only float64), in the order the data's last axis uses.
    b_max : float
        Largest decay rate searched, s⁻¹ (``B_MAX_EXPONENT / (TE_(2) - TE_(1))``); ``inf`` if
        ``K < 2``.

    Raises
    ------
    ValueError
        If ``te_s`` is not 1-D or has a non-finite, negative or repeated value
        (:func:`oefray.physics.echoes.validate_te`).

    Notes
    -----
    The fit is the exact least-squares problem

    .. math:: \\min_{A, B} \\sum_k (M_k - A e^{-B t_k})^2,

    solved by variable projection with the time origin shifted to the first echo,
    :math:`\\tau_k = t_k - t_{min}`, :math:`e_k = e^{-B\\tau_k}`. For fixed ``B`` the optimal
    amplitude is :math:`A'(B) = S_1/S_2` and :math:`SSR(B) = \\sum M^2 - S_1^2/S_2` with

    .. math:: S_1 = \\sum M e,\\; P_1 = \\sum M\\tau e,\\; Q_1 = \\sum M\\tau^2 e,\\;
              S_2 = \\sum e^2,\\; P_2 = \\sum \\tau e^2,\\; Q_2 = \\sum \\tau^2 e^2 .

    :math:`SSR'(B) = -2 A' f(B) / S_2` with :math:`f = S_1 P_2 - P_1 S_2`, so the optimum is the
    root where ``f`` crosses from + to −. With :math:`R_1 = \\sum M\\tau^3 e`,
    :math:`R_2 = \\sum \\tau^3 e^2`,

    .. math:: f' = P_1 P_2 - 2 S_1 Q_2 + Q_1 S_2, \\qquad
              f'' = 4 S_1 R_2 - 3 Q_1 P_2 - R_1 S_2 .

    The root is found by safeguarded Halley iteration (step :math:`-2ff'/(2f'^2 - ff'')`,
    Newton's :math:`-f/f'` where that denominator is not positive) inside a bracket, as in
    *rtsafe*: ``f(0) > 0`` is checked first (else ``NOT_DECAYING``); every evaluation narrows
    the bracket; a step that leaves it or shrinks too slowly is replaced by bisection in ``B``
    (or by doubling ``B`` while no upper end is known, up to ``b_max``).

    - *Evenly spaced echoes* (every sorted TE within ``1e-13·ΔTE`` of the grid, ``τ_k = kΔ``):
      the unknown is :math:`r = e^{-B\\Delta}`, so :math:`e_k = r^k` and all eight sums are
      polynomials in ``r`` evaluated by Horner's rule — no ``exp`` at all while iterating.
      Start: the least-squares neighbour ratio :math:`r_0 = \\sum M_k M_{k+1} / \\sum M_k^2`.
      Stop when the step is below ``1e-12·B`` (plus ``1e-14/τ_max``), or below ``1e-5·B`` once
      the step shrank at least 100-fold (cubic regime: error ~ step³). The model is then
      evaluated exactly at the final ``r`` and :math:`B = -\\ln r / \\Delta`.
      For speed, blocks of 8 voxels first take three plain Halley steps in lockstep (their
      independent dependency chains overlap in the CPU); a voxel is accepted only if every
      step stayed valid and the last one passes the stopping rule above, otherwise (rare for
      real data) the safeguarded iteration resumes from where it got.
    - *Any other spacing*: the unknown is ``B``, with ``K`` exps per evaluation. Start: the
      ``M²``-weighted log-linear fit. Stop as above but with ``1e-7·B``; the last step ``δ``
      is applied to first order instead of paying ``K`` more exps:
      :math:`A' \\leftarrow A' + δ (2 S_1 P_2 - P_1 S_2)/S_2^2`,
      :math:`e_k \\leftarrow e_k (1 - \\tau_k δ)` (errors :math:`O(δ^2) \\approx 1e{-14}`).

    Finally :math:`A = A' e^{B t_{min}}` and :math:`E = \\sqrt{\\tfrac{1}{K}\\sum_k (M_k - A'
    e_k)^2}` (from the residuals, not from the cancelling :math:`\\sum M^2 - S_1^2/S_2`).
    ``B`` agrees with the exact root to ~1e-12 relative (observed ≲ 1e-13).

    The solution is the local optimum reached from the start, like any local method
    (``curve_fit`` included). For realistic voxels the projected objective is unimodal; it can
    have several minima when the signal has sunk into the noise within the first echoes, and a
    rare signal that first falls and then rises (``cov(M, TE) >= 0``) is reported as
    ``NOT_DECAYING`` without searching ``B > 0``.

    Each voxel is computed in float64 scalars in a single-threaded Numba loop over voxels that
    reads float32 (or float64, strided) data in place; the loop allocates nothing per voxel.
    """

    def __init__(self, te_s: ArrayLike) -> None:
        te = validate_te(te_s, min_echoes=0)  # K < 2 is a per-voxel status
        self.te_s: NDArray[np.float64] = te
        n_echo = te.size
        order = np.argsort(te, kind="stable")
        te_sorted = te[order]
        self._order = order.astype(np.int64)
        self._t_min = float(te_sorted[0]) if n_echo else 0.0
        tau: NDArray[np.float64] = te_sorted - self._t_min
        self._uniform: bool = False
        self._dtau: float = 0.0
        self.b_max: float = np.inf
        self._b_atol: float = 0.0
        if n_echo >= 2:
            dtau = float(tau[-1]) / (n_echo - 1)
            grid = dtau * np.arange(n_echo, dtype=np.float64)
            if np.all(np.abs(tau - grid) <= _UNIFORM_RTOL * dtau):
                self._uniform = True
                self._dtau = dtau
                tau = grid  # exactly k·ΔTE, consistent with the r**k recurrence
            self.b_max = B_MAX_EXPONENT / float(tau[1])
            self._b_atol = _B_ATOL_EXPONENT / float(tau[-1])
        self._tau = np.ascontiguousarray(tau, dtype=np.float64)

    @property
    def n_echoes(self) -> int:
        """Number of echoes K."""
        return int(self.te_s.size)

    def __repr__(self) -> str:
        return f"DecayModel(te_s={self.te_s.tolist()!r})"

    def fit(self, data: ArrayLike, *, mask: ArrayLike | None = None) -> DecayFit:
        """Fit ``A·exp(-B·TE)`` to every voxel of ``data`` (inside ``mask``).

        Parameters
        ----------
        data : array_like of shape (..., K)
            Magnitudes, echoes on the last axis in the order of ``te_s``. float32 is read
            directly (results float32); any other real dtype is converted to float64.
            Non-contiguous arrays are read in place when their leading axes can be flattened
            as a view, otherwise copied once in their own dtype.
        mask : array_like of bool, shape (...), optional
            Voxels to fit, ``mask.shape == data.shape[:-1]``. Only these are gathered and passed
            to the kernel; the others get NaN and ``FitStatus.MASKED``.

        Returns
        -------
        DecayFit
            ``A``, ``B`` (s⁻¹), ``E``, ``status``, each of shape ``data.shape[:-1]``.

        Raises
        ------
        ValueError
            If ``data`` is not at least 1-D with ``K`` on the last axis, is complex, or ``mask``
            has the wrong shape.
        """
        n_echo = self.n_echoes
        flat, lead, out_dtype = _voxel_rows(data, n_echo, "data")
        n_vox = flat.shape[0]

        mflat: NDArray[np.bool_] | None = None
        if mask is not None:
            mask_arr = np.asarray(mask)
            if mask_arr.shape != lead:
                raise ValueError(
                    f"mask must have shape data.shape[:-1] = {lead}, got {mask_arr.shape}"
                )
            mflat = mask_arr.astype(bool, copy=False).reshape(n_vox)

        if n_echo < 2:
            res = _nan_fit((n_vox,), out_dtype, FitStatus.TOO_FEW_ECHOES)
            if mflat is not None:
                res.status[~mflat] = FitStatus.MASKED
            return _reshape(res, lead)

        if mflat is None:
            a, b, e, status = self._run(flat, out_dtype)
            return _reshape(DecayFit(A=a, B=b, E=e, status=status), lead)

        res = _nan_fit((n_vox,), out_dtype, FitStatus.MASKED)
        idx = np.flatnonzero(mflat)
        a, b, e, status = self._run(flat[idx], out_dtype)  # gather (own dtype), fit, scatter
        res.A[idx] = a
        res.B[idx] = b
        res.E[idx] = e
        res.status[idx] = status
        return _reshape(res, lead)

    def _run(
        self, flat: NDArray[np.floating], out_dtype: np.dtype
    ) -> tuple[NDArray, NDArray, NDArray, NDArray[np.int8]]:
        n_vox = flat.shape[0]
        a = np.empty(n_vox, dtype=out_dtype)
        b = np.empty(n_vox, dtype=out_dtype)
        e = np.empty(n_vox, dtype=out_dtype)
        status = np.empty(n_vox, dtype=np.int8)
        if n_vox:
            decay_kernel(
                flat,
                self._order,
                self._tau,
                self._uniform,
                self._dtau,
                self._t_min,
                float(self.b_max),
                self._b_atol,
                a,
                b,
                e,
                status,
            )
            if out_dtype != np.float64:  # a float64 result may not fit float32 (A up to ~1e308)
                lost = (status == FitStatus.OK) & ~(np.isfinite(a) & np.isfinite(e))
                if lost.any():
                    a[lost] = b[lost] = e[lost] = np.nan
                    status[lost] = FitStatus.NO_CONVERGENCE
        return a, b, e, status


def _reshape(fit: DecayFit, lead: tuple[int, ...]) -> DecayFit:
    return DecayFit(
        A=fit.A.reshape(lead),
        B=fit.B.reshape(lead),
        E=fit.E.reshape(lead),
        status=fit.status.reshape(lead),
    )


def fit_decay(signal: ArrayLike, te_s: ArrayLike) -> DecayFit:
    """Exact least-squares fit of ``M(TE) = A·exp(-B·TE)`` per voxel.

    Parameters
    ----------
    signal : array_like of shape (..., K)
        Magnitudes; usually ``(n_voxels, K)``. float32 stays float32, other dtypes → float64.
    te_s : array_like of shape (K,)
        Echo times in seconds, any order and spacing; finite, distinct, ``>= 0``.

    Returns
    -------
    DecayFit
        ``A``, ``B`` (s⁻¹), ``E`` (RMS residual) and ``status`` of shape ``signal.shape[:-1]``.

    Raises
    ------
    ValueError
        If ``te_s`` is invalid or does not match ``signal``'s last axis.

    See Also
    --------
    DecayModel : the same fit with the echo scheme validated once, and a mask.

    Notes
    -----
    Minimises :math:`\\sum_k (M_k - A e^{-B t_k})^2` exactly (variable projection plus
    safeguarded Newton on the rate; see :class:`DecayModel`), and reports
    :math:`E = \\sqrt{\\tfrac1K \\sum_k (M_k - A e^{-B t_k})^2}` at the optimum. Voxels that cannot
    be fitted get NaN and a :class:`FitStatus` code.

    Examples
    --------
    >>> te = 0.0045 + 0.005 * np.arange(8)
    >>> fit = fit_decay(np.exp(-20.0 * te)[None, :], te)
    >>> round(float(fit.B[0]), 9), int(fit.status[0])
    (20.0, 0)
    """
    return DecayModel(te_s).fit(signal)


def fit_decay_loglinear(signal: ArrayLike, te_s: ArrayLike) -> DecayFit:
    """Vectorised log-linear decay fit (the NumPy reference; NOT the least-squares optimum).

    Parameters
    ----------
    signal : array_like of shape (..., K)
        Magnitudes. float32 stays float32 in the output; the arithmetic is float64.
    te_s : array_like of shape (K,)
        Echo times in seconds; finite, distinct, ``>= 0``.

    Returns
    -------
    DecayFit
        ``A``, ``B`` (s⁻¹), ``E`` and ``status`` of shape ``signal.shape[:-1]``. ``E`` is the
        RMS residual of the *magnitude* model at the log-linear ``(A, B)``, so it is comparable
        with :func:`fit_decay`'s (and never smaller).

    Raises
    ------
    ValueError
        If ``te_s`` is invalid or does not match ``signal``'s last axis.

    Notes
    -----
    Unweighted least squares on the logarithm,

    .. math:: \\min_{a, B} \\sum_k (\\ln M_k - a + B t_k)^2, \\quad A = e^{a},

    i.e. :math:`B = -\\sum_k c_k \\ln M_k` with
    :math:`c_k = (t_k - \\bar t)/\\sum_j (t_j - \\bar t)^2`. Taking the log reweights the
    residuals by :math:`1/M_k` and biases ``B`` under noise, so it differs from the magnitude
    least squares by far more than the 1e-4 that :func:`fit_decay` guarantees; it is kept as
    the baseline a vectorised implementation would use. Voxels with any echo ``<= 0`` get
    ``ZERO`` (no logarithm), a slope giving ``B <= 0`` gets ``NOT_DECAYING``. Computed with
    elementwise NumPy over voxels (no BLAS).
    """
    te = validate_te(te_s, min_echoes=0)  # K < 2 is a per-voxel status
    m, lead, out_dtype = _voxel_rows(signal, te.size, "signal")
    if te.size < 2:
        return _reshape(_nan_fit((m.shape[0],), out_dtype, FitStatus.TOO_FEW_ECHOES), lead)
    a, b, e = _loglinear_rows(m, te)
    status = _loglinear_status(m, b)
    bad = status != FitStatus.OK
    a[bad] = np.nan
    b[bad] = np.nan
    e[bad] = np.nan
    return _reshape(
        DecayFit(
            A=a.astype(out_dtype, copy=False),
            B=b.astype(out_dtype, copy=False),
            E=e.astype(out_dtype, copy=False),
            status=status,
        ),
        lead,
    )


def _loglinear_rows(
    m: NDArray[np.floating], te: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``A``, ``B``, ``E`` of the log-linear fit of every row of `m` (n, K), in float64.

    Invalid voxels (log of <= 0, NaN) are computed through; :func:`_loglinear_status` flags them.
    """
    n_vox, n_echo = m.shape
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        y = np.log(m, dtype=np.float64)
        tc = te - te.mean()
        c = tc / float((tc * tc).sum())
        slope = np.zeros(n_vox)
        mean_y = np.zeros(n_vox)
        for k in range(n_echo):  # elementwise accumulation over echoes: no BLAS
            slope += c[k] * y[:, k]
            mean_y += y[:, k]
        mean_y /= n_echo
        b = -slope
        a = np.exp(mean_y + b * te.mean())
        ssr = np.zeros(n_vox)
        for k in range(n_echo):
            r = m[:, k] - a * np.exp(-b * te[k])
            ssr += r * r
        e = np.sqrt(ssr / n_echo)
    return a, b, e


def _loglinear_status(m: NDArray[np.floating], b: NDArray[np.float64]) -> NDArray[np.int8]:
    """:class:`FitStatus` of each row of `m` (n, K) given its log-linear rate `b` (n,)."""
    status = np.full(m.shape[0], int(FitStatus.OK), dtype=np.int8)
    status[~(b > 0)] = FitStatus.NOT_DECAYING
    status[(m == m[:, :1]).all(axis=1)] = FitStatus.CONSTANT
    status[~(m > 0).all(axis=1)] = FitStatus.ZERO
    status[~np.isfinite(m).all(axis=1)] = FitStatus.NONFINITE
    return status
