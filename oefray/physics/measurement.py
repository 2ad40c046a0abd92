"""Measured images from QQ parameter maps: qBOLD magnitude with Rician noise, QSM with Gaussian
noise (DESIGN.md sections 2 and 3).

:func:`simulate_measurement` is the one place images are made from parameter maps: by the phantom
(:func:`oefray.physics.phantom.simulate_subject`) and by the te-shift study, which re-simulates
existing subjects from their ground truth at other echo times. :func:`add_rician_noise` is its
magnitude-noise step, also used for the CCM library's signals (:mod:`oefray.ml.ccm`).

Noise draws. The two conventions of :func:`simulate_measurement` give the same distribution; they
differ in which random numbers are consumed, and each keeps the datasets of its caller
reproducible bit for bit:

- ``"streams"`` (:func:`~oefray.physics.phantom.simulate_subject`): two child streams are spawned
  from the generator, one for the magnitude and one for chi, so a noise-free magnitude leaves the
  chi noise unchanged; the magnitude noise is float32, drawn in z-slabs (memory: the output plus
  one slab), the chi noise only for the support's voxels, and nothing is drawn for a zero noise
  level.
- ``"grid"`` (the te-shift study, one generator across subjects): the generator itself draws a
  full float64 grid of the real, then the imaginary magnitude noise (``E`` values per voxel),
  then of the chi noise, whatever the noise levels, so it advances by the same amount for every
  subject of a grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from oefray.physics.constants import B0_T, PARAMETERS
from oefray.physics.echoes import validate_te
from oefray.physics.qq import qbold_signal, qsm_susceptibility

__all__ = [
    "Measurement",
    "NoiseDraws",
    "add_rician_noise",
    "noise_sigma",
    "simulate_measurement",
    "validate_noise_levels",
]

#: How :func:`simulate_measurement` consumes its random generator (see there).
NoiseDraws: TypeAlias = Literal["streams", "grid"]

#: Elements of noise drawn at once by :func:`add_rician_noise` (float32: 16 MB per temporary).
BLOCK_ELEMENTS: int = 1 << 22


@dataclass(frozen=True, eq=False)
class Measurement:
    """The images of one simulated acquisition.

    Attributes
    ----------
    magnitude : ndarray of shape (X, Y, Z, E), float32
        Multi-echo magnitude images, echo axis last, with Rician noise.
    chi : ndarray of shape (X, Y, Z), float32
        QSM susceptibility map, ppm, with Gaussian noise inside the support, 0 outside it.
    noise_sigma : float
        Standard deviation of each of the real and imaginary noise components, in the signal's
        units (0 for noise-free magnitudes).
    """

    magnitude: npt.NDArray[np.float32]
    chi: npt.NDArray[np.float32]
    noise_sigma: float


def validate_noise_levels(snr: float, qsm_noise_ppm: float) -> None:
    """ValueError unless ``snr > 0`` (``inf``: no noise) and ``qsm_noise_ppm`` is finite, >= 0."""
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr!r}")
    if not (np.isfinite(qsm_noise_ppm) and qsm_noise_ppm >= 0):
        raise ValueError(f"qsm_noise_ppm must be finite and >= 0, got {qsm_noise_ppm!r}")


def noise_sigma(first_echo: npt.ArrayLike, snr: float) -> float:
    """Noise sd per complex component for an echo-1 SNR: ``median(first_echo) / snr``.

    Parameters
    ----------
    first_echo : array_like of shape (n,)
        Noise-free first-echo magnitudes of the reference voxels (the brain).
    snr : float
        Requested echo-1 signal-to-noise ratio, > 0; ``inf`` gives 0.

    Returns
    -------
    float
        0 as well when there are no reference voxels.
    """
    values = np.asarray(first_echo)
    reference = float(np.median(values)) if values.size else 0.0
    return reference / snr if np.isfinite(snr) else 0.0


def add_rician_noise(
    signal: npt.NDArray[np.floating],
    sigma: float,
    rng: np.random.Generator,
    *,
    dtype: type[np.float32] | type[np.float64] | None = None,
    block_elements: int | None = BLOCK_ELEMENTS,
) -> None:
    """Replace a noise-free magnitude by a Rician one, in place: ``|S + sigma (n1 + i n2)|``.

    Parameters
    ----------
    signal : ndarray of shape (..., N, E), float
        Noise-free magnitudes, echoes on the last axis; overwritten.
    sigma : float
        Standard deviation of each of the real and imaginary noise components, >= 0.
    rng : numpy.random.Generator
        Draws the standard normals.
    dtype : {numpy.float32, numpy.float64}, optional
        Precision of the draws and of the arithmetic (the result is stored in `signal`'s dtype);
        by default float32 for a float32 `signal`, else float64.
    block_elements : int or None
        Draw the noise in blocks of whole ``N``-slices (axis -2) of about this many elements, to
        bound the temporaries; None draws it all at once.

    Notes
    -----
    Per block: ``n1`` for the whole block, then ``n2`` (C order), standard normal in `dtype`;
    the same draws for the same block layout, so a result is reproducible from the seed.
    """
    work = dtype or (np.float32 if signal.dtype == np.float32 else np.float64)
    scale = work(sigma)
    n_slices = signal.shape[-2]
    per_slice = math.prod(signal.shape[:-2]) * signal.shape[-1]
    step = n_slices if block_elements is None else max(1, block_elements // max(1, per_slice))
    for s0 in range(0, n_slices, step):
        block = signal[..., s0 : s0 + step, :]
        real = rng.standard_normal(block.shape, dtype=work)
        real *= scale
        real += block
        imag = rng.standard_normal(block.shape, dtype=work)
        imag *= scale
        np.hypot(real, imag, out=block)


def simulate_measurement(
    maps: Mapping[str, npt.ArrayLike],
    mask: npt.ArrayLike,
    te_s: npt.ArrayLike,
    rng: np.random.Generator,
    *,
    snr: float = 100.0,
    qsm_noise_ppm: float = 0.002,
    support: npt.ArrayLike | None = None,
    b0_t: float = B0_T,
    noise_draws: NoiseDraws = "streams",
) -> Measurement:
    """Multi-echo magnitude and QSM images of QQ parameter maps, with noise.

    Parameters
    ----------
    maps : mapping of str to array_like of shape (X, Y, Z)
        The QQ parameter maps, keys ``PARAMETERS`` (others are ignored), in their units.
    mask : array_like of shape (X, Y, Z), bool
        The brain: its median noise-free first-echo magnitude sets the noise level.
    te_s : array_like of shape (E,)
        Echo times, seconds (:func:`~oefray.physics.echoes.validate_te`: at least one, >= 0).
    rng : numpy.random.Generator
        Source of all noise; see `noise_draws`.
    snr : float
        Echo-1 signal-to-noise ratio (see Notes), > 0; ``numpy.inf`` gives noise-free
        magnitudes (so does an empty `mask`).
    qsm_noise_ppm : float
        Standard deviation of the Gaussian noise added to chi, ppm, >= 0.
    support : array_like of shape (X, Y, Z), bool, optional
        The voxels that hold tissue (signal and susceptibility); `mask` by default.
    b0_t : float
        Main field strength, tesla.
    noise_draws : {"streams", "grid"}
        How the noise is drawn from `rng` (the module docstring has both conventions).

    Returns
    -------
    Measurement
        ``magnitude`` (X, Y, Z, E) float32, ``chi`` (X, Y, Z) float32 ppm, ``noise_sigma``.

    Raises
    ------
    ValueError
        If `te_s`, a noise level or `noise_draws` is invalid, a map is missing, or the maps,
        `mask` and `support` differ in shape.

    Notes
    -----
    ``magnitude = |S + sigma (n1 + i n2)|`` with ``S = qbold_signal(maps, te_s)`` in `support`
    (0 elsewhere), ``n1, n2 ~ N(0, 1)`` in every voxel (Rician; Rayleigh outside the support,
    mean ``sigma sqrt(pi / 2)``) and ``sigma = median(S_1 in mask) / snr`` (:func:`noise_sigma`).
    ``chi = qsm_susceptibility(maps) + N(0, qsm_noise_ppm)`` in `support`, 0 outside.
    """
    te = validate_te(te_s)
    validate_noise_levels(snr, qsm_noise_ppm)
    if noise_draws not in ("streams", "grid"):
        raise ValueError(f"noise_draws must be 'streams' or 'grid', got {noise_draws!r}")
    brain, inside = _as_masks(maps, mask, support)
    tissue = {p: np.asarray(maps[p])[inside] for p in PARAMETERS}
    magnitude = np.zeros((*brain.shape, te.size), dtype=np.float32)
    magnitude[inside] = qbold_signal(
        tissue["S0"], tissue["R2"], tissue["Y"], tissue["v"], tissue["chi_nb"], te, b0_t
    )
    sigma = noise_sigma(magnitude[..., 0][brain], snr)
    chi_tissue = qsm_susceptibility(tissue["Y"], tissue["v"], tissue["chi_nb"])
    chi = np.zeros(inside.shape, dtype=np.float32)
    if noise_draws == "streams":
        mag_rng, chi_rng = rng.spawn(2)
        if sigma > 0:
            add_rician_noise(magnitude, sigma, mag_rng)
        if qsm_noise_ppm > 0:
            noise = chi_rng.normal(0.0, qsm_noise_ppm, chi_tissue.shape).astype(np.float32)
            chi_tissue = chi_tissue + noise
    else:
        add_rician_noise(magnitude, sigma, rng, dtype=np.float64, block_elements=None)
        grid = rng.normal(0.0, qsm_noise_ppm, inside.shape)  # float64, every voxel
        chi_tissue = chi_tissue + grid[inside]  # summed in float64, then stored as float32
    chi[inside] = chi_tissue
    return Measurement(magnitude=magnitude, chi=chi, noise_sigma=float(sigma))


def _as_masks(
    maps: Mapping[str, npt.ArrayLike], mask: npt.ArrayLike, support: npt.ArrayLike | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """`mask` and `support` (default: `mask`) as bool arrays of the maps' one 3-D shape."""
    brain = np.asarray(mask, dtype=bool)
    inside = brain if support is None else np.asarray(support, dtype=bool)
    missing = [p for p in PARAMETERS if p not in maps]
    if missing:
        raise ValueError(f"maps lack the parameter map(s) {missing}")
    shapes = {np.shape(maps[p]) for p in PARAMETERS} | {brain.shape, inside.shape}
    if len(shapes) != 1 or brain.ndim != 3:
        raise ValueError(f"maps, mask and support must share one 3-D shape, got {sorted(shapes)}")
    return brain, inside
