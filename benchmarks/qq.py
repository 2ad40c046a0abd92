"""QQ-inversion throughput per core: oefray's Numba solver vs per-voxel scipy least_squares.

Usage::

    python benchmarks/qq.py [--voxels N] [--scipy-voxels M] [--seed S] [--repeats R]

Simulates N noisy voxels of the QQ model (Y~U(0.45, 0.85), v~U(0.01, 0.06), R2~U(8, 30) s⁻¹,
S0~U(0.9, 1.3), chi_nb~U(-0.1, 0.1) ppm; Rician noise at SNR 50-200 on ``qq.qbold_signal`` at
TE = 4.5 + 5k ms, 8 echoes; chi with 0.005 ppm Gaussian noise; QSM weight w = 5), all started
from one population point, then times, in the same process:

- ``oefray.physics.qq_solve.solve_qq`` on all N voxels with ``numba.set_num_threads(1)`` (the
  first call, which compiles or loads the cached kernel, is a warm-up and excluded), default
  tolerances;
- ``scipy.optimize.least_squares`` (``method='trf'``, the bounds, ``x_scale='jac'``) voxel by
  voxel on the first M voxels from the same starts, on the same objective: residuals
  ``[sqrt(w)(F_QSM - chi), S_model - S]`` in NumPy from ``fs.f_s`` and ``qq``'s functions, and
  oefray's analytic Jacobian called straight on its kernel — the fastest callables scipy can be
  given here. Once at scipy's default tolerances (1e-8) and once at 1e-12.

Everything runs on one thread, so voxels/s is per core; each timing is the best of
``--repeats`` (scipy: one run). Costs are compared with ``qq_cost`` (qq.py's forward model).
The last line is ``qq speedup_vs_least_squares=<oefray voxels/s ÷ scipy voxels/s>`` against
scipy at its *default* tolerances (the faster, i.e. the conservative, reference).
"""

from __future__ import annotations

import os

# One thread everywhere (set before NumPy loads a BLAS; scipy's trf uses LAPACK per iteration).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from oefray.physics import fs, qq  # noqa: E402
from oefray.physics.constants import B0_T, GAMMA  # noqa: E402
from oefray.physics.qq_kernel import qq_jacobian_kernel  # noqa: E402
from oefray.physics.qq_solve import QQ_BOUNDS, _fs_arrays, qq_cost, solve_qq  # noqa: E402

TE_S = (4.5 + 5.0 * np.arange(8)) * 1e-3
W = 5.0
START = np.array([0.6, 0.03, 18.0, 1.1, 0.0])  # population point (Y, v, R2, S0, chi_nb)
RANGES = np.array([[0.45, 0.85], [0.01, 0.06], [8.0, 30.0], [0.9, 1.3], [-0.1, 0.1]])


