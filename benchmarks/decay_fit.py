"""Decay-fit throughput per core: oefray's exact kernel vs per-voxel curve_fit vs log-linear NumPy.

Usage::

    python benchmarks/decay_fit.py [--voxels N] [--echoes K] [--curve-fit-voxels M] [--seed S]

Simulates N noisy voxels (float32; ``A·exp(-B·TE)`` times a mild qBOLD-like factor, Rician noise at
SNR 50-200, TE = 4.5 + 5k ms), then times, in the same process:

- ``oefray.physics.decay.fit_decay`` on all N voxels (Numba, single-threaded; the first call,
  which compiles or loads the cached kernel, is a warm-up and excluded from the timing);
- ``scipy.optimize.curve_fit`` voxel by voxel on the first M voxels, started from the log-linear
  estimate (not timed) with its default finite-difference Jacobian — its fastest setting here:
  an analytic Jacobian costs more in Python calls than it saves (MINPACK, no BLAS);
- ``fit_decay_loglinear`` on all N voxels (vectorised elementwise NumPy, no BLAS).

All three run on one thread, so voxels/s is per core. Each timing is the best of ``--repeats``.
The last line is ``decay_fit speedup_vs_curve_fit=<oefray voxels/s ÷ curve_fit voxels/s>``.
"""

from __future__ import annotations

import os

# One thread everywhere (set before NumPy loads a BLAS; the timed code uses none anyway).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from scipy.optimize import OptimizeWarning, curve_fit  # noqa: E402

from oefray.physics.decay import FitStatus, fit_decay, fit_decay_loglinear  # noqa: E402


def simulate_voxels(
    rng: np.random.Generator | int, n_voxels: int, te_s: np.ndarray, chunk: int = 250_000
) -> np.ndarray:
    """Noisy multi-echo magnitudes, float32 of shape (n_voxels, K).

    ``s(t) = A·exp(-B·t)·exp(-v·0.3·(dw·t)²)`` with A~U(0.8,1.3), B~U(8,60) s⁻¹, v~U(0.01,0.04),
    dw~U(30,120) rad/s; magnitude of ``s + n1 + i·n2`` with σ = s(TE_1)/SNR, SNR~U(50,200).
    """
    rng = np.random.default_rng(rng)
    out = np.empty((n_voxels, te_s.size), dtype=np.float32)
    t = te_s[None, :]
    for start in range(0, n_voxels, chunk):
        n = min(chunk, n_voxels - start)
        a = rng.uniform(0.8, 1.3, n)[:, None]
        b = rng.uniform(8.0, 60.0, n)[:, None]
        v = rng.uniform(0.01, 0.04, n)[:, None]
        dw = rng.uniform(30.0, 120.0, n)[:, None]
        s = a * np.exp(-b * t - v * 0.3 * (dw * t) ** 2)
        sigma = s[:, :1] / rng.uniform(50.0, 200.0, n)[:, None]
        n1 = rng.standard_normal(s.shape)
        n2 = rng.standard_normal(s.shape)
        out[start : start + n] = np.hypot(s + sigma * n1, sigma * n2)
    return out


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _model(t: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.exp(-b * t)


def curve_fit_voxels(signal: np.ndarray, te_s: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Per-voxel ``curve_fit`` (default settings, start ``p0``): (M, 2) of A, B; NaN if failed."""
    out = np.full((signal.shape[0], 2), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for i in range(signal.shape[0]):
            try:
                out[i], _ = curve_fit(_model, te_s, signal[i], p0=p0[i])
            except RuntimeError:
                pass
    return out


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=1_000_000, help="N voxels (default 1e6)")
    parser.add_argument("--echoes", type=int, default=8, help="K echoes, TE = 4.5 + 5k ms")
    parser.add_argument("--curve-fit-voxels", type=int, default=2000, help="M voxels for curve_fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings")
    ns = parser.parse_args(args)

    te = (4.5 + 5.0 * np.arange(ns.echoes)) * 1e-3
    n_cf = min(ns.curve_fit_voxels, ns.voxels)
    signal = simulate_voxels(ns.seed, ns.voxels, te)
    sub = np.ascontiguousarray(signal[:n_cf], dtype=np.float64)
    print(f"voxels={ns.voxels} echoes={ns.echoes} curve_fit_voxels={n_cf} dtype={signal.dtype}")
    print(f"TE_ms={np.round(te * 1e3, 3).tolist()}")

    t0 = time.perf_counter()
    fit_decay(signal[:16], te)  # warm-up: Numba compile or cache load, excluded from timings
    print(f"numba warm-up (compile or cache load, excluded): {time.perf_counter() - t0:.3f} s")

    t_ours = _best_time(lambda: fit_decay(signal, te), ns.repeats)
    ours = fit_decay(signal, te)
    t_ll = _best_time(lambda: fit_decay_loglinear(signal, te), ns.repeats)
    ll = fit_decay_loglinear(signal, te)
    p0 = np.stack([ll.A[:n_cf], ll.B[:n_cf]], axis=1).astype(np.float64)
    p0[~np.isfinite(p0).all(axis=1)] = (1.0, 20.0)
    t_cf = _best_time(lambda: curve_fit_voxels(sub, te, p0), ns.repeats)
    ref = curve_fit_voxels(sub, te, p0)

    vps_ours = ns.voxels / t_ours
    vps_ll = ns.voxels / t_ll
    vps_cf = n_cf / t_cf
    n_bad = int(np.count_nonzero(ours.status != FitStatus.OK))
    print(f"oefray fit_decay      : {vps_ours:14,.0f} voxels/s  ({t_ours:.3f} s; {n_bad} not OK)")
    print(f"curve_fit per voxel   : {vps_cf:14,.0f} voxels/s  ({t_cf:.3f} s for {n_cf})")
    print(f"fit_decay_loglinear   : {vps_ll:14,.0f} voxels/s  ({t_ll:.3f} s)")
    print("(all single-threaded: voxels/s is per core; best of", ns.repeats, "runs)")

    conv = np.isfinite(ref).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dev_a = np.abs(ours.A[:n_cf][conv] / ref[conv, 0] - 1)
        dev_b = np.abs(ours.B[:n_cf][conv] / ref[conv, 1] - 1)
        ll_b = np.abs(ll.B[:n_cf][conv] / ref[conv, 1] - 1)
    print(f"curve_fit converged on {int(conv.sum())}/{n_cf} voxels")
    print(f"max rel deviation vs curve_fit: A={np.nanmax(dev_a):.2e} B={np.nanmax(dev_b):.2e}")
    print(f"(log-linear reference for contrast: max rel deviation B={np.nanmax(ll_b):.2e})")
    print(f"log-linear vs curve_fit: {vps_ll / vps_cf:.1f}x (not exact: see above)")
    print(f"decay_fit speedup_vs_curve_fit={vps_ours / vps_cf:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
