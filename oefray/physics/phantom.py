"""Procedural brain phantom: one simulated subject (DESIGN.md sections 2 and 3).

A subject is built in three steps, each a pure function of its inputs and an ``rng``, in three
modules:

1. anatomy (:mod:`oefray.physics.anatomy`): :func:`make_tissue_labels` draws a brain-like 3-D
   label volume of :class:`Tissue` codes in physical millimetre coordinates, so the same seed
   gives the same anatomy at any resolution;
2. parameter maps (:mod:`oefray.physics.parameter_maps`): :func:`simulate_parameter_maps` draws
   the five QQ parameter maps (per-subject tissue means plus spatially smooth Gaussian random
   fields plus a little white noise);
3. measurement (:mod:`oefray.physics.measurement`): the QQ forward model with Rician magnitude
   noise and Gaussian QSM noise.

:func:`simulate_subject` runs the three and returns a :class:`SubjectSimulation`. Randomness
comes only from the ``rng`` argument (a :class:`numpy.random.Generator` or an int seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# The anatomy and parameter-map names are re-exported: callers have imported them from here.
from oefray.physics.anatomy import BRAIN_TISSUES, Tissue, make_tissue_labels
from oefray.physics.constants import B0_T
from oefray.physics.echoes import validate_te
from oefray.physics.grid import RngLike, as_shape, as_voxel_mm
from oefray.physics.measurement import simulate_measurement, validate_noise_levels
from oefray.physics.parameter_maps import (
    PARAMETER_BOUNDS,
    TISSUE_DISTRIBUTIONS,
    simulate_parameter_maps,
)

__all__ = [
    "BRAIN_TISSUES",
    "PARAMETER_BOUNDS",
    "SubjectSimulation",
    "TISSUE_DISTRIBUTIONS",
    "Tissue",
    "make_tissue_labels",
    "simulate_parameter_maps",
    "simulate_subject",
]


@dataclass(frozen=True, eq=False)
class SubjectSimulation:
    """One simulated subject: anatomy, ground truth, and the measured images.

    Attributes
    ----------
    labels : ndarray of shape (X, Y, Z), int8
        :class:`Tissue` codes.
    mask : ndarray of shape (X, Y, Z), bool
        Brain mask, ``labels`` in :data:`BRAIN_TISSUES`.
    truth : dict of str to ndarray of shape (X, Y, Z), float32
        Ground-truth QQ parameter maps keyed by ``PARAMETERS`` (Y, v fractions; R2 s^-1; S0
        echo-1-normalised; chi_nb ppm); meaningful only inside `mask`.
    magnitude : ndarray of shape (X, Y, Z, E), float32
        Multi-echo magnitude images (echo axis last) with Rician noise.
    chi : ndarray of shape (X, Y, Z), float32
        QSM susceptibility map, ppm, with Gaussian noise inside the head, 0 in the background.
    te_s : tuple of float
        The E echo times, seconds.
    voxel_mm : tuple of 3 float
        Voxel size, mm.
    noise_sigma : float
        Standard deviation of each of the real and imaginary noise components (0 for noise-free).
    """

    labels: npt.NDArray[np.int8]
    mask: npt.NDArray[np.bool_]
    truth: dict[str, npt.NDArray[np.float32]]
    magnitude: npt.NDArray[np.float32]
    chi: npt.NDArray[np.float32]
    te_s: tuple[float, ...] = ()
    voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_sigma: float = float("nan")


def simulate_subject(
    shape: Sequence[int],
    voxel_mm: float | Sequence[float],
    te_s: npt.ArrayLike,
    rng: RngLike,
    *,
    snr: float = 100.0,
    qsm_noise_ppm: float = 0.002,
    b0_t: float = B0_T,
    lesion: bool = False,
    y_offset: float | None = None,
) -> SubjectSimulation:
    """Simulate one subject: anatomy, QQ ground truth, multi-echo magnitude and QSM.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid size (X, Y, Z), see :func:`make_tissue_labels`.
    voxel_mm : float or sequence of 3 float
        Voxel size, mm.
    te_s : array_like of shape (E,)
        Echo times, seconds (any order and spacing; finite, >= 0, distinct).
    rng : numpy.random.Generator or int
        Random generator or seed; the result is deterministic for a seed.
    snr : float
        Echo-1 signal-to-noise ratio in the brain (``numpy.inf``: noise-free magnitudes).
    qsm_noise_ppm : float
        Standard deviation of the Gaussian noise added to chi inside the head, ppm (0: none).
    b0_t : float
        Main field strength, tesla.
    lesion : bool
        Add an infarct core and penumbra (see :func:`make_tissue_labels`).
    y_offset : float, optional
        Subject-level Y offset (see :func:`simulate_parameter_maps`); drawn when None.

    Returns
    -------
    SubjectSimulation

    Raises
    ------
    ValueError
        If an argument is invalid (shape, voxel size, echo times, snr <= 0, negative
        `qsm_noise_ppm`), before anything is drawn.

    Notes
    -----
    The images are :func:`~oefray.physics.measurement.simulate_measurement` of the truth: noise
    drawn as ``"streams"`` from `rng` after the maps, with the head (every non-background voxel)
    as the support and the brain as the mask. So the background is Rayleigh noise, chi is 0
    there, a noise-free magnitude does not change the chi noise, and peak memory is about the
    output plus one z-slab of temporaries (< 1 GB at 176 x 208 x 160 x 8).
    """
    te = validate_te(te_s)
    validate_noise_levels(snr, qsm_noise_ppm)
    shape3, voxel = as_shape(shape), as_voxel_mm(voxel_mm)
    gen = np.random.default_rng(rng)
    labels = make_tissue_labels(shape3, voxel, gen, lesion=lesion)
    truth = simulate_parameter_maps(labels, voxel, gen, y_offset=y_offset)
    mask, head = labels >= Tissue.CORTICAL_GM, labels != Tissue.BACKGROUND
    measured = simulate_measurement(
        truth, mask, te, gen, snr=snr, qsm_noise_ppm=qsm_noise_ppm, support=head, b0_t=b0_t
    )  # with the default noise_draws="streams"
    return SubjectSimulation(
        labels=labels,
        mask=mask,
        truth=truth,
        magnitude=measured.magnitude,
        chi=measured.chi,
        te_s=tuple(float(t) for t in te),
        voxel_mm=voxel,
        noise_sigma=measured.noise_sigma,
    )