def simulate_voxels(
    rng: np.random.Generator | int, n_voxels: int, te_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy QQ voxels: signal (n_voxels, K) float64 and chi (n_voxels,) ppm (see the module)."""
    rng = np.random.default_rng(rng)
    y, v, r2, s0, chi_nb = (rng.uniform(lo, hi, n_voxels) for lo, hi in RANGES)
    s = qq.qbold_signal(s0, r2, y, v, chi_nb, te_s)
    sigma = s[:, :1] / rng.uniform(50.0, 200.0, (n_voxels, 1))
    signal = np.hypot(
        s + sigma * rng.standard_normal(s.shape), sigma * rng.standard_normal(s.shape)
    )
    chi = qq.qsm_susceptibility(y, v, chi_nb) + 0.005 * rng.standard_normal(n_voxels)
    return signal, chi


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def least_squares_voxels(
    signal: np.ndarray, chi: np.ndarray, te_s: np.ndarray, x0: np.ndarray, tol: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel ``least_squares`` on the QQ objective (tolerances ``tol``, None: scipy's
    defaults): (params (M, 5), status (M,))."""
    sqrt_w = np.sqrt(W)
    arrays = _fs_arrays()
    c_dw = GAMMA * B0_T / 3.0
    r_buf = np.empty((1, 1 + te_s.size))
    j_buf = np.empty((1, 1 + te_s.size, 5))
    out = np.empty((signal.shape[0], 5))
    status = np.empty(signal.shape[0], dtype=int)
    lo, hi = QQ_BOUNDS[:, 0], QQ_BOUNDS[:, 1]
    kwargs = {} if tol is None else {"ftol": tol, "xtol": tol, "gtol": tol}
    for i in range(signal.shape[0]):
        s_i, chi_i = signal[i], chi[i]

        def fun(x: np.ndarray, s_i: np.ndarray = s_i, chi_i: float = chi_i) -> np.ndarray:
            dw = qq.characteristic_frequency(x[0], x[4])
            model = x[3] * np.exp(-x[2] * te_s - x[1] * fs.f_s(dw * te_s))
            qsm = sqrt_w * (qq.qsm_susceptibility(x[0], x[1], x[4]) - chi_i)
            return np.concatenate([[qsm], model - s_i])

        def jac(x: np.ndarray, s_i: np.ndarray = s_i, chi_i: float = chi_i) -> np.ndarray:
            qq_jacobian_kernel(
                x[None].copy(), s_i[None], np.array([chi_i]), te_s, sqrt_w, c_dw, *arrays,
                r_buf, j_buf,
            )  # fmt: skip
            return j_buf[0].copy()

        res = least_squares(
            fun, x0[i], jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", **kwargs
        )
        out[i] = res.x
        status[i] = res.status
    return out, status


def _agreement(ours: np.ndarray, theirs: np.ndarray, ok: np.ndarray) -> str:
    rel = (ours[ok] - theirs[ok]) / theirs[ok]
    return (
        f"equal within 1e-6: {np.mean(np.abs(rel) <= 1e-6):.1%}, "
        f"oefray not worse (rel <= 1e-6): {np.mean(rel <= 1e-6):.1%}, "
        f"rel range [{rel.min():.2e}, {rel.max():.2e}] over {int(ok.sum())} voxels"
    )


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=100_000, help="N voxels (default 1e5)")
    parser.add_argument("--scipy-voxels", type=int, default=300, help="M voxels for scipy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    ns = parser.parse_args(args)

    n_sp = min(ns.scipy_voxels, ns.voxels)
    signal, chi = simulate_voxels(ns.seed, ns.voxels, TE_S)
    x0 = np.tile(START, (ns.voxels, 1))
    print(f"voxels={ns.voxels} echoes={TE_S.size} scipy_voxels={n_sp} w={W}")
    print(f"TE_ms={np.round(TE_S * 1e3, 3).tolist()}")

    numba.set_num_threads(1)
    t0 = time.perf_counter()
    solve_qq(signal[:16], chi[:16], TE_S, x0[:16], w=W)  # warm-up: compile or cache load
    print(f"numba warm-up (compile or cache load, excluded): {time.perf_counter() - t0:.3f} s")

    t_ours = _best_time(lambda: solve_qq(signal, chi, TE_S, x0, w=W), ns.repeats)
    sol = solve_qq(signal, chi, TE_S, x0, w=W)

    sub = (signal[:n_sp], chi[:n_sp], TE_S, x0[:n_sp])
    t0 = time.perf_counter()
    ref_default, st_default = least_squares_voxels(*sub, tol=None)
    t_default = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_tight, st_tight = least_squares_voxels(*sub, tol=1e-12)
    t_tight = time.perf_counter() - t0

    vps_ours = ns.voxels / t_ours
    vps_default = n_sp / t_default
    vps_tight = n_sp / t_tight
    n_conv = int(np.count_nonzero(sol.converged))
    print(
        f"oefray solve_qq (1 thread)        : {vps_ours:12,.0f} voxels/s  ({t_ours:.3f} s; "
        f"{n_conv}/{ns.voxels} converged, mean {sol.iterations.mean():.1f} iterations)"
    )
    print(f"least_squares per voxel, tol 1e-8 : {vps_default:12,.1f} voxels/s  ({t_default:.2f} s)")
    print(f"least_squares per voxel, tol 1e-12: {vps_tight:12,.1f} voxels/s  ({t_tight:.2f} s)")
    print("(all single-threaded: voxels/s is per core)")

    ours = qq_cost(sol.params[:n_sp], *sub[:3], w=W)
    for label, ref, st in (("1e-8", ref_default, st_default), ("1e-12", ref_tight, st_tight)):
        theirs = qq_cost(ref, *sub[:3], w=W)
        ok = (st > 0) & sol.converged[:n_sp]
        print(f"cost vs least_squares tol {label}: {_agreement(ours, theirs, ok)}")
    print(f"speedup vs least_squares at tol 1e-12: {vps_ours / vps_tight:.0f}x")
    print(f"qq speedup_vs_least_squares={vps_ours / vps_default:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
