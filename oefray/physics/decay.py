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
from numba import njit
from numpy.typing import ArrayLike, NDArray

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

_MAX_ITER = 100  # safeguarded Halley; bisection alone would need ~60 to reach 1e-16
_B_RTOL = 1e-12  # stop when the step is below this fraction of B ...
_B_ATOL_EXPONENT = 1e-14  # ... or changes B·TE_span by less than this (B -> 0 guard)
_NEWTON_EXIT = 1e-7  # ... or, once superlinear, below this (Newton: error ~ step² ~ 1e-14)
_HALLEY_EXIT = 1e-5  # ... or this (Halley step, exact final evaluation: error ~ step³ ~ 1e-15)
_LANES = 8  # voxels per block: the fast path iterates them in lockstep so their chains overlap
_FAST_ITER = 3  # plain Halley steps of the fast path (even spacing); the rest go safeguarded
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


# Plain ints for the Numba kernel (IntEnum members are not Numba constants).
_OK = int(FitStatus.OK)
_NONFINITE = int(FitStatus.NONFINITE)
_ZERO = int(FitStatus.ZERO)
_CONSTANT = int(FitStatus.CONSTANT)
_NOT_DECAYING = int(FitStatus.NOT_DECAYING)
_NO_CONVERGENCE = int(FitStatus.NO_CONVERGENCE)


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
# Numba kernel
# --------------------------------------------------------------------------------------------
#
# Notation (see DecayModel's Notes): tau_k = t_k - t_min, e_k = exp(-B·tau_k),
# S1 = Σ M e, P1 = Σ M τ e, Q1 = Σ M τ² e, R1 = Σ M τ³ e, S2 = Σ e², P2 = Σ τ e², Q2 = Σ τ² e²,
# R2 = Σ τ³ e². The optimum solves f(B) = S1·P2 - P1·S2 = 0 where f crosses from + to -, with
#   f'  = P1·P2 - 2·S1·Q2 + Q1·S2,
#   f'' = 4·S1·R2 - 3·Q1·P2 - R1·S2.
# error_model="numpy": IEEE division (inf/NaN, no Python ZeroDivisionError checks); every
# division below either has a guarded denominator or feeds a comparison that rejects NaN.

