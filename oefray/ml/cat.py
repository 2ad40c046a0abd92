"""CAT: cluster analysis of time evolution (Cho et al. 2019) for the QQ inversion.

A voxel's eight echoes and its QSM value pin its venous oxygenation ``Y`` down only loosely (at SNR
100 to about ±0.6, DESIGN.md §8): the voxel-wise QQ least squares
(:mod:`oefray.physics.qq_solve`) is flat along ``Y`` and lands wherever its start was. CAT finds a
good start by pooling voxels that look alike:

1. **Cluster** (:func:`fit_clusters`). Each voxel is described by its magnitude time evolution
   normalised by its first echo, ``S(t_k) / S(t_1)`` for ``k >= 2`` (echo 1 is 1 by
   construction), and its QSM value ``chi``. Each of these columns is standardised on a sample
   (z-score), so QSM weighs as much as one echo, and the sample is modelled as a Gaussian mixture
   with full covariances (scikit-learn ``GaussianMixture``, seeded). The number of clusters is
   the one of :data:`CLUSTER_COUNTS` with the lowest Bayesian information criterion: the rule
   X-means applies split by split, applied here over a fixed range. Full covariances, not the
   spherical clusters of k-means: within one tissue the noise of the normalised echoes is
   correlated and elongated, and a criterion on spherical clusters keeps splitting it: the
   clusters' mean signals then carry the noise pattern each cluster was selected for, and their
   solved ``Y`` scatter far from the truth (a k-means version of this module did so on the
   simulator); the mixture's BIC stops at a few clusters (3-4 per demo scan).
2. **Solve each cluster** (:func:`solve_clusters`). A cluster's signal is the mean of its voxels'
   normalised signals, and its QSM the mean of theirs; averaging ``n`` voxels divides the noise
   by ``sqrt(n)``, so the cluster solution is as well determined as the data of thousands of
   voxels allow. It is solved from several starting ``Y`` values (:data:`Y_STARTS`) and the
   lowest cost kept.
3. **Solve each voxel from its cluster's solution** (the caller, with
   :func:`oefray.physics.qq_solve.solve_qq`: ``x0`` = :func:`starts`, bounds
   :func:`voxel_bounds`).

**What is shared within a cluster** (``shared``, default :data:`SHARED`): ``Y`` and ``v``. A
voxel's own data determine ``R2``, ``S0`` and ``chi_nb`` well (the decay rate, the amplitude, and
the QSM value given the blood's share), so those are solved voxel by voxel from the cluster's
values. ``Y`` and ``v`` they do not determine: the qBOLD signal depends on them mostly through
the product ``v * (1 - Y)`` and on the echo times only weakly, and a voxel-wise solve of all five
drifts along that valley to wherever the noise takes it (on the simulator at SNR 100, free
voxel-wise ``Y`` spans the whole [0, 0.98] range while the truth spans 0.55-0.75). The cluster's
mean signal has the noise of one voxel divided by ``sqrt(n)``, so its ``Y`` and ``v`` are what the
data can say, at the resolution of the clusters: voxels that evolve alike share them, and a
lesion whose signal evolves differently (an infarct's long T2*) gets clusters of its own.
``shared=()`` frees all five (every voxel only starts from its cluster's solution).

Pure NumPy / scikit-learn on :mod:`oefray.physics`; no Ray, MLflow or files. The cluster sums
(:func:`cluster_sums`) are additive, so a caller may accumulate them slab by slab.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sklearn.mixture import GaussianMixture

from oefray.physics.constants import PARAMETERS
from oefray.physics.qq_solve import QQ_BOUNDS, solve_qq

__all__ = [
    "CLUSTER_COUNTS",
    "Y_STARTS",
    "Clusters",
    "assign",
    "cluster_sums",
    "evolution_features",
    "fit_clusters",
    "solve_clusters",
    "starts",
    "voxel_bounds",
]

#: The parameters shared within a cluster (see the module docstring).
SHARED: tuple[str, ...] = ("Y", "v")

#: Cluster counts tried; the one with the lowest BIC is kept.
CLUSTER_COUNTS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)

#: Starting values of ``Y`` of each cluster's solve (the others start at :data:`PRIOR`).
Y_STARTS: tuple[float, ...] = (0.3, 0.45, 0.6, 0.75, 0.9)

#: Starting values of ``v, R2, chi_nb`` (fraction, 1/s, ppm) of each cluster's solve; ``S0``
#: starts at the cluster's echo-1 extrapolation (:func:`solve_clusters`).
PRIOR: dict[str, float] = {"v": 0.03, "R2": 15.0, "chi_nb": 0.0}


def evolution_features(signal: npt.ArrayLike, chi: npt.ArrayLike) -> np.ndarray:
    """What CAT clusters: ``S(t_k) / S(t_1)`` for ``k >= 2`` and ``chi``, per voxel.

    Parameters
    ----------
    signal : array_like of shape (n, E), E >= 2
        Magnitudes (any scale; echo 1 > 0).
    chi : array_like of shape (n,)
        QSM, ppm.

    Returns
    -------
    ndarray of shape (n, E), float64
        ``E - 1`` normalised echoes, then ``chi``.
    """
    s = np.asarray(signal, dtype=np.float64)
    c = np.asarray(chi, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 2 or c.shape != (s.shape[0],):
        raise ValueError(f"signal must be (n, E >= 2) and chi (n,), got {s.shape}, {c.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        evolution = s[:, 1:] / s[:, :1]
    return np.column_stack([evolution, c])


@dataclass(frozen=True)
class Clusters:
    """A CAT clustering: what assigns a voxel to its cluster.

    Attributes
    ----------
    model : sklearn.mixture.GaussianMixture
        The fitted mixture, in standardised :func:`evolution_features` space.
    mean, scale : ndarray of shape (E,)
        The standardisation of each feature column (sample mean and standard deviation).
    bic : dict of int to float
        BIC of each cluster count tried.
    """

    model: GaussianMixture
    mean: np.ndarray
    scale: np.ndarray
    bic: dict[int, float]

    @property
    def k(self) -> int:
        return int(self.model.n_components)


def fit_clusters(
    signal: npt.ArrayLike,
    chi: npt.ArrayLike,
    *,
    counts: Sequence[int] = CLUSTER_COUNTS,
    seed: int = 0,
) -> Clusters:
    """Cluster a sample of voxels by their time evolution and QSM; the count by BIC.

    Parameters
    ----------
    signal : array_like of shape (n, E)
        The sample's magnitudes (finite, echo 1 > 0).
    chi : array_like of shape (n,)
        The sample's QSM, ppm.
    counts : sequence of int
        Cluster counts to try (those needing more parameters than the sample has values are
        skipped).
    seed : int
        Seed of the mixture's initialisation (k-means).

    Returns
    -------
    Clusters
    """
    x = evolution_features(signal, chi)
    if not np.isfinite(x).all():
        raise ValueError("the sample has non-finite values (echo 1 of 0, or NaN)")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    d = z.shape[1]
    per_component = d + d * (d + 1) // 2 + 1
    tried = sorted({int(k) for k in counts if 1 <= int(k) and int(k) * per_component < z.size})
    if not tried:
        raise ValueError(f"no cluster count of {list(counts)} fits a sample of {len(z)} voxels")
    best: tuple[float, GaussianMixture] | None = None
    bic: dict[int, float] = {}
    for k in tried:
        gm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-6)
        gm.fit(z)
        bic[k] = float(gm.bic(z))
        if best is None or bic[k] < best[0]:
            best = (bic[k], gm)
    assert best is not None
    return Clusters(model=best[1], mean=mean, scale=scale, bic=bic)


def assign(clusters: Clusters, signal: npt.ArrayLike, chi: npt.ArrayLike) -> np.ndarray:
    """Each voxel's most probable cluster, (n,) int64; -1 for a voxel with non-finite
    features."""
    z = (evolution_features(signal, chi) - clusters.mean) / clusters.scale
    ok = np.isfinite(z).all(axis=1)
    out = np.full(len(z), -1, dtype=np.int64)
    if ok.any():
        out[ok] = clusters.model.predict(z[ok])
    return out


def cluster_sums(
    labels: npt.ArrayLike, signal: npt.ArrayLike, chi: npt.ArrayLike, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: the sum of the voxels' echo-1-normalised signals (k, E), of their QSM (k,)
    and their count (k,). Additive over disjoint voxel sets; voxels with label -1 are left
    out."""
    lab = np.asarray(labels, dtype=np.int64)
    s = np.asarray(signal, dtype=np.float64)
    c = np.asarray(chi, dtype=np.float64)
    ok = lab >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = s[ok] / s[ok, :1]
    sums = np.zeros((k, s.shape[1]))
    np.add.at(sums, lab[ok], norm)
    chi_sums = np.bincount(lab[ok], weights=c[ok], minlength=k).astype(np.float64)
    n = np.bincount(lab[ok], minlength=k).astype(np.int64)
    return sums, chi_sums, n


