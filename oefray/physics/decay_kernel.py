"""The Numba kernel of the exact decay fit (:mod:`oefray.physics.decay` is its Python API).

:func:`decay_kernel` fits ``M(TE) ≈ A·exp(-B·TE)`` by least squares for every row of a
``(n_voxels, n_echoes)`` array, in a single-threaded loop that releases the GIL: the profiled
least-squares condition in ``B`` is solved by safeguarded Halley iterations, with a lockstep fast
path for evenly spaced echoes (see :class:`oefray.physics.decay.DecayModel`'s Notes for the
equations). It compiles lazily on its first call and is cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_MAX_ITER = 100  # safeguarded Halley; bisection alone would need ~60 to reach 1e-16
_B_RTOL = 1e-12  # stop when the step is below this fraction of B, or moves B·TE_span by b_atol...
_NEWTON_EXIT = 1e-7  # ... or, once superlinear, below this (Newton: error ~ step² ~ 1e-14)
_HALLEY_EXIT = 1e-5  # ... or this (Halley step, exact final evaluation: error ~ step³ ~ 1e-15)
_LANES = 8  # voxels per block: the fast path iterates them in lockstep so their chains overlap
_FAST_ITER = 3  # plain Halley steps of the fast path (even spacing); the rest go safeguarded

# Status codes as plain ints (IntEnum members are not Numba constants): the values of
# oefray.physics.decay.FitStatus, which tests/physics/test_decay.py checks.
_OK = 0
_NONFINITE = 1
_ZERO = 2
_CONSTANT = 3
_NOT_DECAYING = 4
_NO_CONVERGENCE = 6


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
def decay_kernel(
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
