"""CCM baseline (Lee 2022): cluster-based QQ parameter lookup with inverse-distance interpolation.

The cluster-based method (CCM) is the non-neural baseline the LSTM is compared against
(DESIGN.md section 1.7, Table 2). It has two steps:

1. **Library** (:func:`build_library`). Reference parameter sets ``(Y, v, R2, S0, chi_nb)`` — the
   training subjects' ground truth — are subsampled (seeded), their qBOLD magnitude is
   *re-simulated* with :func:`oefray.physics.qq.qbold_signal` at the echo times of the data to be
   evaluated, optionally with Rician noise, and summarised by the exact decay fit
   :func:`oefray.physics.decay.fit_decay` as ``(A, B, E)``; the susceptibility ``chi`` comes from
   :func:`oefray.physics.qq.qsm_susceptibility`. The joint vectors
   ``[Y, v, R2, S0, chi_nb, A, B, E, chi]`` are standardised per column and clustered with
   k-means; the centroids (in physical units) form the library.
2. **Lookup** (:func:`predict`). A voxel's measured ``[A, B, E, S]`` (``S`` = QSM chi) is
   standardised with the library's feature statistics, its ``neighbours`` nearest centroids in
   standardised ``(A, B, E, chi)`` space are found (``scipy.spatial.cKDTree``) and their
   parameters are averaged with inverse-distance weights ``1 / d**power``.

**TE robustness.** ``(A, B, E)`` of a voxel depend on the echo scheme (``B`` is a decay rate
fitted over the sampled echoes, ``E`` the misfit of the non-mono-exponential qBOLD decay over
them). The library is therefore never reused across echo schemes: it is rebuilt by re-simulating
the reference parameters at the *target* echo times, so that library and data features are the
same function of the parameters. This re-simulation, not any property of the features alone, is
what makes CCM robust to the TE scheme; :attr:`CCMLibrary.te_s` records the scheme a library is
valid for.

Pure NumPy/SciPy/scikit-learn on top of :mod:`oefray.physics`; no Keras, Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans, MiniBatchKMeans

from oefray.ml.scaling import Standardizer
from oefray.physics.constants import B0_T, PARAMETERS
from oefray.physics.decay import FitStatus, fit_decay
from oefray.physics.echoes import validate_te
from oefray.physics.measurement import add_rician_noise, noise_sigma
from oefray.physics.qq import qbold_signal, qsm_susceptibility

__all__ = [
    "FEATURES",
    "MINIBATCH_THRESHOLD",
    "CCMConfig",
    "CCMLibrary",
    "build_library",
    "estimate_snr",
    "predict",
]

#: Matching features of the library, in the column order of :func:`predict`'s input: decay
#: amplitude A (signal units), rate B (s^-1), RMS residual E (signal units), susceptibility chi
#: (ppm; the measured QSM value ``S`` of a voxel).
FEATURES: tuple[str, ...] = ("A", "B", "E", "chi")

#: Library voxels above which k-means runs as ``MiniBatchKMeans`` instead of full ``KMeans``
#: (Lloyd). Full k-means is used up to here; beyond it the mini-batch variant keeps the build to
#: seconds (see ``CCMConfig`` Notes for measured times).
MINIBATCH_THRESHOLD: int = 50_000

_N_PARAMS = len(PARAMETERS)
_N_FEATURES = len(FEATURES)


@dataclass(frozen=True)
class CCMConfig:
    """Settings of the CCM library and lookup.

    Parameters
    ----------
    clusters : int
        Number of k-means clusters K (library entries), >= 1.
    neighbours : int
        Nearest centroids interpolated per voxel, >= 1 (capped at K when predicting).
    power : float
        Inverse-distance exponent: weights ``1 / d**power`` (0 gives a plain mean), finite, >= 0.
    library_size : int or None
        Reference voxels kept (a seeded subsample without replacement) before simulation; None
        keeps all. >= 1.
    seed : int
        Seed of the subsample, the noise and k-means, >= 0.
    snr : float or None
        None: noise-free library signals. A number > 0: Rician noise with
        ``sigma = median(echo-1 signal) / snr`` is added to the library magnitudes before the
        decay fit (:func:`oefray.physics.measurement.add_rician_noise`), as in
        :func:`oefray.physics.phantom.simulate_subject`; :func:`estimate_snr` gives the value
        that matches measured features.

    Notes
    -----
    Measured on a 2-core dev machine, 200 000 reference voxels, 8 echoes, K = 256: simulation +
    decay fit ~0.1 s; full ``KMeans`` (n_init=1) ~28 s for the whole build versus ~1 s with
    ``MiniBatchKMeans``, at the same held-out RMSE (within ~2 % per parameter); hence
    :data:`MINIBATCH_THRESHOLD`.
    """

    clusters: int = 256
    neighbours: int = 4
    power: float = 1.0
    library_size: int | None = 200_000
    seed: int = 0
    snr: float | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.clusters) or self.clusters < 1:
            raise ValueError(f"clusters must be an integer >= 1, got {self.clusters!r}")
        if not _is_int(self.neighbours) or self.neighbours < 1:
            raise ValueError(f"neighbours must be an integer >= 1, got {self.neighbours!r}")
        if not _is_real(self.power) or not (math.isfinite(self.power) and self.power >= 0):
            raise ValueError(f"power must be finite and >= 0, got {self.power!r}")
        if self.library_size is not None and (
            not _is_int(self.library_size) or self.library_size < 1
        ):
            raise ValueError(
                f"library_size must be None or an integer >= 1, got {self.library_size!r}"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.snr is not None and (
            not _is_real(self.snr) or not (math.isfinite(self.snr) and self.snr > 0)
        ):
            raise ValueError(f"snr must be None or finite and > 0, got {self.snr!r}")


@dataclass(frozen=True, eq=False)
class CCMLibrary:
    """A CCM library: K centroids of the standardised joint space, in physical units.

    Parameters
    ----------
    centroid_params : ndarray of shape (K, 5), float64
        Centroid parameters in ``PARAMETERS`` order (Y, v, R2 [s^-1], S0, chi_nb [ppm]).
    centroid_features : ndarray of shape (K, 4), float64
        Centroid matching features in :data:`FEATURES` order (A, B [s^-1], E, chi [ppm]).
    feature_mean : ndarray of shape (4,), float64
        Mean of each matching feature over the library voxels.
    feature_std : ndarray of shape (4,), float64
        Standard deviation of each matching feature over the library voxels, > 0.
    te_s : ndarray of shape (n_echoes,), float64
        Echo times (s) the library was simulated at; use it only for data with these echoes.
    config : CCMConfig
        The settings it was built with (and that :func:`predict` uses).
    """

    centroid_params: np.ndarray
    centroid_features: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    te_s: np.ndarray
    config: CCMConfig

    def __post_init__(self) -> None:
        params = np.asarray(self.centroid_params, dtype=np.float64)
        feats = np.asarray(self.centroid_features, dtype=np.float64)
        mean = np.asarray(self.feature_mean, dtype=np.float64)
        std = np.asarray(self.feature_std, dtype=np.float64)
        te = np.asarray(self.te_s, dtype=np.float64)
        if params.ndim != 2 or params.shape[1] != _N_PARAMS or params.shape[0] < 1:
            raise ValueError(f"centroid_params must have shape (K, 5), got {params.shape}")
        if feats.shape != (params.shape[0], _N_FEATURES):
            raise ValueError(
                f"centroid_features must have shape ({params.shape[0]}, 4), got {feats.shape}"
            )
        if mean.shape != (_N_FEATURES,) or std.shape != (_N_FEATURES,):
            raise ValueError(
                f"feature_mean/std must have shape (4,), got {mean.shape}, {std.shape}"
            )
        if not (np.all(np.isfinite(params)) and np.all(np.isfinite(feats))):
            raise ValueError("centroids must be finite")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("feature_mean must be finite and feature_std finite and positive")
        te = np.array(validate_te(te, min_echoes=2))  # a writable copy, as the other arrays
        if not isinstance(self.config, CCMConfig):
            raise ValueError(f"config must be a CCMConfig, got {type(self.config).__name__}")
        for name, value in (
            ("centroid_params", params),
            ("centroid_features", feats),
            ("feature_mean", mean),
            ("feature_std", std),
            ("te_s", te),
        ):
            object.__setattr__(self, name, value)

    @property
    def n_clusters(self) -> int:
        """Number of centroids K."""
        return int(self.centroid_params.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (nested lists of exact float64 values, config as a dict)."""
        return {
            "centroid_params": self.centroid_params.tolist(),
            "centroid_features": self.centroid_features.tolist(),
            "feature_mean": self.feature_mean.tolist(),
            "feature_std": self.feature_std.tolist(),
            "te_s": self.te_s.tolist(),
            "config": asdict(self.config),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CCMLibrary:
        """Inverse of :meth:`to_dict`."""
        return cls(
            centroid_params=np.asarray(data["centroid_params"], dtype=np.float64),
            centroid_features=np.asarray(data["centroid_features"], dtype=np.float64),
            feature_mean=np.asarray(data["feature_mean"], dtype=np.float64),
            feature_std=np.asarray(data["feature_std"], dtype=np.float64),
            te_s=np.asarray(data["te_s"], dtype=np.float64),
            config=CCMConfig(**dict(data["config"])),
        )


def build_library(
    params: npt.ArrayLike,
    te_s: npt.ArrayLike,
    config: CCMConfig | None = None,
    *,
    b0_t: float = B0_T,
) -> CCMLibrary:
    """Build a CCM library from reference parameters, simulated at the target echo times.

    Parameters
    ----------
    params : array_like of shape (n, 5)
        Reference parameter sets in ``PARAMETERS`` order (Y, v, R2 [s^-1], S0, chi_nb [ppm]),
        finite; e.g. the training subjects' ground-truth brain voxels.
    te_s : array_like of shape (n_echoes,)
        Echo times, seconds, of the data the library will be applied to (>= 2; finite, >= 0,
        distinct: :func:`~oefray.physics.echoes.validate_te`).
    config : CCMConfig, optional
        Library settings; ``CCMConfig()`` by default.
    b0_t : float
        Main field strength, tesla.

    Returns
    -------
    CCMLibrary

    Raises
    ------
    ValueError
        If `params` is not a finite (n, 5) array, `te_s` is invalid, or fewer library voxels than
        ``config.clusters`` survive the decay fit.

    Notes
    -----
    Steps: seeded subsample to ``config.library_size`` rows; ``S = qbold_signal(...)`` at `te_s`
    (plus Rician noise if ``config.snr``); ``(A, B, E) = fit_decay(S, te_s)``, dropping voxels
    whose status is not ``FitStatus.OK``; ``chi = qsm_susceptibility(Y, v, chi_nb)``; per-column
    standardisation of ``[Y, v, R2, S0, chi_nb, A, B, E, chi]``; k-means with K =
    ``config.clusters`` (``KMeans(n_init=1)`` up to :data:`MINIBATCH_THRESHOLD` voxels,
    ``MiniBatchKMeans`` beyond), seeded by ``config.seed``. Centroids are mapped back to physical
    units; the matching-feature statistics are those of the library voxels.
    """
    cfg = CCMConfig() if config is None else config
    if not isinstance(cfg, CCMConfig):
        raise ValueError(f"config must be a CCMConfig, got {type(cfg).__name__}")
    ref = _reference_params(params)
    te = validate_te(te_s, min_echoes=2)
    joint = _library_voxels(ref, te, cfg, b0_t)
    if joint.shape[0] < cfg.clusters:
        raise ValueError(
            f"only {joint.shape[0]} library voxels fitted OK, fewer than clusters={cfg.clusters}"
        )
    scaler = Standardizer.fit(joint)
    centroids = scaler.inverse_transform(_kmeans(scaler.transform(joint), cfg.clusters, cfg.seed))
    return CCMLibrary(
        centroid_params=centroids[:, :_N_PARAMS],
        centroid_features=centroids[:, _N_PARAMS:],
        feature_mean=scaler.mean[_N_PARAMS:],
        feature_std=scaler.std[_N_PARAMS:],
        te_s=te,
        config=cfg,
    )


def _reference_params(params: npt.ArrayLike) -> np.ndarray:
    """`params` as a finite (n, 5) float64 array; ValueError otherwise."""
    ref = np.asarray(params, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != _N_PARAMS:
        raise ValueError(f"params must have shape (n, 5) in PARAMETERS order, got {ref.shape}")
    if not np.all(np.isfinite(ref)):
        raise ValueError("params must be finite")
    return ref


def _library_voxels(ref: np.ndarray, te: np.ndarray, cfg: CCMConfig, b0_t: float) -> np.ndarray:
    """The joint rows ``[Y, v, R2, S0, chi_nb, A, B, E, chi]`` of the (subsampled) reference
    voxels whose simulated signal fitted OK, shape (m, 9)."""
    sample_rng, noise_rng = np.random.default_rng(cfg.seed).spawn(2)
    if cfg.library_size is not None and ref.shape[0] > cfg.library_size:
        keep = np.sort(sample_rng.choice(ref.shape[0], size=cfg.library_size, replace=False))
        ref = ref[keep]
    y, v, r2, s0, chi_nb = ref.T
    signal = qbold_signal(s0, r2, y, v, chi_nb, te, b0_t)
    if cfg.snr is not None and signal.shape[0] > 0:
        sigma = noise_sigma(signal[:, 0], cfg.snr)
        add_rician_noise(signal, sigma, noise_rng, block_elements=None)
    fit = fit_decay(signal, te)
    ok = fit.status == FitStatus.OK
    chi = qsm_susceptibility(y, v, chi_nb)
    return np.column_stack([ref, fit.A, fit.B, fit.E, chi])[ok]


def estimate_snr(
    A: npt.ArrayLike, B: npt.ArrayLike, E: npt.ArrayLike, te_s: npt.ArrayLike
) -> float | None:
    """Echo-1 SNR of measured data, from the decay fits of its voxels.

    The CCM library must carry the data's noise, or its ``E`` (the fit residual, mostly noise
    at SNR ~100) would not match the measured one: this is the ``snr`` of :class:`CCMConfig`
    that reproduces it.

    Parameters
    ----------
    A, B, E : array_like of shape (n,)
        Decay-fit amplitude, rate (s^-1) and RMS residual of the voxels (fitted OK), e.g. the
        training subjects' features.
    te_s : array_like of shape (K,)
        Their echo times, seconds (>= 2; :func:`~oefray.physics.echoes.validate_te`).

    Returns
    -------
    float or None
        The SNR; None when the residuals are 0 (noise-free data, or K = 2).

    Notes
    -----
    For a two-parameter least-squares fit of ``K`` echoes with noise sd ``sigma`` per echo,
    :math:`E[\\mathrm{SSR}] = (K - 2)\\sigma^2`, and :math:`E = \\sqrt{\\mathrm{SSR}/K}`, so

    .. math::

        \\hat\\sigma = \\operatorname{median}(E) \\sqrt{K / (K - 2)}, \\qquad
        \\widehat{\\mathrm{SNR}} = \\operatorname{median}\\left(A e^{-B\\, TE_{min}}\\right)
            / \\hat\\sigma,

    the median fitted first-echo signal over the noise sd, as
    :func:`~oefray.physics.measurement.simulate_measurement` defines the SNR. Medians make it
    robust to badly fitted voxels; the median of a chi distribution lies below its RMS (by
    about 6 % for ``K = 8``), so the estimate is that much high for pure noise residuals, and
    lower where model misfit adds to ``E``.
    """
    te = validate_te(te_s, min_echoes=2)
    a, b, e = (np.asarray(x) for x in (A, B, E))
    sigma = float(np.median(e)) * np.sqrt(len(te) / max(len(te) - 2, 1))
    return float(np.median(a * np.exp(-b * te.min())) / sigma) if sigma > 0 else None


def predict(library: CCMLibrary, features: npt.ArrayLike) -> np.ndarray:
    """QQ parameters by inverse-distance interpolation of the nearest library centroids.

    Parameters
    ----------
    library : CCMLibrary
        Built at the echo times of the data (see the module docstring).
    features : array_like of shape (n, 4)
        Per voxel ``[A, B, E, S]``: decay amplitude, rate (s^-1), RMS residual (the
        :func:`~oefray.physics.decay.fit_decay` of its magnitudes at ``library.te_s``) and the
        measured QSM susceptibility (ppm).

    Returns
    -------
    ndarray of shape (n, 5), float64
        Parameters in ``PARAMETERS`` order (Y, v, R2 [s^-1], S0, chi_nb [ppm]); rows with any
        non-finite feature are all NaN.

    Raises
    ------
    ValueError
        If `features` is not of shape (n, 4).

    Notes
    -----
    With ``z = (features - feature_mean) / feature_std`` and the same map applied to the
    centroids, the ``k = min(neighbours, K)`` nearest centroids at Euclidean distances ``d_j``
    give ``sum_j w_j p_j / sum_j w_j`` with ``w_j = d_j**-power``. A voxel at distance 0 from a
    centroid (an exact hit) gets that centroid's parameters.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != _N_FEATURES:
        raise ValueError(f"features must have shape (n, 4) as [A, B, E, S], got {x.shape}")
    out = np.full((x.shape[0], _N_PARAMS), np.nan)
    finite = np.all(np.isfinite(x), axis=1)
    if not np.any(finite):
        return out
    mean, std = library.feature_mean, library.feature_std
    tree = cKDTree((library.centroid_features - mean) / std)
    k = min(library.config.neighbours, library.n_clusters)
    dist, idx = tree.query((x[finite] - mean) / std, k=k)
    dist = dist.reshape(-1, k)
    idx = idx.reshape(-1, k)
    power = library.config.power
    hit = dist[:, 0] == 0.0  # query returns distances sorted ascending
    with np.errstate(divide="ignore"):
        weights = dist ** (-power) if power > 0 else np.ones_like(dist)
    weights[hit] = 0.0
    weights[hit, 0] = 1.0
    weights /= weights.sum(axis=1, keepdims=True)
    out[finite] = np.einsum("nk,nkp->np", weights, library.centroid_params[idx])
    return out


def _kmeans(z: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """K-means centroids of the rows of `z` (n, F) in the same space, shape (clusters, F)."""
    if z.shape[0] > MINIBATCH_THRESHOLD:
        model: KMeans | MiniBatchKMeans = MiniBatchKMeans(
            n_clusters=clusters, n_init=1, random_state=seed, batch_size=4096
        )
    else:
        model = KMeans(n_clusters=clusters, n_init=1, random_state=seed)
    model.fit(z)
    return np.asarray(model.cluster_centers_, dtype=np.float64)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
