"""The Numba kernel of the QQ inversion (:mod:`oefray.physics.qq_solve` is its Python API).

:func:`qq_kernel` minimises the per-voxel QQ objective (DESIGN.md §9) for every row of a
``(n_voxels, n_echoes)`` array by a bounded Levenberg–Marquardt iteration (active set,
Coleman–Li scaling, truncated steps) with an analytic Jacobian, in a ``prange`` loop over
blocks of voxels (``parallel=True``; the thread count is Numba's, ``numba.set_num_threads``). :func:`qq_jacobian_kernel` evaluates the residual vector
and its Jacobian, and :func:`fs_kernel` ``f_s`` and ``f_s'``, with the same code. Everything
compiles lazily on the first call and is cached on disk (``cache=True``).

``f_s`` is evaluated exactly as :func:`oefray.physics.fs.f_s` does (the same cubic Hermite
interpolant of the shipped table, the same asymptotic series beyond ``x_max``), from the arrays
of ``fs._table()`` and ``fs._asymptotic_coefficients()`` passed in as arguments; ``f_s'`` is the
derivative of that same interpolant (and of that same series), so the Jacobian is the exact
derivative of the objective the solver evaluates.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from oefray.physics.constants import ALPHA, CHI_BA, DCHI0, DCHI_HB, HCT, PSI_HB, YA

# Status codes as plain ints (IntEnum members are not Numba constants): the values of
# oefray.physics.qq_solve.QQStatus, which tests/physics/test_qq_solve.py checks.
_CONVERGED_GRADIENT = 0
_CONVERGED_STEP = 1
_CONVERGED_COST = 2
_MAX_ITERATIONS = 3
_NONFINITE_INPUT = 4
_NONFINITE_COST = 5

_N_PARAMS = 5  # Y, v, R2, S0, chi_nb (constants.PARAMETERS)
_BLOCK = 64  # voxels per prange task: the scratch arrays are allocated once per block
_MU0 = 1e-5  # initial damping, relative to D² (nearly Gauss–Newton: see solve_qq's Notes)
_MU_MIN = 1e-12  # damping floor (keeps the damped matrix positive definite in rounding)
_MU_MAX = 1e16  # above this a rejected step is as short as rounding allows: stop
_RHO_ACCEPT = 1e-4  # accept a step when actual/predicted reduction exceeds this
_SNAP = 1e-12  # a trial point this close (× bound width) to a bound is put on it

# QSM model constants (DESIGN.md §2): chi = blood(Y)·v + (1 - v/alpha)·chi_nb.
_PSI_DCHI = PSI_HB * DCHI_HB
_HCT_DCHI0 = HCT * DCHI0
_INV_ALPHA = 1.0 / ALPHA
_INV_YA = 1.0 / YA


# --------------------------------------------------------------------------------------------
# f_s and its derivative
# --------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _fs_and_derivative(x, f_tab, df_tab, step, x_max, b, c_cos, c_sin):  # pragma: no cover
    """``(f_s(x), f_s'(x))``: the table's cubic Hermite interpolant and its exact derivative.

    ``f_s`` is even, so ``f_s'`` is odd: evaluated at ``|x|`` and given the sign of ``x``. The
    value is computed with the operations, in the order, of :func:`oefray.physics.fs.f_s`.
    """
    ax = abs(x)
    if ax <= x_max:
        u = ax / step
        i = int(u)
        last = f_tab.shape[0] - 2
        if i > last:
            i = last
        t = u - i
        t1 = 1.0 - t
        f0 = f_tab[i]
        f1 = f_tab[i + 1]
        d0 = df_tab[i]
        d1 = df_tab[i + 1]
        # Basis h00 = (1+2t)(1-t)², h10 = t(1-t)², h01 = t²(3-2t), h11 = -t²(1-t) (fs.f_s) ...
        val = (1.0 + 2.0 * t) * t1 * t1 * f0
        val += t * t1 * t1 * (step * d0)
        val += t * t * (3.0 - 2.0 * t) * f1
        val -= t * t * t1 * (step * d1)
        # ... and d/dx = (1/step) d/dt: h00' = -6t(1-t), h10' = (1-t)(1-3t), h01' = 6t(1-t),
        # h11' = t(3t-2); the derivative terms' step cancels.
        der = 6.0 * t * t1 * (f1 - f0) / step + t1 * (1.0 - 3.0 * t) * d0 + t * (3.0 * t - 2.0) * d1
    else:
        # fs.f_s_asymptotic: x - 1 + x·Σ_{k>=1} b_k w^-k + Σ_j (C_j cos K + S_j sin K) K^(-2-j)
        # with w = 9x²/16, K = 1.5x; differentiated term by term.
        inv_w = 16.0 / (9.0 * ax * ax)
        alg = 0.0
        alg_d = 0.0
        for k in range(b.shape[0] - 1, 0, -1):  # Horner in 1/w over k = N-1 .. 1
            alg = (alg + b[k]) * inv_w
            alg_d = (alg_d + (1.0 - 2.0 * k) * b[k]) * inv_w  # d/dx [x w^-k] = (1 - 2k) w^-k
        kk = 1.5 * ax
        inv_k = 1.0 / kk
        p_cos = 0.0
        p_sin = 0.0
        q_cos = 0.0
        q_sin = 0.0
        for j in range(c_cos.shape[0] - 1, -1, -1):  # Horner in 1/K
            p_cos = p_cos * inv_k + c_cos[j]
            p_sin = p_sin * inv_k + c_sin[j]
            q_cos = q_cos * inv_k + (2.0 + j) * c_cos[j]
            q_sin = q_sin * inv_k + (2.0 + j) * c_sin[j]
        cs = math.cos(kk)
        sn = math.sin(kk)
        val = ax - 1.0 + ax * alg + (p_cos * cs + p_sin * sn) * inv_k * inv_k
        if math.isinf(ax):  # cos(inf) is NaN; the oscillation vanishes there
            val = ax
            der = 1.0
        else:
            osc_d = (p_sin * cs - p_cos * sn) - inv_k * (q_cos * cs + q_sin * sn)
            der = 1.0 + alg_d + 1.5 * osc_d * inv_k * inv_k
    if x < 0.0:
        der = -der
    return val, der


@njit(cache=True, nogil=True, error_model="numpy")
def fs_kernel(x, f_tab, df_tab, step, x_max, b, c_cos, c_sin, f_out, df_out):  # pragma: no cover
    """Write ``f_s(x)`` and ``f_s'(x)`` of the flat array ``x`` into ``f_out``, ``df_out``."""
    for i in range(x.shape[0]):
        f_out[i], df_out[i] = _fs_and_derivative(x[i], f_tab, df_tab, step, x_max, b, c_cos, c_sin)


# --------------------------------------------------------------------------------------------
# Residuals, gradient and Gauss–Newton matrix of one voxel
# --------------------------------------------------------------------------------------------
#
# Residuals r_0 = sqrt(w)·(F_QSM - chi), r_k = S_model(t_k) - S(t_k). With
# S_k = S0·exp(-R2 t_k - v f_s(dw t_k)) and dw = c_dw·(Hct Δχ0 (1 - Y) + χ_ba - χ_nb):
#   dS_k/dS0 = e_k,  dS_k/dR2 = -t_k S_k,  dS_k/dv = -f_k S_k,
#   dS_k/dY = c_dw Hct Δχ0 · u_k,  dS_k/dχ_nb = c_dw · u_k,  u_k = v f_s'(dw t_k) t_k S_k,
# so the qBOLD columns of Y and χ_nb are collinear (only the QSM row separates them): the sums
# are accumulated over the four columns (u, -f S, -t S, e) and expanded afterwards.


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _evaluate(
    x,
    signal,
    i,
    chi_i,
    te,
    sqrt_w,
    g,
    c_dw,
    f_tab,
    df_tab,
    step,
    x_max,
    b,
    c_cos,
    c_sin,
    hess,
    grad,
):  # pragma: no cover - compiled
    """Objective of voxel ``i`` at ``x``: fill ``hess = JᵀJ``, ``grad = Jᵀr + g·∇OEF``.

    Returns ``(cost, ss)`` with ``ss = Σ r²`` and ``cost = ss/2 + g·(1 - Y/YA)``.
    """
    y = x[0]
    v = x[1]
    r2 = x[2]
    s0 = x[3]
    cnb = x[4]
    dw = c_dw * (_HCT_DCHI0 * (1.0 - y) + CHI_BA - cnb)  # qq.characteristic_frequency
    a00 = 0.0  # Σ u u
    a01 = 0.0  # Σ u (-f S)
    a02 = 0.0  # Σ u (-t S)
    a03 = 0.0  # Σ u e
    a11 = 0.0
    a12 = 0.0
    a13 = 0.0
    a22 = 0.0
    a23 = 0.0
    a33 = 0.0
    b0 = 0.0  # Σ u r
    b1 = 0.0
    b2 = 0.0
    b3 = 0.0
    ss = 0.0
    for k in range(te.shape[0]):
        t = te[k]
        f, fp = _fs_and_derivative(dw * t, f_tab, df_tab, step, x_max, b, c_cos, c_sin)
        e = math.exp(f * -v - r2 * t)  # the order of qq.qbold_signal's operations
        m = e * s0
        res = m - signal[i, k]
        ju = v * fp * t * m
        jv = -f * m
        jr = -t * m
        a00 += ju * ju
        a01 += ju * jv
        a02 += ju * jr
        a03 += ju * e
        a11 += jv * jv
        a12 += jv * jr
        a13 += jv * e
        a22 += jr * jr
        a23 += jr * e
        a33 += e * e
        b0 += ju * res
        b1 += jv * res
        b2 += jr * res
        b3 += e * res
        ss += res * res
    # QSM row (qq.qsm_susceptibility), weighted by sqrt(w).
    blood = CHI_BA / ALPHA + _PSI_DCHI * ((1.0 - (1.0 - ALPHA) * YA) / ALPHA - y)
    rq = sqrt_w * (blood * v + (1.0 - v / ALPHA) * cnb - chi_i)
    qy = -sqrt_w * _PSI_DCHI * v
    qv = sqrt_w * (blood - cnb * _INV_ALPHA)
    qc = sqrt_w * (1.0 - v * _INV_ALPHA)
    ss += rq * rq
    ay = c_dw * _HCT_DCHI0  # dS/dY = ay·u, dS/dχ_nb = c_dw·u
    ac = c_dw
    hess[0, 0] = ay * ay * a00 + qy * qy
    hess[0, 1] = ay * a01 + qy * qv
    hess[0, 2] = ay * a02
    hess[0, 3] = ay * a03
    hess[0, 4] = ay * ac * a00 + qy * qc
    hess[1, 1] = a11 + qv * qv
    hess[1, 2] = a12
    hess[1, 3] = a13
    hess[1, 4] = ac * a01 + qv * qc
    hess[2, 2] = a22
    hess[2, 3] = a23
    hess[2, 4] = ac * a02
    hess[3, 3] = a33
    hess[3, 4] = ac * a03
    hess[4, 4] = ac * ac * a00 + qc * qc
    for p in range(_N_PARAMS):
        for q in range(p):
            hess[p, q] = hess[q, p]
    grad[0] = ay * b0 + qy * rq - g * _INV_YA  # d/dY of g·(1 - Y/YA)
    grad[1] = b1 + qv * rq
    grad[2] = b2
    grad[3] = b3
    grad[4] = ac * b0 + qc * rq
    cost = 0.5 * ss + g * (1.0 - y / YA)
    return cost, ss


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _damped_step(hess, grad, dsq, mu, free, amat, d, extra):  # pragma: no cover - compiled
    """Solve ``(H + mu·diag(dsq)) d = -grad`` on the free parameters (Cholesky, in ``amat``).

    Fixed parameters get ``d = 0``. Returns False if the matrix is not numerically positive
    definite (the caller then raises ``mu``).
    """
    n = _N_PARAMS
    for p in range(n):
        for q in range(n):
            if free[p] and free[q]:
                amat[p, q] = hess[p, q]
            else:
                amat[p, q] = 0.0
        if free[p]:
            amat[p, p] += mu * dsq[p] + extra[p]
            d[p] = -grad[p]
        else:
            amat[p, p] = 1.0
            d[p] = 0.0
    # In-place Cholesky A = L Lᵀ (lower triangle), then forward and back substitution.
    for p in range(n):
        s = amat[p, p]
        for q in range(p):
            s -= amat[p, q] * amat[p, q]
        if not (s > 0.0):
            return False
        lpp = math.sqrt(s)
        amat[p, p] = lpp
        for r in range(p + 1, n):
            s = amat[r, p]
            for q in range(p):
                s -= amat[r, q] * amat[p, q]
            amat[r, p] = s / lpp
    for p in range(n):
        s = d[p]
        for q in range(p):
            s -= amat[p, q] * d[q]
        d[p] = s / amat[p, p]
    for p in range(n - 1, -1, -1):
        s = d[p]
        for q in range(p + 1, n):
            s -= amat[q, p] * d[q]
        d[p] = s / amat[p, p]
    for p in range(n):
        if not free[p]:
            d[p] = 0.0
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def _solve_voxel(
    signal,
    chi,
    i,
    te,
    x0,
    lo,
    hi,
    width,
    sqrt_w,
    g,
    c_dw,
    f_tab,
    df_tab,
    step,
    x_max,
    b,
    c_cos,
    c_sin,
    max_iter,
    gtol,
    xtol,
    ftol,
    x,
    extra,
    xt,
    hess,
    hess_t,
    grad,
    grad_t,
    dsq,
    free,
    amat,
    d,
):  # pragma: no cover - compiled
    """Bounded Levenberg–Marquardt for voxel ``i``; ``x`` holds the result on return.

    Returns ``(status, cost, iterations)``. See :func:`oefray.physics.qq_solve.solve_qq`'s Notes.
    """
    n = _N_PARAMS
    finite = math.isfinite(chi[i])
    for k in range(te.shape[0]):
        if not math.isfinite(signal[i, k]):
            finite = False
    for p in range(n):
        xp = x0[i, p]
        if not math.isfinite(xp):
            finite = False
        x[p] = min(max(xp, lo[p]), hi[p])  # starts clipped into the bounds
    if not finite:
        return _NONFINITE_INPUT, np.nan, 0
    cost, ss = _evaluate(
        x, signal, i, chi[i], te, sqrt_w, g, c_dw, f_tab, df_tab, step, x_max, b, c_cos, c_sin,
        hess, grad,
    )  # fmt: skip
    if not math.isfinite(cost):
        return _NONFINITE_COST, cost, 0
    for p in range(n):
        # Marquardt scaling: D² = running max of diag(JᵀJ) (MINPACK's choice); 1 if zero.
        dsq[p] = hess[p, p] if hess[p, p] > 0.0 else 1.0
    mu = _MU0
    nu = 2.0
    for it in range(max_iter):
        # Stationarity: the scaled projected gradient step, |P(x - g/D²) - x|·D, against the
        # residual norm (a relative test: gtol is dimensionless).
        gmax = 0.0
        for p in range(n):
            xp = x[p] - grad[p] / dsq[p]
            xp = min(max(xp, lo[p]), hi[p])
            gmax = max(gmax, abs(xp - x[p]) * math.sqrt(dsq[p]))
        if gmax <= gtol * math.sqrt(ss):
            return _CONVERGED_GRADIENT, cost, it
        # Active set: a parameter on a bound whose gradient points outward is held fixed.
        for p in range(n):
            free[p] = not ((x[p] <= lo[p] and grad[p] > 0.0) or (x[p] >= hi[p] and grad[p] < 0.0))
        # Coleman–Li affine scaling: a free parameter whose descent direction points at a bound
        # gets |g_p| / (distance to that bound) on the diagonal, so it approaches the bound
        # (quadratically) instead of jumping onto it while the others are still far from
        # their optimum (jumping bends the path into the degenerate corners of the QQ model).
        for p in range(n):
            extra[p] = 0.0
            if free[p]:
                if grad[p] > 0.0 and x[p] > lo[p]:
                    extra[p] = grad[p] / (x[p] - lo[p])
                elif grad[p] < 0.0 and x[p] < hi[p]:
                    extra[p] = -grad[p] / (hi[p] - x[p])
        ok = _damped_step(hess, grad, dsq, mu, free, amat, d, extra)
        # A free parameter on a bound that the step would push outward is held as well, and
        # the step solved again (at most once per parameter).
        for _ in range(n):
            if not ok:
                break
            blocked = False
            for p in range(n):
                if free[p] and ((x[p] <= lo[p] and d[p] < 0.0) or (x[p] >= hi[p] and d[p] > 0.0)):
                    free[p] = False
                    blocked = True
            if not blocked:
                break
            ok = _damped_step(hess, grad, dsq, mu, free, amat, d, extra)
        pred = 0.0
        small = ok  # a failed factorisation says nothing about the step length
        if ok:
            # Truncate the step at the first bound it meets (which it lands on exactly).
            alpha = 1.0
            hit = -1
            for p in range(n):
                if d[p] > 0.0 and x[p] + d[p] > hi[p]:
                    a = (hi[p] - x[p]) / d[p]
                    if a < alpha:
                        alpha = a
                        hit = p
                elif d[p] < 0.0 and x[p] + d[p] < lo[p]:
                    a = (lo[p] - x[p]) / d[p]
                    if a < alpha:
                        alpha = a
                        hit = p
            for p in range(n):
                xp = min(max(x[p] + alpha * d[p], lo[p]), hi[p])
                if p == hit:
                    xp = hi[p] if d[p] > 0.0 else lo[p]
                # Within rounding reach of a bound: onto it (then the active set can hold it).
                if xp - lo[p] <= _SNAP * width[p]:
                    xp = lo[p]
                elif hi[p] - xp <= _SNAP * width[p]:
                    xp = hi[p]
                xt[p] = xp
                d[p] = xp - x[p]  # the step actually taken
                if abs(d[p]) > xtol * width[p]:
                    small = False
            # Reduction predicted by the Gauss–Newton model along that step.
            quad = 0.0
            lin = 0.0
            for p in range(n):
                lin += grad[p] * d[p]
                hs = 0.0
                for q in range(n):
                    hs += hess[p, q] * d[q]
                quad += d[p] * hs
            pred = -(lin + 0.5 * quad)
        accepted = False
        if ok and pred > 0.0:
            cost_t, ss_t = _evaluate(
                xt, signal, i, chi[i], te, sqrt_w, g, c_dw, f_tab, df_tab, step, x_max, b,
                c_cos, c_sin, hess_t, grad_t,
            )  # fmt: skip
            actual = cost - cost_t
            rho = actual / pred
            if rho > _RHO_ACCEPT:  # NaN compares False: rejected
                accepted = True
                for p in range(n):
                    x[p] = xt[p]
                    grad[p] = grad_t[p]
                    for q in range(n):
                        hess[p, q] = hess_t[p, q]
                    if hess[p, p] > dsq[p]:
                        dsq[p] = hess[p, p]
                scale = abs(cost)
                cost = cost_t
                ss = ss_t
                # Nielsen's damping update.
                tmp = 2.0 * rho - 1.0
                mu *= max(1.0 / 3.0, 1.0 - tmp * tmp * tmp)
                mu = max(mu, _MU_MIN)
                nu = 2.0
                if actual <= ftol * scale and pred <= ftol * scale:
                    return _CONVERGED_COST, cost, it + 1
                if small:
                    return _CONVERGED_STEP, cost, it + 1
        if not accepted:
            if small or mu >= _MU_MAX:
                # No acceptable step and the trial step is already below xtol (or as short as
                # the damping can make it): x is stationary to the precision available.
                return _CONVERGED_STEP, cost, it + 1
            mu *= nu
            nu *= 2.0
    return _MAX_ITERATIONS, cost, max_iter


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def qq_kernel(
    signal,
    chi,
    te,
    x0,
    lo,
    hi,
    sqrt_w,
    g,
    c_dw,
    f_tab,
    df_tab,
    step,
    x_max,
    b,
    c_cos,
    c_sin,
    max_iter,
    gtol,
    xtol,
    ftol,
    params_out,
    cost_out,
    status_out,
    iter_out,
):  # pragma: no cover - compiled
    """Solve every row of ``signal`` (n_voxels, n_echoes) float64; write the four outputs.

    Blocks of ``_BLOCK`` voxels are the ``prange`` tasks; each allocates its scratch once.
    Every voxel is independent, so the result does not depend on the thread count.
    """
    n_vox = signal.shape[0]
    n = _N_PARAMS
    width = np.empty(n)
    for p in range(n):
        width[p] = hi[p] - lo[p]
    n_blocks = (n_vox + _BLOCK - 1) // _BLOCK
    for blk in prange(n_blocks):
        x = np.empty(n)
        xt = np.empty(n)
        hess = np.empty((n, n))
        hess_t = np.empty((n, n))
        grad = np.empty(n)
        grad_t = np.empty(n)
        dsq = np.empty(n)
        free = np.empty(n, dtype=np.bool_)
        amat = np.empty((n, n))
        d = np.empty(n)
        extra = np.empty(n)
        stop = min(n_vox, (blk + 1) * _BLOCK)
        for i in range(blk * _BLOCK, stop):
            code, cost, iters = _solve_voxel(
                signal, chi, i, te, x0, lo, hi, width, sqrt_w, g, c_dw, f_tab, df_tab, step,
                x_max, b, c_cos, c_sin, max_iter, gtol, xtol, ftol, x, extra, xt, hess, hess_t, grad,
                grad_t, dsq, free, amat, d,
            )  # fmt: skip
            status_out[i] = code
            iter_out[i] = iters
            if code == _NONFINITE_INPUT or code == _NONFINITE_COST:
                for p in range(n):
                    params_out[i, p] = np.nan
                cost_out[i] = np.nan
            else:
                for p in range(n):
                    params_out[i, p] = x[p]
                cost_out[i] = cost


@njit(cache=True, nogil=True, error_model="numpy")
def qq_jacobian_kernel(
    params, signal, chi, te, sqrt_w, c_dw, f_tab, df_tab, step, x_max, b, c_cos, c_sin, r_out, j_out
):  # pragma: no cover - compiled
    """Residuals ``r_out`` (n, 1 + E) and Jacobian ``j_out`` (n, 1 + E, 5) at ``params`` (n, 5).

    Row 0 is the QSM residual ``sqrt(w)·(F_QSM - chi)``, rows 1.. the qBOLD residuals
    ``S_model - S`` in echo order; the same formulas as :func:`_evaluate`, stored per row.
    """
    ay = c_dw * _HCT_DCHI0
    for i in range(params.shape[0]):
        y = params[i, 0]
        v = params[i, 1]
        r2 = params[i, 2]
        s0 = params[i, 3]
        cnb = params[i, 4]
        blood = CHI_BA / ALPHA + _PSI_DCHI * ((1.0 - (1.0 - ALPHA) * YA) / ALPHA - y)
        r_out[i, 0] = sqrt_w * (blood * v + (1.0 - v / ALPHA) * cnb - chi[i])
        j_out[i, 0, 0] = -sqrt_w * _PSI_DCHI * v
        j_out[i, 0, 1] = sqrt_w * (blood - cnb * _INV_ALPHA)
        j_out[i, 0, 2] = 0.0
        j_out[i, 0, 3] = 0.0
        j_out[i, 0, 4] = sqrt_w * (1.0 - v * _INV_ALPHA)
        dw = c_dw * (_HCT_DCHI0 * (1.0 - y) + CHI_BA - cnb)
        for k in range(te.shape[0]):
            t = te[k]
            f, fp = _fs_and_derivative(dw * t, f_tab, df_tab, step, x_max, b, c_cos, c_sin)
            e = math.exp(f * -v - r2 * t)
            m = e * s0
            ju = v * fp * t * m
            r_out[i, k + 1] = m - signal[i, k]
            j_out[i, k + 1, 0] = ay * ju
            j_out[i, k + 1, 1] = -f * m
            j_out[i, k + 1, 2] = -t * m
            j_out[i, k + 1, 3] = e
            j_out[i, k + 1, 4] = c_dw * ju
