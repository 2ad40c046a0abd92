"""QQ inversion: per-voxel bounded least squares of the QSM + qBOLD model (DESIGN.md §9).

:func:`solve_qq` minimises, for every voxel independently,

    cost(x) = ½·[w·(F_QSM(Y, v, chi_nb) - chi)² + Σ_t (S(t) - S_qBOLD(S0, Y, v, R2, chi_nb, t))²]
              + g·OEF(Y)

over ``x = (Y, v, R2, S0, chi_nb)`` (the order of :data:`oefray.physics.constants.PARAMETERS`)
inside box bounds, by a bounded Levenberg–Marquardt iteration (active set, Coleman–Li scaling)
with an analytic Jacobian in a parallel Numba kernel (:mod:`oefray.physics.qq_kernel`). :func:`solve_qq_prior` adds the
whole-brain prior ``λ·(mean OEF - OEF_wb)²`` of Cho et al. (2018) by outer rounds on the scalar
``g``. :func:`qq_cost` is the plain-NumPy reference of the objective, built from
:mod:`oefray.physics.qq`'s forward model.

Voxels that cannot be solved never raise: they get NaN parameters and a :class:`QQStatus` code.
Bad *arguments* (shapes, echo times, bounds, weights) raise ``ValueError`` early. Nothing happens
at import time: the kernel compiles on its first call and is cached on disk.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from oefray.physics import fs
from oefray.physics.constants import B0_T, GAMMA, PARAMETERS, YA
from oefray.physics.echoes import validate_te
from oefray.physics.qq import oef, qbold_signal, qsm_susceptibility
from oefray.physics.qq_kernel import fs_kernel, qq_jacobian_kernel, qq_kernel

__all__ = [
    "FTOL",
    "GTOL",
    "MAX_ITER",
    "QQ_BOUNDS",
    "XTOL",
    "QQPriorSolution",
    "QQSolution",
    "QQStatus",
    "f_s_and_derivative",
    "qq_cost",
    "qq_residuals_and_jacobian",
    "solve_qq",
    "solve_qq_prior",
]

_N_PARAMS = len(PARAMETERS)

#: Default box bounds of the QQ parameters, shape (5, 2) of ``(lower, upper)`` in the order of
#: ``PARAMETERS``: Y in [0, 0.98] (fraction; the upper end is the arterial YA, OEF >= 0),
#: v in [0.001, 0.1] (fraction), R2 in [0, 100] s^-1, S0 in [0, 3] (echo-1-normalised scale;
#: callers with raw-scale signal pass their own), chi_nb in [-0.3, 0.4] ppm. Read-only.
QQ_BOUNDS: Final[NDArray[np.float64]] = np.array(
    [
        [0.0, 0.98],  # Y, fraction
        [0.001, 0.1],  # v, fraction
        [0.0, 100.0],  # R2, s^-1
        [0.0, 3.0],  # S0, echo-1-normalised
        [-0.3, 0.4],  # chi_nb, ppm
    ]
)
QQ_BOUNDS.setflags(write=False)

#: Physically meaningful range of each parameter: caller-supplied bounds must lie inside.
_DOMAIN: Final = ((0.0, 1.0), (0.0, 1.0), (0.0, np.inf), (0.0, np.inf), (-np.inf, np.inf))

#: Factor on the secant step of :func:`solve_qq_prior` before the root is bracketed.
_OVERSHOOT: Final[float] = 1.5

#: Default iteration limit of :func:`solve_qq` (Levenberg–Marquardt iterations per voxel).
MAX_ITER: Final[int] = 500
#: Default stationarity tolerance: scaled projected gradient <= GTOL·||r||.
GTOL: Final[float] = 1e-10
#: Default step tolerance: every |step_p| <= XTOL·(hi_p - lo_p).
XTOL: Final[float] = 1e-10
#: Default cost-change tolerance: actual and predicted reduction <= FTOL·|cost|.
FTOL: Final[float] = 1e-12


class QQStatus(enum.IntEnum):
    """Per-voxel outcome of :func:`solve_qq` (stored as ``int8``).

    Codes below ``MAX_ITERATIONS`` are convergence; ``MAX_ITERATIONS`` returns the last iterate;
    the two ``NONFINITE`` codes come with NaN parameters and cost.

    Attributes
    ----------
    CONVERGED_GRADIENT : 0
        Stationary: the scaled projected gradient is at most ``gtol`` times the residual norm.
    CONVERGED_STEP : 1
        The last accepted step moved every parameter by at most ``xtol`` times its bound width,
        or no step is acceptable and the trial step is already that short (x is stationary to
        the precision the arithmetic allows, e.g. noise-free data).
    CONVERGED_COST : 2
        The last accepted step changed the cost, and the model predicted it would, by at most
        ``ftol`` times the cost.
    MAX_ITERATIONS : 3
        ``max_iter`` iterations without meeting a convergence test; the last iterate is kept.
    NONFINITE_INPUT : 4
        An echo, the measured ``chi`` or a start value is NaN or ±inf.
    NONFINITE_COST : 5
        The objective overflows at the start (e.g. signals of ~1e154 or more).
    """

    CONVERGED_GRADIENT = 0
    CONVERGED_STEP = 1
    CONVERGED_COST = 2
    MAX_ITERATIONS = 3
    NONFINITE_INPUT = 4
    NONFINITE_COST = 5


@dataclass(frozen=True)
class QQSolution:
    """Result of :func:`solve_qq` for N voxels.

    Attributes
    ----------
    params : ndarray of shape (N, 5), float64
        ``(Y, v, R2, S0, chi_nb)`` per voxel (``PARAMETERS`` order; fractions, s^-1,
        echo-1-normalised, ppm); NaN where the status is a ``NONFINITE`` code.
    cost : ndarray of shape (N,), float64
        The objective at ``params`` (including the ``g·OEF`` term); NaN where nonfinite.
    status : ndarray of shape (N,), int8
        :class:`QQStatus` code per voxel.
    iterations : ndarray of shape (N,), int32
        Levenberg–Marquardt iterations used (accepted and rejected steps).
    """

    params: NDArray[np.float64]
    cost: NDArray[np.float64]
    status: NDArray[np.int8]
    iterations: NDArray[np.int32]

    @property
    def converged(self) -> NDArray[np.bool_]:
        """Boolean (N,): True where a convergence test was met (status < MAX_ITERATIONS)."""
        return self.status < QQStatus.MAX_ITERATIONS

    @property
    def oef(self) -> NDArray[np.float64]:
        """OEF = 1 - Y/YA per voxel (fraction), shape (N,)."""
        return oef(self.params[:, 0])

    def to_dict(self) -> dict[str, NDArray]:
        """The five parameters by name (``PARAMETERS``), plus ``cost``, ``status``, ``iterations``."""
        out: dict[str, NDArray] = {n: self.params[:, k] for k, n in enumerate(PARAMETERS)}
        out.update(cost=self.cost, status=self.status, iterations=self.iterations)
        return out


@dataclass(frozen=True)
class QQPriorSolution:
    """Result of :func:`solve_qq_prior`.

    Attributes
    ----------
    solution : QQSolution
        The per-voxel solution at the final ``g``; its ``cost`` includes the ``g·OEF`` term.
    g : float
        Final multiplier of the linear ``OEF`` term (cost units).
    rounds : int
        Vectorised per-voxel solves done (the ``g = 0`` solve included).
    mean_oef : float
        Mean OEF (fraction) over the voxels with finite parameters.
    residual : float
        The root function at the final ``g``, in OEF units: ``mean_oef - oef_wb - g·N/(2λ)``
        (``mean_oef - oef_wb`` for ``λ = inf``).
    converged : bool
        ``abs(residual) <= oef_tol``.
    """

    solution: QQSolution
    g: float
    rounds: int
    mean_oef: float
    residual: float
    converged: bool


@dataclass(frozen=True)
class _Problem:
    """Validated, kernel-ready inputs shared by the solver, the cost and the Jacobian."""

    signal: NDArray[np.float64]  # (N, E), C-contiguous
    chi: NDArray[np.float64]  # (N,)
    te: NDArray[np.float64]  # (E,)
    sqrt_w: float
    c_dw: float  # GAMMA·B0/3: dw = c_dw·(Hct·dchi0·(1 - Y) + chi_ba - chi_nb)


def _fs_arrays() -> tuple[
    NDArray[np.float64],
    NDArray[np.float64],
    float,
    float,
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
]:
    """The f_s table and asymptotic coefficients as the kernel takes them."""
    x_max, step, f_tab, df_tab = fs._table()
    b, c_cos, c_sin = fs._asymptotic_coefficients()
    return f_tab, df_tab, float(step), float(x_max), b, c_cos, c_sin


def _problem(signal: ArrayLike, chi: ArrayLike, te_s: ArrayLike, w: float, b0_t: float) -> _Problem:
    te = validate_te(te_s)
    sig = np.asarray(signal)
    if np.iscomplexobj(sig) or sig.ndim != 2 or sig.shape[1] != te.size:
        raise ValueError(
            f"signal must be a real array of shape (n_voxels, {te.size}) (one column per echo "
            f"time), got {sig.dtype} {sig.shape}"
        )
    chi_arr = np.asarray(chi)
    if np.iscomplexobj(chi_arr) or chi_arr.shape != sig.shape[:1]:
        raise ValueError(
            f"chi must be a real array of shape (n_voxels,) = {sig.shape[:1]}, got "
            f"{chi_arr.dtype} {chi_arr.shape}"
        )
    w_f = float(w)
    if not (math.isfinite(w_f) and w_f >= 0.0):
        raise ValueError(f"w (the QSM weight) must be finite and >= 0, got {w!r}")
    b0 = float(b0_t)
    if not (math.isfinite(b0) and b0 > 0.0):
        raise ValueError(f"b0_t must be finite and > 0 (tesla), got {b0_t!r}")
    return _Problem(
        signal=np.ascontiguousarray(sig, dtype=np.float64),
        chi=np.ascontiguousarray(chi_arr, dtype=np.float64),
        te=np.ascontiguousarray(te),
        sqrt_w=math.sqrt(w_f),
        c_dw=GAMMA * b0 / 3.0,
    )


def _params(params: ArrayLike, n_vox: int, name: str) -> NDArray[np.float64]:
    """(N, 5) float64 C-contiguous from (N, 5) or (5,) (broadcast)."""
    arr = np.asarray(params)
    if np.iscomplexobj(arr) or arr.shape not in ((n_vox, _N_PARAMS), (_N_PARAMS,)):
        raise ValueError(
            f"{name} must be a real array of shape (n_voxels, 5) = ({n_vox}, 5) or (5,), in the "
            f"order {PARAMETERS}, got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(np.broadcast_to(arr, (n_vox, _N_PARAMS)), dtype=np.float64)


def _bounds(bounds: ArrayLike | None) -> NDArray[np.float64]:
    if bounds is None:
        return np.array(QQ_BOUNDS)
    arr = np.array(bounds, dtype=np.float64)
    if arr.shape != (_N_PARAMS, 2):
        raise ValueError(
            f"bounds must have shape (5, 2): (lower, upper) of {PARAMETERS}, got {arr.shape}"
        )
    for k, name in enumerate(PARAMETERS):
        lo, hi = arr[k]
        d_lo, d_hi = _DOMAIN[k]
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"bounds of {name} must be finite with lower <= upper, got {arr[k]}")
        if lo < d_lo or hi > d_hi:
            raise ValueError(f"bounds of {name} must lie in [{d_lo}, {d_hi}], got [{lo}, {hi}]")
    return arr


def _tolerances(max_iter: int, gtol: float, xtol: float, ftol: float) -> None:
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    for name, tol in (("gtol", gtol), ("xtol", xtol), ("ftol", ftol)):
        if not (math.isfinite(float(tol)) and float(tol) >= 0.0):
            raise ValueError(f"{name} must be finite and >= 0, got {tol!r}")


def f_s_and_derivative(x: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``f_s(x)`` and ``f_s'(x)`` as the QQ solver's kernel evaluates them.

    Parameters
    ----------
    x : array_like of shape (...)
        Argument ``dw·t`` (dimensionless), any sign.

    Returns
    -------
    f : ndarray of shape (...), float64
        ``f_s(|x|)``, equal to :func:`oefray.physics.fs.f_s` (the same interpolant and series,
        evaluated with the same operations).
    df : ndarray of shape (...), float64
        ``f_s'(x)``: the exact derivative of that cubic Hermite interpolant for ``|x| <= x_max``
        (so it equals the table's ``dfdx`` at the nodes) and of the asymptotic series beyond,
        odd in ``x``.
    """
    arr = np.asarray(x, dtype=np.float64)
    flat = np.ascontiguousarray(arr.reshape(-1))
    f = np.empty_like(flat)
    df = np.empty_like(flat)
    if flat.size:
        fs_kernel(flat, *_fs_arrays(), f, df)
    return f.reshape(arr.shape), df.reshape(arr.shape)