# Small helpers are inlined at the Numba IR level ("always"): as separate functions, their
# array arguments and call overhead cost more than the arithmetic they do.


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _halley_step(f, fp, fpp):  # pragma: no cover - compiled
    """Halley step ``-2 f f'/(2 f'² - f f'')`` for a root of f; Newton's ``-f/f'`` as fallback."""
    den = 2.0 * fp * fp - f * fpp
    if den > 0.0:
        return -2.0 * f * fp / den, True
    return -f / fp, False


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _horner_moments(mb, mkb, mk2b, mk3b, lane, kf, kf2, kf3, r):  # pragma: no cover
    """The eight sums in units of ΔTE (tau_k = k) for e_k = r**k, by Horner's rule.

    Row ``lane`` of ``mb = M``, ``mkb = k·M``, ``mk2b = k²·M``, ``mk3b = k³·M`` (indexed, not
    sliced: a view would cost reference counting); ``kf, kf2, kf3 = k, k², k³`` as floats; the
    ``·2`` sums are polynomials in ``y = r²``.
    """
    last = mb.shape[1] - 1
    y = r * r
    s1 = mb[lane, last]
    p1 = mkb[lane, last]
    q1 = mk2b[lane, last]
    r1 = mk3b[lane, last]
    s2 = 1.0
    p2 = kf[last]
    q2 = kf2[last]
    r2 = kf3[last]
    for k in range(last - 1, -1, -1):
        s1 = s1 * r + mb[lane, k]
        p1 = p1 * r + mkb[lane, k]
        q1 = q1 * r + mk2b[lane, k]
        r1 = r1 * r + mk3b[lane, k]
        s2 = s2 * y + 1.0
        p2 = p2 * y + kf[k]
        q2 = q2 * y + kf2[k]
        r2 = r2 * y + kf3[k]
    return s1, p1, q1, r1, s2, p2, q2, r2


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_even(mb, mkb, mk2b, mk3b, lane, kf, kf2, kf3, r0, r_min, b_atol_k):  # pragma: no cover
    """Safeguarded Halley for evenly spaced echoes, in ``r = exp(-B·ΔTE)``: no exp per step.

    Time in units of ΔTE (``x = B·ΔTE = -ln r``), e_k = r**k evaluated by Horner's rule.
    With ``dx/dr = -1/r``: ``g(r) = f``, ``g' = -f'/r``, ``g'' = (f'' + f')/r²``, so Halley's
    ``-2 g g'/(2 g'² - g g'')`` is ``2 f f' r/(2 f'² - f (f'' + f'))``. Doubling B is ``r -> r²``,
    bisecting B is ``r -> sqrt(r_up·r_dn)``. Returns ``(code, r)``.
    """
    r_up = 1.0  # f > 0 here (B = 0, checked by the caller): the optimum has smaller r
    r_dn = 0.0  # f <= 0 here once found; 0 = none yet
    r = r0
    dr = np.inf
    dr_old = np.inf
    for _ in range(_MAX_ITER):
        s1, p1, q1, r1, s2, p2, q2, r2 = _horner_moments(mb, mkb, mk2b, mk3b, lane, kf, kf2, kf3, r)
        f = s1 * p2 - p1 * s2
        if f == 0.0:
            return _OK, r
        if f > 0.0:
            if r <= r_min:
                return _NO_CONVERGENCE, r  # still decreasing at the cap: optimum at B -> inf
            r_up = r
        else:
            r_dn = r
        fp = p1 * p2 - 2.0 * s1 * q2 + q1 * s2
        use_step = fp < 0.0
        cubic = False
        rn = r
        if use_step:
            step, cubic = _halley_step(f, fp, fp + 4.0 * s1 * r2 - 3.0 * q1 * p2 - r1 * s2)
            rn = r - step * r  # dx = -dr/r
            if not (r_dn < rn < r_up):
                use_step = False
            elif r_dn > 0.0 and abs(2.0 * f * r) > abs(dr_old * fp):
                use_step = False  # not converging fast enough (rtsafe): bisect
        if not use_step:
            if r_dn == 0.0:
                rn = r * r  # no bracket yet: double B
            else:
                rn = math.sqrt(r_up * r_dn)  # bisect in B
        if rn < r_min:
            rn = r_min
        dr_old = dr
        dr = rn - r
        # |dB|·ΔTE ≈ |dr|/r and B·ΔTE >= 1 - r: the tolerances in B, made slightly stricter.
        scale = r * (1.0 - r)
        if abs(dr) <= _B_RTOL * scale + r * b_atol_k:
            return _OK, rn
        if use_step and abs(dr) <= 0.01 * abs(dr_old):
            # Superlinear regime: rn is within ~C·|dr/r|^3 (Halley) or ^2 (Newton) of the root.
            if abs(dr) <= (_HALLEY_EXIT if cubic else _NEWTON_EXIT) * scale:
                return _OK, rn
        r = rn
    return _NO_CONVERGENCE, r


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _fast_even(
    mb, mkb, mk2b, mk3b, kf, kf2, kf3, n_lanes, r_min, b_atol_k, r, dr, good
):  # pragma: no cover - compiled
    """Fast path for evenly spaced echoes: ``_FAST_ITER`` plain Halley steps in lockstep.

    The lanes (voxels) of a block are independent, so their dependency chains overlap in the
    CPU. No safeguards inside: on entry ``r`` holds the starts and ``good`` the lanes to try; on
    exit ``good[l]`` says whether lane ``l`` provably converged — every step a proper Halley
    step (positive denominator, f' < 0) staying inside ``(r_min, 1)``, and the last step
    passing :func:`_solve_even`'s stopping rule (cubic regime) — and then ``r[l]`` is the
    result. Otherwise the caller runs the safeguarded solver. ``dr`` is scratch.
    """
    for it in range(_FAST_ITER):
        last_iter = it == _FAST_ITER - 1
        for lane in range(n_lanes):
            if not good[lane]:
                continue
            x = r[lane]
            s1, p1, q1, r1, s2, p2, q2, r2 = _horner_moments(
                mb, mkb, mk2b, mk3b, lane, kf, kf2, kf3, x
            )
            f = s1 * p2 - p1 * s2
            fp = p1 * p2 - 2.0 * s1 * q2 + q1 * s2
            den = 2.0 * fp * fp - f * (fp + 4.0 * s1 * r2 - 3.0 * q1 * p2 - r1 * s2)
            rn = x + 2.0 * f * fp * x / den  # Halley in r, as in _solve_even
            ok = den > 0.0 and fp < 0.0 and r_min < rn < 1.0
            step = abs(rn - x)
            if last_iter:
                scale = x * (1.0 - x)
                ok = ok and (
                    step <= _B_RTOL * scale + x * b_atol_k
                    or (step <= _HALLEY_EXIT * scale and step <= 0.01 * dr[lane])
                )
            good[lane] = ok
            dr[lane] = step
            r[lane] = rn


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_general(mb, lane, tau, b0, b_max, b_atol, e):  # pragma: no cover - compiled
    """Safeguarded Halley in ``B`` for any echo spacing (rtsafe bracket): K exps per evaluation.

    Returns ``(code, b, dx, s1, p1, s2, p2)`` where ``e`` and the sums belong to ``b`` and
    ``b + dx`` is the (more accurate) final iterate.
    """
    n_echo = tau.shape[0]
    lo = 0.0  # f > 0 here (B = 0, checked by the caller)
    hi = np.inf  # f <= 0 here once found
    b = b0
    dx = np.inf
    dx_old = np.inf
    s1 = 0.0
    p1 = 0.0
    s2 = 1.0
    p2 = 0.0
    for _ in range(_MAX_ITER):
        s1 = 0.0
        p1 = 0.0
        q1 = 0.0
        r1 = 0.0
        s2 = 0.0
        p2 = 0.0
        q2 = 0.0
        r2 = 0.0
        for k in range(n_echo):
            t = tau[k]
            ek = math.exp(-b * t)
            e[k] = ek
            me = mb[lane, k] * ek
            ee = ek * ek
            s1 += me
            s2 += ee
            me *= t
            ee *= t
            p1 += me
            p2 += ee
            me *= t
            ee *= t
            q1 += me
            q2 += ee
            r1 += me * t
            r2 += ee * t
        f = s1 * p2 - p1 * s2
        if f == 0.0:
            return _OK, b, 0.0, s1, p1, s2, p2
        if f > 0.0:
            if b >= b_max:
                return _NO_CONVERGENCE, b, 0.0, s1, p1, s2, p2  # optimum at B -> inf
            lo = b
        else:
            hi = b
        fp = p1 * p2 - 2.0 * s1 * q2 + q1 * s2
        use_step = fp < 0.0
        bn = b
        if use_step:
            step, _ = _halley_step(f, fp, 4.0 * s1 * r2 - 3.0 * q1 * p2 - r1 * s2)
            bn = b + step
            if not (lo < bn < hi):
                use_step = False
            elif hi < np.inf and abs(2.0 * f) > abs(dx_old * fp):
                use_step = False  # not converging fast enough (rtsafe): bisect
        if not use_step:
            if hi == np.inf:
                bn = 2.0 * b  # no bracket yet: expand
            else:
                bn = 0.5 * (lo + hi)
        if bn > b_max:
            bn = b_max
        dx_old = dx
        dx = bn - b
        if abs(dx) <= _B_RTOL * b + b_atol:
            return _OK, b, dx, s1, p1, s2, p2
        if use_step and abs(dx) <= _NEWTON_EXIT * b and abs(dx) <= 0.01 * abs(dx_old):
            # Superlinear regime: b + dx is within ~(dx/b)² of the root.
            return _OK, b, dx, s1, p1, s2, p2
        b = bn
    return _NO_CONVERGENCE, b, 0.0, s1, p1, s2, p2


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _load_and_screen(signal, i, order, tau, sum_tau, mb, lane):  # pragma: no cover - compiled
    """Copy voxel ``i`` into row ``lane`` of ``mb`` (float64, TE order); return its pre-fit code."""
    n_echo = tau.shape[0]
    finite = True
    positive = False
    constant = True
    sum_m = 0.0
    sum_mt = 0.0
    for k in range(n_echo):
        v = np.float64(signal[i, order[k]])
        mb[lane, k] = v
        if not math.isfinite(v):
            finite = False
        if v > 0.0:
            positive = True
        if v != mb[lane, 0]:
            constant = False
        sum_m += v
        sum_mt += v * tau[k]
    if not finite:
        return _NONFINITE
    if not positive or sum_m <= 0.0:
        return _ZERO
    if constant:
        return _CONSTANT
    if sum_m * sum_tau - sum_mt * n_echo <= 0.0:
        # f(0) = S1·P2 - P1·S2 at e = 1; SSR'(0) = -2·A(0)·f(0)/S2 with A(0) = mean(M) > 0.
        return _NOT_DECAYING
    return _OK


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _start_loglinear(mb, lane, tau, b_max):  # pragma: no cover - compiled
    """Starting rate: M²-weighted log-linear fit over the positive echoes, in (0, b_max]."""
    w_s = 0.0
    w_t = 0.0
    w_y = 0.0
    w_tt = 0.0
    w_ty = 0.0
    for k in range(tau.shape[0]):
        v = mb[lane, k]
        if v > 0.0:
            w = v * v
            y = math.log(v)
            t = tau[k]
            w_s += w
            w_t += w * t
            w_y += w * y
            w_tt += w * t * t
            w_ty += w * t * y
    den = w_s * w_tt - w_t * w_t
    b0 = -(w_s * w_ty - w_t * w_y) / den if den > 0.0 else -1.0
    if not (b0 > 0.0) or not math.isfinite(b0):
        b0 = 1.0 / tau[tau.shape[0] - 1]  # B = 1/TE-span; the bracket does the rest
    return min(b0, b_max)