def solve_clusters(
    signal_sums: np.ndarray,
    chi_sums: np.ndarray,
    counts: np.ndarray,
    te_s: npt.ArrayLike,
    *,
    w: float,
    g: float = 0.0,
    bounds: np.ndarray | None = None,
) -> np.ndarray:
    """Solve QQ on each cluster's mean normalised signal and mean QSM, from every start of
    :data:`Y_STARTS`; the lowest-cost solution of each cluster, (k, 5) in ``PARAMETERS`` order
    (NaN rows for empty clusters). ``S0`` is on the echo-1-normalised scale; ``g`` is the
    multiplier of the ``g * OEF`` term (:func:`oefray.physics.qq_solve.solve_qq`)."""
    counts = np.asarray(counts)
    k, n_echo = signal_sums.shape
    full = counts > 0
    mean = signal_sums[full] / counts[full, None]
    mean_chi = chi_sums[full] / counts[full]
    te = np.asarray(te_s, dtype=np.float64)
    # S0 start: the log-linear extrapolation of the first two echoes to t = 0
    rate = np.log(np.clip(mean[:, 0] / mean[:, 1], 1e-6, None)) / (te[1] - te[0])
    s0 = np.clip(mean[:, 0] * np.exp(rate * te[0]), 0.1, 2.9)
    best_x = np.full((len(mean), len(PARAMETERS)), np.nan)
    best_cost = np.full(len(mean), np.inf)
    lo, hi = (QQ_BOUNDS if bounds is None else np.asarray(bounds)).T
    for y0 in Y_STARTS:
        x0 = np.empty((len(mean), len(PARAMETERS)))
        for j, p in enumerate(PARAMETERS):
            x0[:, j] = {"Y": y0, "S0": 0.0}.get(p, PRIOR.get(p, 0.0))
        x0[:, PARAMETERS.index("S0")] = s0
        x0 = np.clip(x0, lo, hi)
        sol = solve_qq(mean, mean_chi, te, x0, w=w, g=g, bounds=bounds)
        better = np.isfinite(sol.cost) & (sol.cost < best_cost)
        best_x[better] = sol.params[better]
        best_cost[better] = sol.cost[better]
    out = np.full((k, len(PARAMETERS)), np.nan)
    out[full] = best_x
    return out