def qq_residuals_and_jacobian(
    params: ArrayLike,
    signal: ArrayLike,
    chi: ArrayLike,
    te_s: ArrayLike,
    *,
    w: float,
    b0_t: float = B0_T,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Residual vector of the QQ objective and its analytic Jacobian, per voxel.

    Parameters
    ----------
    params : array_like of shape (N, 5) or (5,)
        ``(Y, v, R2, S0, chi_nb)`` (``PARAMETERS`` order).
    signal : array_like of shape (N, E)
        Magnitudes, one column per echo time.
    chi : array_like of shape (N,)
        Measured tissue susceptibility, ppm.
    te_s : array_like of shape (E,)
        Echo times, seconds (any order, validated by :func:`~oefray.physics.echoes.validate_te`).
    w : float
        Weight of the QSM term, ``>= 0``.
    b0_t : float
        Field strength, tesla.

    Returns
    -------
    r : ndarray of shape (N, 1 + E), float64
        ``r[:, 0] = sqrt(w)·(F_QSM - chi)``, ``r[:, 1 + k] = S_qBOLD(t_k) - signal[:, k]``;
        the objective (``g = 0``) is ``½·Σ r²``.
    jac : ndarray of shape (N, 1 + E, 5), float64
        ``d r / d params``, analytic (``f_s'`` through :func:`f_s_and_derivative`).

    Raises
    ------
    ValueError
        If a shape, ``te_s``, ``w`` or ``b0_t`` is invalid.
    """
    prob = _problem(signal, chi, te_s, w, b0_t)
    n_vox, n_echo = prob.signal.shape
    x = _params(params, n_vox, "params")
    r = np.empty((n_vox, 1 + n_echo))
    jac = np.empty((n_vox, 1 + n_echo, _N_PARAMS))
    if n_vox:
        qq_jacobian_kernel(
            x, prob.signal, prob.chi, prob.te, prob.sqrt_w, prob.c_dw, *_fs_arrays(), r, jac
        )
    return r, jac


def qq_cost(
    params: ArrayLike,
    signal: ArrayLike,
    chi: ArrayLike,
    te_s: ArrayLike,
    *,
    w: float,
    g: float = 0.0,
    b0_t: float = B0_T,
) -> NDArray[np.float64]:
    """The QQ objective per voxel, in plain NumPy from :mod:`oefray.physics.qq` (the reference).

    Parameters
    ----------
    params : array_like of shape (N, 5) or (5,)
        ``(Y, v, R2, S0, chi_nb)`` (``PARAMETERS`` order).
    signal : array_like of shape (N, E)
        Magnitudes, one column per echo time.
    chi : array_like of shape (N,)
        Measured tissue susceptibility, ppm.
    te_s : array_like of shape (E,)
        Echo times, seconds.
    w : float
        Weight of the QSM term, ``>= 0``.
    g : float
        Multiplier of the linear OEF term.
    b0_t : float
        Field strength, tesla.

    Returns
    -------
    cost : ndarray of shape (N,), float64

    Notes
    -----
    .. math::

        c = \\tfrac12\\left[w\\,(F_{QSM}(Y, v, \\chi_{nb}) - \\chi)^2
              + \\sum_t (S(t) - S_{qBOLD}(S_0, Y, v, R_2, \\chi_{nb}, t))^2\\right]
              + g\\,(1 - Y/Y_a)

    with ``F_QSM = qq.qsm_susceptibility`` and ``S_qBOLD = qq.qbold_signal``.
    """
    prob = _problem(signal, chi, te_s, w, b0_t)
    x = _params(params, prob.signal.shape[0], "params")
    y, v, r2, s0, chi_nb = x.T
    model = qbold_signal(s0, r2, y, v, chi_nb, prob.te, b0_t=b0_t)
    qsm = qsm_susceptibility(y, v, chi_nb) - prob.chi
    ss = float(w) * qsm * qsm + ((prob.signal - model) ** 2).sum(axis=1)
    return 0.5 * ss + float(g) * oef(y)


def solve_qq(
    signal: ArrayLike,
    chi: ArrayLike,
    te_s: ArrayLike,
    x0: ArrayLike,
    *,
    w: float,
    g: float = 0.0,
    bounds: ArrayLike | None = None,
    b0_t: float = B0_T,
    max_iter: int = MAX_ITER,
    gtol: float = GTOL,
    xtol: float = XTOL,
    ftol: float = FTOL,
) -> QQSolution:
    """Per-voxel QQ inversion by bounded Levenberg–Marquardt with an active set.

    Parameters
    ----------
    signal : array_like of shape (N, E)
        Multi-echo GRE magnitudes, one column per echo time, on the scale the S0 bounds assume
        (echo-1-normalised for the defaults). Any real dtype; computed in float64.
    chi : array_like of shape (N,)
        Measured tissue susceptibility (QSM), ppm.
    te_s : array_like of shape (E,)
        Echo times, seconds: any number >= 1, any order and spacing
        (:func:`~oefray.physics.echoes.validate_te`).
    x0 : array_like of shape (N, 5) or (5,)
        Starting values ``(Y, v, R2, S0, chi_nb)``, clipped into the bounds; ``(5,)`` is one
        start for every voxel (e.g. a population prior point).
    w : float
        Weight of the QSM residual (``>= 0``; ``(signal units / ppm)²``).
    g : float
        Multiplier of the linear term ``g·OEF(Y)`` (cost units; default 0). :func:`solve_qq_prior`
        sets it to enforce the whole-brain OEF prior.
    bounds : array_like of shape (5, 2), optional
        ``(lower, upper)`` per parameter, default :data:`QQ_BOUNDS`. Finite, ``lower <= upper``
        (equal fixes a parameter), inside the physical range (Y, v in [0, 1]; R2, S0 >= 0).
    b0_t : float
        Field strength, tesla.
    max_iter : int
        Iteration limit per voxel.
    gtol, xtol, ftol : float
        Convergence tolerances (see Notes and :class:`QQStatus`).

    Returns
    -------
    QQSolution
        ``params`` (N, 5), ``cost`` (N,), ``status`` (N,) int8, ``iterations`` (N,) int32.

    Raises
    ------
    ValueError
        If a shape, ``te_s``, ``bounds``, ``w``, ``g``, ``b0_t`` or a tolerance is invalid.

    Notes
    -----
    The objective of voxel ``i`` is ``½‖r(x)‖² + g·(1 - Y/Ya)`` with the residuals
    ``r_0 = √w·(F_QSM - chi)``, ``r_k = S_qBOLD(t_k) - S(t_k)`` (:func:`qq_residuals_and_jacobian`).
    The OEF term is linear in ``Y``: it adds ``-g/Ya`` to the ``Y`` gradient and nothing to the
    Gauss–Newton matrix ``H = JᵀJ``.

    Each iteration, with the gradient ``∇ = Jᵀr - (g/Ya)·e_Y`` and Marquardt's scaling
    ``D² = max over iterations of diag(H)`` (MINPACK's; 1 where zero):

    1. *Stationarity*: stop (``CONVERGED_GRADIENT``) if
       ``max_p |P(x - ∇/D²)_p - x_p|·D_p <= gtol·‖r‖`` (P: clipping into the bounds).
    2. *Active set*: a parameter on a bound whose gradient points outward is held fixed.
    3. *Step*: ``(H + μ·D² + C) d = -∇`` on the free parameters (Cholesky), where ``C`` is the
       Coleman–Li affine-scaling term of scipy's 'trf': ``C_pp = |∇_p| / dist_p`` for a free
       parameter whose descent direction points at a bound ``dist_p`` away (0 otherwise). A
       parameter then approaches its bound (quadratically, in a few steps) instead of jumping
       onto it while the others are still far from their optimum. A free parameter on a
       bound that ``d`` would push outward is held as well and ``d`` solved again.
    4. *Truncation*: ``d`` is shortened to the first bound it meets (and lands on it exactly);
       a point within ``1e-12`` of a bound width is put on the bound. Plain projection
       (clipping ``x + d``) bends full Gauss–Newton steps into the corners of the box, where the
       QQ model is degenerate (v → 0 or Y → Ya): against scipy it found the same minimum on
       only ~80 % of noisy voxels, the scaling and truncation on ~99 %.
    5. *Acceptance*: with ``s`` the step taken, the gain ratio
       ``ρ = (cost(x) - cost(x + s)) / pred``, ``pred = -(∇·s + ½ sᵀHs)``; accept if
       ``ρ > 1e-4`` and update ``μ`` by Nielsen's rule (``μ ← μ·max(1/3, 1 - (2ρ - 1)³)``),
       otherwise reject and multiply ``μ`` by 2, 4, 8, …. After an accepted step stop if
       actual and predicted reduction are both ``<= ftol·|cost|`` (``CONVERGED_COST``) or
       every ``|s_p| <= xtol·(hi_p - lo_p)`` (``CONVERGED_STEP``); after a rejected step whose
       ``s`` is that short, stop too (``CONVERGED_STEP``: no shorter step can help).

    ``μ`` starts at 1e-5 (nearly Gauss–Newton: larger starting damping led to more voxels in
    the degenerate corners). The residuals and Jacobian use the analytic derivatives of
    DESIGN.md §2, with ``f_s'`` the exact derivative of the interpolant ``f_s`` evaluates
    (:func:`f_s_and_derivative`); one ``exp`` and one table lookup per echo per evaluation,
    and the Gauss–Newton sums are accumulated without storing ``J``.

    The objective is not convex (Y, v and chi_nb trade off against each other); the result is
    the local minimum reached from ``x0``, as with any local method.

    The kernel runs a ``numba.prange`` loop over blocks of 64 voxels on Numba's threads
    (``numba.set_num_threads``); the voxels are independent, so the result does not depend on
    the thread count. Inside Ray workers set one thread per worker.
    """
    prob = _problem(signal, chi, te_s, w, b0_t)
    n_vox = prob.signal.shape[0]
    start = _params(x0, n_vox, "x0")
    box = _bounds(bounds)
    g_f = float(g)
    if not math.isfinite(g_f):
        raise ValueError(f"g must be finite, got {g!r}")
    _tolerances(max_iter, gtol, xtol, ftol)
    return _run(prob, start, box, g_f, int(max_iter), float(gtol), float(xtol), float(ftol))


def _run(
    prob: _Problem,
    start: NDArray[np.float64],
    box: NDArray[np.float64],
    g: float,
    max_iter: int,
    gtol: float,
    xtol: float,
    ftol: float,
) -> QQSolution:
    n_vox = prob.signal.shape[0]
    params = np.empty((n_vox, _N_PARAMS))
    cost = np.empty(n_vox)
    status = np.empty(n_vox, dtype=np.int8)
    iterations = np.empty(n_vox, dtype=np.int32)
    if n_vox:
        qq_kernel(
            prob.signal,
            prob.chi,
            prob.te,
            start,
            np.ascontiguousarray(box[:, 0]),
            np.ascontiguousarray(box[:, 1]),
            prob.sqrt_w,
            g,
            prob.c_dw,
            *_fs_arrays(),
            max_iter,
            gtol,
            xtol,
            ftol,
            params,
            cost,
            status,
            iterations,
        )
    return QQSolution(params=params, cost=cost, status=status, iterations=iterations)


def _y_sensitivity(
    prob: _Problem, params: NDArray[np.float64], box: NDArray[np.float64], g: float
) -> NDArray[np.float64]:
    """Gauss–Newton estimate of ``dY_i/dg >= 0`` per voxel at a solution (0 where not finite).

    At a stationary point with Y free, ``H·dx = (dg/Ya)·e_Y``, so ``dY_i/dg = [H_F⁻¹]_YY / Ya``
    on the free parameters F; 0 where Y is held on a bound.
    """
    r, jac = _jacobian_at(prob, params)
    hess = np.einsum("nki,nkj->nij", jac, jac)
    grad = np.einsum("nki,nk->ni", jac, r)
    grad[:, 0] -= g / YA
    width = box[:, 1] - box[:, 0]
    at_lo = (params <= box[:, 0] + 1e-12 * width) & (grad > 0)
    at_hi = (params >= box[:, 1] - 1e-12 * width) & (grad < 0)
    fixed = at_lo | at_hi
    bad = ~np.isfinite(hess).all(axis=(1, 2))
    hess[bad] = 0.0
    diag = np.einsum("nii->ni", hess)
    eye = np.eye(_N_PARAMS, dtype=bool)
    # Fixed rows/columns become identity; a relative 1e-12 ridge keeps near-singular H solvable.
    hess = np.where(fixed[:, :, None] | fixed[:, None, :], 0.0, hess)
    hess[:, eye] += np.where(fixed, 1.0, 1e-12 * diag + 1e-300)
    e_y = np.zeros((params.shape[0], _N_PARAMS, 1))
    e_y[:, 0, 0] = 1.0
    inv_yy = np.linalg.solve(hess, e_y)[:, 0, 0]
    k: NDArray[np.float64] = np.asarray(inv_yy / YA, dtype=np.float64)
    k[fixed[:, 0] | bad | ~(k > 0)] = 0.0
    return k


def _predict_dg(
    k: NDArray[np.float64],
    y: NDArray[np.float64],
    y_lo: float,
    y_hi: float,
    rho: float,
    inv_c: float,
    share: NDArray[np.float64] | None = None,
) -> float:
    """Step in ``g`` that zeroes the predicted ρ, with each voxel's Y change capped at its bound.

    Predicted ``Y_i(g + Δg) = clip(Y_i + k_i·Δg, y_lo, y_hi)``, so the predicted ρ is piecewise
    linear and decreasing in Δg; its root is found exactly over the sorted breakpoints. NaN if
    the prediction cannot reach zero (``inv_c = 0`` and every Y saturates first). ``share``: each
    voxel's weight in the mean times N (a weighted mean scales ``k`` and the distance to the
    bound alike, so the breakpoints stay).
    """
    n = y.size
    sign = 1.0 if rho > 0 else -1.0  # ρ > 0: OEF too high, raise g (Y goes up)
    dist = (y_hi - y) if sign > 0 else (y - y_lo)
    if share is not None:
        dist, k = dist * share, k * share
    use = (k > 0) & (dist > 0)
    bp = dist[use] / k[use]  # |Δg| at which voxel i reaches its bound
    order = np.argsort(bp)
    bp, d_sorted, k_sorted = bp[order], dist[use][order], k[use][order]
    scale = 1.0 / (n * YA)  # mean over voxels, Y -> OEF
    target = abs(rho)
    # f(t) = |ρ| - scale·(Σ_saturated dist + t·Σ_free k) - t·inv_c, t = |Δg|, at each breakpoint:
    sat = np.concatenate([[0.0], np.cumsum(d_sorted)])
    kfree = k_sorted.sum() - np.concatenate([[0.0], np.cumsum(k_sorted)])
    f_bp = target - scale * (sat[1:] + bp * kfree[1:]) - bp * inv_c
    hit = np.flatnonzero(f_bp <= 0.0)
    j = int(hit[0]) if hit.size else bp.size  # the root lies after breakpoint j - 1
    slope = scale * kfree[j] + inv_c
    if slope <= 0.0:
        return math.nan
    return sign * (target - scale * sat[j]) / slope


def _jacobian_at(
    prob: _Problem, params: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    n_vox, n_echo = prob.signal.shape
    r = np.empty((n_vox, 1 + n_echo))
    jac = np.empty((n_vox, 1 + n_echo, _N_PARAMS))
    if n_vox:
        qq_jacobian_kernel(
            np.ascontiguousarray(params),
            prob.signal,
            prob.chi,
            prob.te,
            prob.sqrt_w,
            prob.c_dw,
            *_fs_arrays(),
            r,
            jac,
        )
    return r, jac


def solve_qq_prior(
    signal: ArrayLike,
    chi: ArrayLike,
    te_s: ArrayLike,
    x0: ArrayLike,
    *,
    w: float,
    lam: float,
    oef_wb: float,
    rounds: int = 30,
    oef_tol: float = 1e-8,
    weights: ArrayLike | None = None,
    warm_start: bool = True,
    bounds: ArrayLike | None = None,
    b0_t: float = B0_T,
    max_iter: int = MAX_ITER,
    gtol: float = GTOL,
    xtol: float = XTOL,
    ftol: float = FTOL,
) -> QQPriorSolution:
    """QQ inversion with the whole-brain OEF prior of Cho et al. (2018), by outer rounds.

    Parameters
    ----------
    signal, chi, te_s, x0, w, bounds, b0_t, max_iter, gtol, xtol, ftol
        As in :func:`solve_qq`; the N voxels are the whole brain (mask) the prior averages over.
    lam : float
        Prior weight λ ``>= 0`` (cost units); ``inf`` imposes ``mean OEF = oef_wb`` exactly.
    oef_wb : float
        Whole-brain OEF the mean is pulled to, as a fraction (not percent).
    rounds : int
        Most vectorised per-voxel solves (``>= 1``; the ``g = 0`` solve is the first).
    oef_tol : float
        Stop when ``|ρ(g)| <= oef_tol`` (OEF units; ρ in the Notes).
    weights : array_like of shape (N,), optional
        Positive weight ``n_i`` of each row: a row that stands for ``n_i`` voxels (a CAT
        cluster's mean signal). The coupled objective becomes
        ``sum_i n_i c_i + λ (m - OEF_wb)²`` with ``m`` the ``n``-weighted mean OEF, whose
        stationarity is each row's at the same ``g = 2λ (m - OEF_wb) / sum(n)``; ``N`` in the
        Notes is then ``sum(n)``. Default: every row one voxel.
    warm_start : bool
        Start each round from the nearest round's solution (default), or every round from
        ``x0``: then the solution at the final ``g`` is what :func:`solve_qq` gives from ``x0``
        at that ``g``, so that a caller can solve more voxels at that ``g`` alike.

    Returns
    -------
    QQPriorSolution
        The per-voxel solution at the final ``g``, ``g`` itself, the round count, the mean OEF,
        the final ρ and whether it met ``oef_tol``.

    Raises
    ------
    ValueError
        For invalid arguments (as :func:`solve_qq`; ``lam`` NaN or negative, ``oef_wb`` not
        finite, ``rounds < 1``, ``oef_tol`` negative).

    Notes
    -----
    The coupled objective over the N voxels (those with finite parameters after the first
    solve; voxels with nonfinite input stay NaN and do not count) is

    .. math::

        T(x_1..x_N) = \\sum_i c_i(x_i; g=0) + \\lambda\\,(\\bar m - \\mathrm{OEF}_{wb})^2,
        \\qquad \\bar m = \\frac1N \\sum_i (1 - Y_i/Y_a).

    Its stationarity in ``x_i`` is exactly the stationarity of the per-voxel objective
    ``c_i(x_i; g)`` (:func:`solve_qq`, linear term ``g·OEF``) with the one scalar

    .. math:: g = \\frac{2\\lambda}{N}\\,(\\bar m - \\mathrm{OEF}_{wb}),

    so the coupled problem reduces to a 1-D root find in ``g``: with ``x(g)`` the per-voxel
    solutions and ``m(g)`` their mean OEF, solve

    .. math:: \\rho(g) = m(g) - \\mathrm{OEF}_{wb} - g\\,\\frac{N}{2\\lambda} = 0

    (for ``λ = inf`` the last term vanishes: the hard constraint ``m(g) = OEF_wb``, ``g`` its
    Lagrange multiplier). A larger ``g`` penalises OEF more, so ``m(g)`` is non-increasing and
    ``ρ`` decreasing: the root is unique (for a finite λ it lies in
    ``(2λ/N)·[OEF_min - OEF_wb, OEF_max - OEF_wb]``, the OEF range the Y bounds allow).

    Round 1 solves at ``g = 0``. Until ``ρ`` has changed sign, the next ``g`` is a Newton step
    with the Gauss–Newton slope ``m'(g) ≈ -(1/N) Σ_i [H_i⁻¹]_YY / Ya²`` at the current
    solution (or, where that is not negative, a doubling expansion), clipped into the interval
    above; once the root is bracketed, the Illinois variant of regula falsi (the end kept
    twice in a row has its ρ halved), falling back to bisection. Each round is one
    vectorised :func:`solve_qq` at the new ``g``, warm-started from the evaluated round whose
    ``g`` is nearest. The solve stops at ``|ρ| <= oef_tol`` or after ``rounds`` solves and
    returns the round with the smallest ``|ρ|``. The per-voxel solutions are local minima, so
    ``m(g)`` is only as monotone as the continuation from round to round keeps it.
    """
    prob = _problem(signal, chi, te_s, w, b0_t)
    n_vox = prob.signal.shape[0]
    start = _params(x0, n_vox, "x0")
    box = _bounds(bounds)
    _tolerances(max_iter, gtol, xtol, ftol)
    lam_f = float(lam)
    if not lam_f >= 0.0:
        raise ValueError(f"lam must be >= 0 (inf for the hard constraint), got {lam!r}")
    wb = float(oef_wb)
    if not math.isfinite(wb):
        raise ValueError(f"oef_wb must be finite (a fraction), got {oef_wb!r}")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be an integer >= 1, got {rounds!r}")
    if not (math.isfinite(float(oef_tol)) and float(oef_tol) >= 0.0):
        raise ValueError(f"oef_tol must be finite and >= 0, got {oef_tol!r}")
    opts = (int(max_iter), float(gtol), float(xtol), float(ftol))

    if weights is None:
        weight = np.ones(n_vox)
    else:
        weight = np.asarray(weights, dtype=np.float64).reshape(-1)
        if weight.shape != (n_vox,) or not (np.isfinite(weight) & (weight > 0)).all():
            raise ValueError(f"weights must be {n_vox} positive finite values, got {weights!r}")
    sol = _run(prob, start, box, 0.0, *opts)
    valid = np.isfinite(sol.params).all(axis=1)
    n_valid = int(valid.sum())
    total = float(weight[valid].sum())
    share = weight[valid] * n_valid / total if n_valid else None

    def mean_oef(s: QQSolution) -> float:
        if not n_valid:
            return math.nan
        return float(np.sum(weight[valid] * oef(s.params[valid, 0])) / total)

    if n_valid == 0 or lam_f == 0.0:
        m0 = mean_oef(sol)
        res = m0 - wb if n_valid else math.nan
        return QQPriorSolution(sol, 0.0, 1, m0, res, n_valid > 0 and lam_f == 0.0)

    inv_c = 0.0 if math.isinf(lam_f) else total / (2.0 * lam_f)  # N/(2λ)
    if inv_c > 0.0:
        oef_min, oef_max = 1.0 - box[0, 1] / YA, 1.0 - box[0, 0] / YA
        g_lo, g_hi = (oef_min - wb) / inv_c, (oef_max - wb) / inv_c
    else:
        g_lo, g_hi = -math.inf, math.inf

    def rho_of(s: QQSolution, g: float) -> tuple[float, float]:
        m = mean_oef(s)
        return m - wb - g * inv_c, m

    rho, m = rho_of(sol, 0.0)
    evaluated: list[tuple[float, QQSolution]] = [(0.0, sol)]
    best = (abs(rho), 0.0, sol, m, rho)
    pos: list[float] | None = None  # [g, ρ] with ρ > 0 (need a larger g)
    neg: list[float] | None = None  # [g, ρ] with ρ < 0
    last_side = 0
    prev: tuple[float, float] | None = None  # (g, ρ) of the round before the current one
    g_cur, sol_cur = 0.0, sol
    expand = 0.0
    n_rounds = 1
    while n_rounds < rounds and abs(rho) > oef_tol:
        if rho > 0:
            if last_side == 1 and neg is not None:
                neg[1] *= 0.5  # Illinois: this end was kept twice in a row
            pos, last_side = [g_cur, rho], 1
        else:
            if last_side == -1 and pos is not None:
                pos[1] *= 0.5
            neg, last_side = [g_cur, rho], -1
        if pos is not None and neg is not None:
            (ga, ra), (gb, rb) = pos, neg
            g_new = ga - ra * (gb - ga) / (rb - ra)
            if not (min(ga, gb) < g_new < max(ga, gb)):
                g_new = 0.5 * (ga + gb)
        else:
            dg = math.nan
            if prev is not None and prev[0] != g_cur:
                # Secant through the last two rounds (same side of the root), stretched by
                # _OVERSHOOT so that the next round is likely to bracket the root.
                slope = (rho - prev[1]) / (g_cur - prev[0])
                if slope < 0.0 and math.isfinite(slope):
                    dg = -_OVERSHOOT * rho / slope
            if not math.isfinite(dg):
                cur = sol_cur.params[valid]
                k = _y_sensitivity(prob, sol_cur.params, box, g_cur)[valid]
                dg = _predict_dg(k, cur[:, 0], box[0, 0], box[0, 1], rho, inv_c, share)
            if math.isfinite(dg) and dg != 0.0:
                g_new = g_cur + dg
            else:  # no usable prediction (e.g. every Y held on a bound): expand geometrically
                expand = max(2.0 * expand, abs(g_cur), 1e-6)
                g_new = g_cur + math.copysign(expand, rho)
            g_new = min(max(g_new, g_lo), g_hi)
        prev = (g_cur, rho)
        if warm_start:
            warm = min(evaluated, key=lambda e: abs(e[0] - g_new))[1].params
            warm = np.where(np.isfinite(warm), warm, start)
        else:
            warm = start
        sol_cur = _run(prob, np.ascontiguousarray(warm), box, g_new, *opts)
        g_cur = g_new
        n_rounds += 1
        rho, m = rho_of(sol_cur, g_cur)
        if abs(rho) < best[0]:
            best = (abs(rho), g_cur, sol_cur, m, rho)
        # Keep only the solutions a warm start can still use: the bracket ends and this round.
        keep = {g_cur} | {e[0] for e in (pos, neg) if e is not None}
        evaluated = [e for e in evaluated if e[0] in keep] + [(g_cur, sol_cur)]
    _, g_best, sol_best, m_best, rho_best = best
    return QQPriorSolution(
        solution=sol_best,
        g=float(g_best),
        rounds=n_rounds,
        mean_oef=float(m_best),
        residual=float(rho_best),
        converged=bool(abs(rho_best) <= oef_tol),
    )