@njit(cache=True, nogil=True, error_model="numpy")
def _decay_kernel(
    signal, order, tau, uniform, dtau, t_min, b_max, b_atol, a_out, b_out, e_out, status_out
):  # pragma: no cover - compiled
    """Fit every row of ``signal`` (n_voxels, n_echoes); write A, B, E, status per voxel.

    ``order`` sorts the echoes by TE, ``tau`` are the sorted echo times minus ``t_min``
    (exactly ``k·dtau`` when ``uniform``). Voxels go in blocks of ``_LANES``: load and screen,
    (even spacing) the lockstep fast path, then per voxel the safeguarded solver where needed
    and the final evaluation. All scratch is allocated once per call.
    """
    n_vox = signal.shape[0]
    n_echo = tau.shape[0]
    lanes = _LANES
    mb = np.empty((lanes, n_echo))  # the block's echoes, float64, TE order
    mkb = np.empty((lanes, n_echo))  # k·M, k²·M, k³·M (even spacing: Horner coefficients)
    mk2b = np.empty((lanes, n_echo))
    mk3b = np.empty((lanes, n_echo))
    codes = np.empty(lanes, dtype=np.int64)
    r0 = np.empty(lanes)  # even spacing: start and result, r = exp(-B·dtau)
    r = np.empty(lanes)
    dr = np.empty(lanes)
    good = np.empty(lanes, dtype=np.bool_)
    e = np.empty(n_echo)  # exp(-B·tau) at the final B
    kf = np.empty(n_echo)
    for k in range(n_echo):
        kf[k] = k
    kf2 = kf * kf
    kf3 = kf2 * kf
    sum_tau = 0.0
    for k in range(n_echo):
        sum_tau += tau[k]
    r_min = math.exp(-b_max * dtau) if uniform else 0.0
    b_atol_k = b_atol * dtau
    nan = np.nan

    for i0 in range(0, n_vox, lanes):
        n_lanes = min(lanes, n_vox - i0)
        for lane in range(n_lanes):
            code = _load_and_screen(signal, i0 + lane, order, tau, sum_tau, mb, lane)
            codes[lane] = code
            good[lane] = False
            if code == _OK and uniform:
                # Start: least-squares ratio of neighbours, M[k+1] ≈ r·M[k].
                num = 0.0
                den = 0.0
                for k in range(n_echo - 1):
                    num += mb[lane, k] * mb[lane, k + 1]
                    den += mb[lane, k] * mb[lane, k]
                start = num / den if den > 0.0 else -1.0
                if not (0.0 < start < 1.0):
                    start = math.exp(-dtau / tau[n_echo - 1])  # B = 1/TE-span
                start = max(start, r_min)
                r0[lane] = start
                r[lane] = start
                dr[lane] = np.inf
                good[lane] = True
                for k in range(n_echo):
                    v = mb[lane, k] * kf[k]
                    mkb[lane, k] = v
                    v *= kf[k]
                    mk2b[lane, k] = v
                    mk3b[lane, k] = v * kf[k]
        if uniform:
            _fast_even(mb, mkb, mk2b, mk3b, kf, kf2, kf3, n_lanes, r_min, b_atol_k, r, dr, good)

        for lane in range(n_lanes):
            i = i0 + lane
            code = codes[lane]
            amp = 0.0  # A' = A(B) at the shifted origin TE = t_min
            b = 0.0
            if code == _OK and uniform:
                x = r[lane]
                if not good[lane]:
                    code, x = _solve_even(
                        mb,
                        mkb,
                        mk2b,
                        mk3b,
                        lane,
                        kf,
                        kf2,
                        kf3,
                        x if r_min < x < 1.0 else r0[lane],  # resume where the fast path got
                        r_min,
                        b_atol_k,
                    )
                if code == _OK:
                    # Exact final evaluation at the converged r: e_k = r**k (rounding <= k·eps).
                    s1 = 0.0
                    s2 = 0.0
                    ek = 1.0
                    for k in range(n_echo):
                        e[k] = ek
                        s1 += mb[lane, k] * ek
                        s2 += ek * ek
                        ek *= x
                    amp = s1 / s2
                    b = -math.log(x) / dtau
            elif code == _OK:
                b0 = _start_loglinear(mb, lane, tau, b_max)
                code, b, dx, s1, p1, s2, p2 = _solve_general(mb, lane, tau, b0, b_max, b_atol, e)
                if code == _OK:
                    # Take the final step b -> b + dx to first order instead of K more exps:
                    # A'(b+dx) = A'(b) + dx·(2·S1·P2 - P1·S2)/S2², e_k <- e_k·(1 - tau_k·dx);
                    # the errors are O(dx²) <= ~1e-14 relative.
                    amp = s1 / s2 + dx * (2.0 * s1 * p2 - p1 * s2) / (s2 * s2)
                    for k in range(n_echo):
                        e[k] *= 1.0 - tau[k] * dx
                    b += dx

            a_full = 0.0
            if code == _OK:
                a_full = amp * math.exp(b * t_min)
                if not (amp > 0.0 and math.isfinite(a_full)):
                    code = _NO_CONVERGENCE  # A <= 0, or A overflows
            if code != _OK:
                a_out[i] = nan
                b_out[i] = nan
                e_out[i] = nan
                status_out[i] = code
                continue
            ssr = 0.0
            for k in range(n_echo):
                res = mb[lane, k] - amp * e[k]
                ssr += res * res
            e_rms = math.sqrt(ssr / n_echo)
            if not math.isfinite(e_rms):  # squares overflow (|M| >~ 1e154): sum them scaled
                scale = 0.0
                for k in range(n_echo):
                    scale = max(scale, abs(mb[lane, k] - amp * e[k]))
                ssr = 0.0
                for k in range(n_echo):
                    res = (mb[lane, k] - amp * e[k]) / scale
                    ssr += res * res
                e_rms = scale * math.sqrt(ssr / n_echo)
            if not math.isfinite(e_rms):  # the residual itself is not representable
                a_out[i] = nan
                b_out[i] = nan
                e_out[i] = nan
                status_out[i] = _NO_CONVERGENCE
                continue
            a_out[i] = a_full
            b_out[i] = b
            e_out[i] = e_rms
            status_out[i] = _OK


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
            _decay_kernel(
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
                lost = (status == _OK) & ~(np.isfinite(a) & np.isfinite(e))
                if lost.any():
                    a[lost] = b[lost] = e[lost] = np.nan
                    status[lost] = _NO_CONVERGENCE
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
