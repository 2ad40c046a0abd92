"""Ground-truth QQ parameter maps of a phantom subject (DESIGN.md section 3).

:func:`simulate_parameter_maps` draws the five QQ parameter maps on a tissue label volume
(:mod:`oefray.physics.anatomy`): per-subject tissue means plus spatially smooth Gaussian random
fields plus a little white noise, from the tissue distributions :data:`TISSUE_DISTRIBUTIONS`,
clipped to :data:`PARAMETER_BOUNDS` in the brain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

from oefray.physics.anatomy import BRAIN_TISSUES, Tissue
from oefray.physics.constants import PARAMETERS, YA
from oefray.physics.grid import (
    GridField,
    RngLike,
    as_voxel_mm,
    draw_field,
    sample_field,
    voxel_axes,
)

__all__ = ["PARAMETER_BOUNDS", "TISSUE_DISTRIBUTIONS", "simulate_parameter_maps"]

#: Bounds of the QQ parameters inside the brain (DESIGN.md section 3): Y, v fractions, R2 s^-1,
#: S0 echo-1-normalised, chi_nb ppm. Brain-tissue voxel values are clipped to these.
PARAMETER_BOUNDS: Final[Mapping[str, tuple[float, float]]] = {
    "Y": (0.05, 0.98),
    "v": (0.001, 0.08),
    "R2": (2.0, 60.0),
    "S0": (0.8, 2.5),
    "chi_nb": (-0.2, 0.3),
}

#: Bounds for the non-brain tissues (only there so the echo images look like a head): those of
#: the brain for chi_nb, down to 0 for blood-free or signal-free tissue.
_NONBRAIN_BOUNDS: Final[Mapping[str, tuple[float, float]]] = {
    **PARAMETER_BOUNDS,
    "Y": (0.05, YA),
    "v": (0.0, 0.08),
    "R2": (0.0, 60.0),
    "S0": (0.0, 2.5),
}

#: ``(mean, sd)`` of each parameter per tissue, one row per tissue in ``PARAMETERS`` order.
# fmt: off
_DISTRIBUTION_TABLE: Final[Mapping[Tissue, tuple[tuple[float, float], ...]]] = {
    #                     Y             v               R2           S0            chi_nb
    Tissue.BACKGROUND:    ((YA, 0.0),   (0.0, 0.0),     (0.0, 0.0),  (0.0, 0.0),   (0.0, 0.0)),
    Tissue.EXTRACEREBRAL: ((YA, 0.0),   (0.0, 0.0),     (35.0, 3.0), (0.90, 0.04), (0.0, 0.02)),
    Tissue.CSF:           ((YA, 0.0),   (0.0, 0.0),     (1.5, 0.2),  (1.30, 0.02), (0.0, 0.0)),
    Tissue.CORTICAL_GM:   ((0.62, 0.05), (0.030, 0.007), (14.0, 3.0), (1.10, 0.04), (-0.010, 0.02)),
    Tissue.WM:            ((0.60, 0.05), (0.018, 0.005), (19.0, 3.0), (1.10, 0.04), (-0.04, 0.015)),
    Tissue.DEEP_GM:       ((0.62, 0.05), (0.025, 0.006), (25.0, 5.0), (1.10, 0.04), (0.06, 0.04)),
    Tissue.INFARCT_CORE:  ((0.85, 0.05), (0.010, 0.004), (12.0, 3.0), (1.20, 0.05), (-0.020, 0.02)),
    Tissue.PENUMBRA:      ((0.45, 0.05), (0.030, 0.007), (16.0, 3.0), (1.10, 0.04), (-0.025, 0.02)),
}
# fmt: on

#: Voxel distributions ``(mean, sd)`` of each parameter per tissue. Cortical GM, WM and deep GM
#: follow DESIGN.md section 3. Lesion choices (documented here, not in the design):
#: infarct core = dead tissue that extracts no oxygen (high Y 0.85 +- 0.05), collapsed venous
#: volume (v 0.010 +- 0.004), vasogenic oedema (longer T2*: R2 12 +- 3 s^-1; higher proton
#: density: S0 1.20 +- 0.05), chi_nb between GM and WM; penumbra = hypoperfused tissue at
#: maximal extraction (low Y 0.45 +- 0.05) with a GM-like venous volume, and R2 / chi_nb between
#: GM and WM (it spans both). Non-brain tissues: CSF has no blood and a long T2* (v 0, R2 1.5 s^-1,
#: S0 1.3, chi_nb 0), extracerebral tissue a short T2* (v 0, R2 35 s^-1, S0 0.9), background no
#: signal at all (S0 0). Y of blood-free tissue is set to the arterial value YA (it has no effect).
TISSUE_DISTRIBUTIONS: Final[Mapping[Tissue, Mapping[str, tuple[float, float]]]] = {
    tissue: dict(zip(PARAMETERS, row, strict=True)) for tissue, row in _DISTRIBUTION_TABLE.items()
}

#: Parameter fields: correlation length 7 mm (correlation exp(-r^2 / (2 * 7^2))), i.e. a Gaussian
#: filter of sd 7/sqrt(2) mm on a 2 mm grid; smooth/white weights 0.9 and sqrt(1 - 0.81).
_PARAM_CORRELATION_MM: Final = 7.0
_PARAM_SPACING_MM: Final = 2.0
_SMOOTH_WEIGHT: Final = 0.9
_WHITE_WEIGHT: Final = math.sqrt(1.0 - _SMOOTH_WEIGHT**2)
#: Per-subject Y offset sd (DESIGN.md section 3). The other parameters get a subject-level shift
#: ``z_p * 0.1 * sd_t`` of every brain tissue t, with one z_p ~ N(0, 1) per parameter.
_Y_OFFSET_SD: Final = 0.03
_SUBJECT_OFFSET_FRACTION: Final = 0.1
#: A tissue's smooth-field sd is only standardised up from at least this value (small regions
#: of a smooth field are nearly constant; scaling them up would invent texture).
_MIN_REGION_FIELD_SD: Final = 0.5

#: Per-tissue mean, sd, lower and upper bound of one parameter, each indexed by tissue code.
_Tables = tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
]


def _lookup_tables(param: str, y_offset: float, z_offset: float) -> _Tables:
    """Per-tissue mean, sd, lower and upper bound of one parameter, indexed by tissue code."""
    n = len(Tissue)
    mean, sd, lo, hi = (np.zeros(n) for _ in range(4))
    for t in Tissue:
        m, s = TISSUE_DISTRIBUTIONS[t][param]
        brain = t in BRAIN_TISSUES
        if brain and param == "Y":
            # Dead tissue extracts no oxygen: the subject's Y offset does not apply to the core.
            m += y_offset if t != Tissue.INFARCT_CORE else 0.0
        elif brain:
            m += z_offset * _SUBJECT_OFFSET_FRACTION * s
        mean[t], sd[t] = m, s
        lo[t], hi[t] = (PARAMETER_BOUNDS if brain else _NONBRAIN_BOUNDS)[param]
    return mean, sd, lo, hi


def _standardise_per_tissue(
    field: npt.NDArray[np.float32], index: npt.NDArray[np.intp]
) -> npt.NDArray[np.float64]:
    """Zero mean and unit sd of `field` within each non-background tissue of `index`."""
    flat = field.ravel().astype(np.float64)
    idx = index.ravel()
    n = np.bincount(idx, minlength=len(Tissue)).astype(np.float64)
    s1 = np.bincount(idx, weights=flat, minlength=len(Tissue))
    s2 = np.bincount(idx, weights=flat * flat, minlength=len(Tissue))
    count = np.maximum(n, 1.0)
    mean = s1 / count
    sd = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    scale = np.maximum(sd, _MIN_REGION_FIELD_SD)
    mean[Tissue.BACKGROUND], scale[Tissue.BACKGROUND] = 0.0, 1.0
    flat -= mean[idx]
    flat /= scale[idx]
    return flat.reshape(field.shape)


def _as_labels(labels: npt.ArrayLike) -> npt.NDArray[np.integer]:
    """`labels` as a 3-D integer array of :class:`Tissue` codes; ValueError otherwise."""
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 3-D integer array, got {lab.dtype} {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= len(Tissue)):
        raise ValueError("labels must hold Tissue codes 0..7")
    return lab


def _draw_map(
    field: GridField,
    ax: Sequence[npt.NDArray[np.float64]],
    index: npt.NDArray[np.intp],
    tables: _Tables,
    gen: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """One parameter map: the tissue means plus sd times (smooth field + white noise), clipped."""
    mean, sd, lo, hi = tables
    z = _standardise_per_tissue(sample_field(field, ax), index)
    z *= _SMOOTH_WEIGHT
    z += _WHITE_WEIGHT * gen.standard_normal(index.shape)
    z *= sd[index]
    z += mean[index]
    np.clip(z, lo[index], hi[index], out=z)
    return z.astype(np.float32)


def simulate_parameter_maps(
    labels: npt.ArrayLike,
    voxel_mm: float | Sequence[float],
    rng: RngLike,
    *,
    y_offset: float | None = None,
) -> dict[str, npt.NDArray[np.float32]]:
    """Draw the five QQ parameter maps of one subject on a tissue label volume.

    Parameters
    ----------
    labels : array_like of shape (X, Y, Z), int
        :class:`~oefray.physics.anatomy.Tissue` codes, e.g. from
        :func:`~oefray.physics.anatomy.make_tissue_labels`.
    voxel_mm : float or sequence of 3 float
        Voxel size, mm (isotropic if scalar); sets the physical scale of the smooth fields.
    rng : numpy.random.Generator or int
        Random generator or seed; the result is deterministic for a seed.
    y_offset : float, optional
        Subject-level offset added to the mean Y of every brain tissue except the infarct core.
        Drawn from N(0, 0.03) when None (it is drawn either way, so passing a value changes
        nothing else about the subject).

    Returns
    -------
    maps : dict of str to ndarray of shape (X, Y, Z), float32
        Keys exactly ``PARAMETERS``: Y and v (fractions), R2 (s^-1), S0 (echo-1-normalised),
        chi_nb (ppm).

    Raises
    ------
    ValueError
        If `labels` is not a 3-D integer array of Tissue codes, or `voxel_mm` is invalid.

    Notes
    -----
    Each parameter ``p`` of a voxel of tissue ``t`` is

    .. math::

        p = \\mu_t + o_t + \\sigma_t \\left(0.9\\, F_t(\\mathbf{x}) + \\sqrt{0.19}\\, W\\right),

    clipped to the bounds (``PARAMETER_BOUNDS`` in the brain), with ``(mu_t, sigma_t)`` from
    ``TISSUE_DISTRIBUTIONS`` and ``W`` white N(0, 1) noise. ``F`` is one Gaussian random field
    per parameter, shared by all tissues, with correlation ``exp(-r^2 / (2 l^2))``, ``l = 7``
    mm; ``F_t`` is ``F`` standardised to zero mean and unit sd over the voxels of tissue ``t``
    (the sd only scaled up from at least 0.5), so that the subject's tissue mean is exactly
    ``mu_t + o_t`` rather than drifting with the field's regional mean over a small structure.
    Hence a tissue's voxels follow approximately N(mu_t + o_t, sigma_t), and neighbouring voxels
    correlate (about 0.8 at 1-2 mm). The subject offset ``o_t`` is `y_offset` for Y (not in
    the infarct core) and ``0.1 sigma_t z_p``, ``z_p ~ N(0, 1)`` per parameter, for the others;
    non-brain tissues get no offset.
    """
    lab = _as_labels(labels)
    voxel = as_voxel_mm(voxel_mm)
    gen = np.random.default_rng(rng)
    drawn_y_offset = float(gen.normal(0.0, _Y_OFFSET_SD))
    y_off = drawn_y_offset if y_offset is None else float(y_offset)
    z_offsets = {p: float(gen.standard_normal()) for p in PARAMETERS if p != "Y"}
    # All smooth fields first (a fixed number of draws), then the white noise (grid-dependent),
    # so a seed gives the same smooth maps at any resolution.
    fields = {
        p: draw_field(gen, _PARAM_CORRELATION_MM / math.sqrt(2.0), _PARAM_SPACING_MM)
        for p in PARAMETERS
    }
    ax = voxel_axes(lab.shape, voxel)
    index = lab.astype(np.intp)
    maps: dict[str, npt.NDArray[np.float32]] = {}
    for p in PARAMETERS:  # in order: each map draws its white noise from `gen`
        tables = _lookup_tables(p, y_off, z_offsets.get(p, 0.0))
        maps[p] = _draw_map(fields[p], ax, index, tables, gen)
    return maps