def starts(solutions: np.ndarray, labels: npt.ArrayLike, fallback: npt.ArrayLike) -> np.ndarray:
    """The voxel-wise starting values: each voxel's cluster solution, or ``fallback`` (5,) for
    a voxel without a cluster (label -1) or whose cluster has no solution."""
    lab = np.asarray(labels, dtype=np.int64)
    out = np.broadcast_to(np.asarray(fallback, dtype=np.float64), (len(lab), solutions.shape[1]))
    out = out.copy()
    ok = lab >= 0
    rows = solutions[lab[ok]]
    good = np.isfinite(rows).all(axis=1)
    idx = np.flatnonzero(ok)[good]
    out[idx] = rows[good]
    return out


def voxel_bounds(
    solution: npt.ArrayLike, shared: Sequence[str] = SHARED, bounds: np.ndarray | None = None
) -> np.ndarray:
    """The bounds of the voxel-wise solve of the voxels of one cluster: ``bounds`` (default
    :data:`~oefray.physics.qq_solve.QQ_BOUNDS`) with each ``shared`` parameter fixed at the
    cluster's ``solution`` (5,)."""
    out = np.array(QQ_BOUNDS if bounds is None else bounds, dtype=np.float64)
    sol = np.asarray(solution, dtype=np.float64)
    for name in shared:
        j = PARAMETERS.index(name)
        out[j] = np.clip(sol[j], out[j, 0], out[j, 1])
    return out
