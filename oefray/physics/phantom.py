"""Procedural brain phantom and per-subject qBOLD/QSM simulation (DESIGN.md sections 2 and 3).

A subject is built in three steps, each a pure function of its inputs and an ``rng``:

1. :func:`make_tissue_labels` draws a brain-like 3-D label volume (:class:`Tissue` codes) in
   physical millimetre coordinates, so the same seed gives the same anatomy at any resolution;
2. :func:`simulate_parameter_maps` draws the five QQ parameter maps (per-subject tissue means
   plus spatially smooth Gaussian random fields plus a little white noise, DESIGN.md section 3);
3. :func:`simulate_subject` runs both, then the QQ forward model (:mod:`oefray.physics.qq`) with
   Rician magnitude noise and Gaussian QSM noise, and returns a :class:`SubjectSimulation`.

Coordinates are RAS-like and centred on the field of view: axis 0 is x (left to right), axis 1
is y (posterior to anterior), axis 2 is z (inferior to superior, slices along z). Voxel ``i``
along an axis of ``n`` voxels of size ``h`` mm has its centre at ``(i + 0.5) h - n h / 2`` mm.

Randomness comes only from the ``rng`` argument (a :class:`numpy.random.Generator` or an int
seed). All label randomness is drawn on grids of a fixed physical size, so the anatomy of a seed
does not depend on the voxel grid it is sampled on.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from oefray.physics.constants import B0_T, PARAMETERS, YA
from oefray.physics.qq import qbold_signal, qsm_susceptibility

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

RngLike: TypeAlias = np.random.Generator | int


class Tissue(enum.IntEnum):
    """Tissue label codes of the phantom (stored as int8)."""

    BACKGROUND = 0
    #: Scalp, skull and other soft tissue between the CSF and the head outline.
    EXTRACEREBRAL = 1
    #: Cerebrospinal fluid: subarachnoid layer, sulci, interhemispheric fissure, ventricles.
    CSF = 2
    CORTICAL_GM = 3
    WM = 4
    #: Deep grey nuclei: caudate, putamen, globus pallidus, thalamus (bilateral).
    DEEP_GM = 5
    INFARCT_CORE = 6
    PENUMBRA = 7


#: Tissue codes that form the brain mask (ground truth is meaningful only there).
BRAIN_TISSUES: Final[tuple[Tissue, ...]] = tuple(t for t in Tissue if t >= Tissue.CORTICAL_GM)

#: Bounds of the QQ parameters inside the brain (DESIGN.md section 3): Y, v fractions, R2 s^-1,
#: S0 echo-1-normalised, chi_nb ppm. Brain-tissue voxel values are clipped to these.
PARAMETER_BOUNDS: Final[Mapping[str, tuple[float, float]]] = {
    "Y": (0.05, 0.98),
    "v": (0.001, 0.08),
    "R2": (2.0, 60.0),
    "S0": (0.8, 2.5),
    "chi_nb": (-0.2, 0.3),
}

#: Bounds for the non-brain tissues (only there so the echo images look like a head).
_NONBRAIN_BOUNDS: Final[Mapping[str, tuple[float, float]]] = {
    "Y": (0.05, YA),
    "v": (0.0, 0.08),
    "R2": (0.0, 60.0),
    "S0": (0.0, 2.5),
    "chi_nb": (-0.2, 0.3),
}

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
    Tissue.BACKGROUND: {
        "Y": (YA, 0.0),
        "v": (0.0, 0.0),
        "R2": (0.0, 0.0),
        "S0": (0.0, 0.0),
        "chi_nb": (0.0, 0.0),
    },
    Tissue.EXTRACEREBRAL: {
        "Y": (YA, 0.0),
        "v": (0.0, 0.0),
        "R2": (35.0, 3.0),
        "S0": (0.90, 0.04),
        "chi_nb": (0.0, 0.02),
    },
    Tissue.CSF: {
        "Y": (YA, 0.0),
        "v": (0.0, 0.0),
        "R2": (1.5, 0.2),
        "S0": (1.30, 0.02),
        "chi_nb": (0.0, 0.0),
    },
    Tissue.CORTICAL_GM: {
        "Y": (0.62, 0.05),
        "v": (0.030, 0.007),
        "R2": (14.0, 3.0),
        "S0": (1.10, 0.04),
        "chi_nb": (-0.010, 0.02),
    },
    Tissue.WM: {
        "Y": (0.60, 0.05),
        "v": (0.018, 0.005),
        "R2": (19.0, 3.0),
        "S0": (1.10, 0.04),
        "chi_nb": (-0.040, 0.015),
    },
    Tissue.DEEP_GM: {
        "Y": (0.62, 0.05),
        "v": (0.025, 0.006),
        "R2": (25.0, 5.0),
        "S0": (1.10, 0.04),
        "chi_nb": (0.06, 0.04),
    },
    Tissue.INFARCT_CORE: {
        "Y": (0.85, 0.05),
        "v": (0.010, 0.004),
        "R2": (12.0, 3.0),
        "S0": (1.20, 0.05),
        "chi_nb": (-0.020, 0.02),
    },
    Tissue.PENUMBRA: {
        "Y": (0.45, 0.05),
        "v": (0.030, 0.007),
        "R2": (16.0, 3.0),
        "S0": (1.10, 0.04),
        "chi_nb": (-0.025, 0.02),
    },
}

# --- anatomy constants (mm unless stated) -----------------------------------------------------

#: Nominal brain semi-axes (x, y, z) and per-subject relative jitter (sd, clipped at 2.5 sd).
_BRAIN_SEMI_AXES_MM: Final = np.array([67.0, 82.0, 58.0])
_BRAIN_SCALE_SD: Final = 0.03
#: Random fields are drawn on grids covering this half-extent around the field-of-view centre;
#: points beyond it take the nearest edge value (they lie outside any head).
_FIELD_HALF_EXTENT_MM: Final = (100.0, 120.0, 96.0)
#: Sulcal field: Gaussian-filtered white noise, filter sd 2.7 mm (correlation length 3.8 mm), so
#: its zero-level sheets are ~12 mm apart (Rice: mean spacing = pi x correlation length).
_SULCAL_SIGMA_MM: Final = 2.7
_SULCAL_SPACING_MM: Final = 1.25
#: Sulcal half-width (CSF inside a sulcus) and depth of the sulci below the pial envelope.
_SULCAL_HALF_WIDTH_MM: Final = 0.6
_SULCAL_DEPTH_MM: Final = (14.0, 3.0, 7.0, 22.0)  # mean, sd of the smooth field, clip lo, hi
#: Cortical ribbon thickness: mean, sd of the smooth field, clip lo, hi.
_GM_THICKNESS_MM: Final = (3.0, 0.4, 2.5, 4.0)
#: Interhemispheric fissure: CSF half-width; bottom (top of the corpus callosum) z, and the
#: callosal y-centre and half-length (the fissure cuts fully through in front of and behind it).
_FISSURE_HALF_WIDTH_MM: Final = 0.8
_CALLOSUM_TOP_Z_MM: Final = 22.0
_CALLOSUM_Y_MM: Final = (-3.0, 35.0)
#: Low-frequency deformation of the brain envelope: filter sd and amplitude.
_SHAPE_SIGMA_MM: Final = 12.0
_SHAPE_AMPLITUDE_MM: Final = 2.5
_COARSE_SPACING_MM: Final = 4.0
#: Deep grey nuclei, nominal brain-centred coordinates: (centre, semi-axes), mirrored in x.
_NUCLEI_MM: Final = (
    ((13.0, 14.0, 10.0), (5.5, 13.0, 8.0)),  # caudate head/body
    ((24.0, 4.0, 0.0), (5.5, 15.0, 9.0)),  # putamen
    ((18.0, 0.0, -1.0), (3.5, 8.0, 5.0)),  # globus pallidus
    ((10.0, -16.0, 4.0), (8.5, 14.0, 9.0)),  # thalamus
)
#: Third ventricle: (centre, semi-axes) in nominal brain-centred coordinates.
_THIRD_VENTRICLE_MM: Final = ((0.0, -10.0, 0.0), (1.8, 12.0, 8.0))


@dataclass(frozen=True)
class _GridField:
    """A scalar field on a regular grid: ``values[i, j, k]`` at ``origin + spacing * (i, j, k)``."""

    values: npt.NDArray[np.float32]
    origin_mm: tuple[float, float, float]
    spacing_mm: float


@dataclass(frozen=True)
class _Anatomy:
    """Per-subject random draws of the label phantom (all in mm, FOV-centred)."""

    semi_axes: npt.NDArray[np.float64]  # (3,)
    centre: npt.NDArray[np.float64]  # (3,)
    csf_gap: float
    extracerebral: float
    midline_x: float
    shape_field: _GridField
    thickness_field: _GridField
    depth_field: _GridField
    sulcal_field: _GridField
    sulcal_grad: _GridField
    nuclei_jitter: npt.NDArray[np.float64]  # (n_nuclei, 2 sides, 3)
    ventricle: npt.NDArray[np.float64]  # (4,) relative jitter of x0, rx, rz, length
    lesion_side: float
    lesion_direction: npt.NDArray[np.float64]  # (3,) unit vector
    lesion_radius: float
    lesion_penumbra: float
    lesion_b: npt.NDArray[np.float64]  # (3,) dipolar radius modulation
    lesion_c: npt.NDArray[np.float64]  # (3, 3) quadrupolar radius modulation


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


# --- validation and geometry helpers ------------------------------------------------------------


def _as_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    out = tuple(int(n) for n in shape)
    if len(out) != 3 or any(n < 1 for n in out):
        raise ValueError(f"shape must be three positive integers, got {shape!r}")
    return out


def _as_voxel_mm(voxel_mm: float | Sequence[float]) -> tuple[float, float, float]:
    arr = np.asarray(voxel_mm, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, arr)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"voxel_mm must be one or three positive finite sizes, got {voxel_mm!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _voxel_axes(
    shape: tuple[int, int, int], voxel: tuple[float, float, float]
) -> tuple[npt.NDArray[np.float64], ...]:
    """Voxel-centre coordinates (mm, FOV-centred) along each axis, shaped to broadcast."""
    axes = []
    for k, (n, h) in enumerate(zip(shape, voxel, strict=True)):
        c = (np.arange(n, dtype=np.float64) + 0.5) * h - 0.5 * n * h
        bshape = [1, 1, 1]
        bshape[k] = n
        axes.append(c.reshape(bshape))
    return tuple(axes)


def _draw_field(gen: np.random.Generator, sigma_mm: float, spacing_mm: float) -> _GridField:
    """Unit-variance smooth Gaussian random field: white noise filtered with a Gaussian.

    The grid covers the fixed ``_FIELD_HALF_EXTENT_MM`` box, so the number of draws does not
    depend on any voxel grid. The result is standardised (zero mean, unit variance) over the box;
    its correlation function is ``exp(-r**2 / (4 sigma_mm**2))``.
    """
    n = tuple(int(math.ceil(2.0 * e / spacing_mm)) + 1 for e in _FIELD_HALF_EXTENT_MM)
    noise = gen.standard_normal(n, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma_mm / spacing_mm, mode="wrap", truncate=3.0)
    field -= field.mean()
    field /= field.std()
    ex, ey, ez = _FIELD_HALF_EXTENT_MM
    return _GridField(field, (-ex, -ey, -ez), spacing_mm)


def _gradient_norm(field: _GridField) -> _GridField:
    """|grad| of a grid field (per mm), on the same grid."""
    grads = np.gradient(field.values, field.spacing_mm)
    norm = np.sqrt(sum(g * g for g in grads)).astype(np.float32)
    return _GridField(norm, field.origin_mm, field.spacing_mm)


def _sample(field: _GridField, axes: Sequence[npt.NDArray[np.float64]]) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of a grid field at the tensor-product voxel centres `axes`.

    Separable: one 1-D linear interpolation per axis (cheap for a tensor-product target grid).
    Points beyond the grid take the edge value.
    """
    out = field.values
    for k, coords in enumerate(axes):
        m = out.shape[k]
        t = np.clip((coords.ravel() - field.origin_mm[k]) / field.spacing_mm, 0.0, m - 1.0)
        i0 = np.minimum(np.floor(t).astype(np.intp), m - 2)
        w = (t - i0).astype(np.float32)
        bshape = [1, 1, 1]
        bshape[k] = -1
        w = w.reshape(bshape)
        lo = np.take(out, i0, axis=k)
        hi = np.take(out, i0 + 1, axis=k)
        hi -= lo
        hi *= w
        lo += hi
        out = lo
    return np.ascontiguousarray(out, dtype=np.float32)


def _draw_anatomy(gen: np.random.Generator) -> _Anatomy:
    """All random draws of one subject's anatomy, in a fixed order (lesion drawn always)."""
    scale = 1.0 + np.clip(
        gen.normal(0.0, _BRAIN_SCALE_SD, 3), -2.5 * _BRAIN_SCALE_SD, 2.5 * _BRAIN_SCALE_SD
    )
    semi_axes = _BRAIN_SEMI_AXES_MM * scale
    centre = np.clip(gen.normal(0.0, 1.0, 3), -2.0, 2.0) * np.array([1.0, 2.0, 1.5])
    csf_gap = float(gen.uniform(1.5, 3.0))
    extracerebral = float(gen.uniform(4.5, 8.0))
    midline_x = float(np.clip(gen.normal(0.0, 0.7), -1.5, 1.5))
    shape_field = _draw_field(gen, _SHAPE_SIGMA_MM, _COARSE_SPACING_MM)
    thickness_field = _draw_field(gen, 6.0, _COARSE_SPACING_MM / 2.0)
    depth_field = _draw_field(gen, 8.0, _COARSE_SPACING_MM)
    sulcal_field = _draw_field(gen, _SULCAL_SIGMA_MM, _SULCAL_SPACING_MM)
    sulcal_grad = _gradient_norm(sulcal_field)
    nuclei_jitter = np.clip(gen.normal(0.0, 1.0, (len(_NUCLEI_MM), 2, 3)), -2.0, 2.0)
    ventricle = np.clip(gen.normal(0.0, 0.1, 4), -0.25, 0.25)
    # Lesion: hemisphere, lateral direction from the brain centre, radius, penumbra thickness,
    # and a smooth (dipole + quadrupole) modulation of the radius so the blob is not a sphere.
    lesion_side = 1.0 if gen.random() < 0.5 else -1.0
    ux = float(gen.uniform(0.5, 0.9))
    phi = float(gen.uniform(0.0, 2.0 * np.pi))
    rest = math.sqrt(1.0 - ux * ux)
    uy, uz = rest * math.cos(phi), rest * math.sin(phi)
    uz = max(uz, -0.2 * rest)  # keep away from the skull base
    direction = np.array([lesion_side * ux, uy, uz])
    direction /= np.linalg.norm(direction)
    lesion_radius = float(gen.uniform(8.0, 20.0))
    lesion_penumbra = float(gen.uniform(5.0, 10.0))
    lesion_b = gen.normal(0.0, 0.06, 3)
    c = gen.normal(0.0, 0.06, (3, 3))
    lesion_c = 0.5 * (c + c.T)
    lesion_c -= np.trace(lesion_c) / 3.0 * np.eye(3)
    return _Anatomy(
        semi_axes=semi_axes,
        centre=centre,
        csf_gap=csf_gap,
        extracerebral=extracerebral,
        midline_x=midline_x,
        shape_field=shape_field,
        thickness_field=thickness_field,
        depth_field=depth_field,
        sulcal_field=sulcal_field,
        sulcal_grad=sulcal_grad,
        nuclei_jitter=nuclei_jitter,
        ventricle=ventricle,
        lesion_side=lesion_side,
        lesion_direction=direction,
        lesion_radius=lesion_radius,
        lesion_penumbra=lesion_penumbra,
        lesion_b=lesion_b,
        lesion_c=lesion_c,
    )


def _ensure_present(
    labels: npt.NDArray[np.int8],
    tissue: Tissue,
    score: npt.NDArray[np.floating],
    eligible: npt.NDArray[np.bool_],
) -> None:
    """If `tissue` is absent (coarse grids), give it the eligible voxel of lowest `score`."""
    if np.any(labels == tissue) or not np.any(eligible):
        return
    masked = np.where(eligible, score, np.inf)
    labels.flat[int(np.argmin(masked))] = tissue


# --- public API ---------------------------------------------------------------------------------


def make_tissue_labels(
    shape: Sequence[int],
    voxel_mm: float | Sequence[float],
    rng: RngLike,
    *,
    lesion: bool = False,
) -> npt.NDArray[np.int8]:
    """Draw a procedural brain-like tissue label volume.

    The anatomy is built in physical coordinates (mm, centred on the field of view), so one
    seed gives the same brain at any resolution; only the field of view ``shape * voxel_mm``
    matters. A typical field of view is (176, 208, 160) mm, e.g. ``shape=(176, 208, 160)`` at
    1 mm (about 1.2e6 brain voxels) or ``(88, 104, 80)`` at 2 mm.

    Parameters
    ----------
    shape : sequence of 3 int
        Grid size (X, Y, Z); axes x = left-right, y = posterior-anterior, z = inferior-superior.
    voxel_mm : float or sequence of 3 float
        Voxel size, mm (isotropic if scalar).
    rng : numpy.random.Generator or int
        Random generator or seed; the result is deterministic for a seed.
    lesion : bool
        Add an infarct core (8-20 mm radius blob in cortex/WM of one hemisphere) surrounded by a
        5-10 mm penumbra shell, both restricted to brain tissue. The same seed gives the same
        anatomy with or without the lesion (the lesion is always drawn).

    Returns
    -------
    labels : ndarray of shape (X, Y, Z), int8
        :class:`Tissue` codes.

    Raises
    ------
    ValueError
        If `shape` or `voxel_mm` is invalid.

    Notes
    -----
    Construction (all distances in mm):

    * brain envelope: an ellipsoid with semi-axes about (67, 82, 58) (3 % per-subject jitter),
      deformed by a smooth random field (amplitude 2.5); ``d`` is its approximate signed
      distance ``(r - 1) / |grad r|`` with ``r`` the normalised ellipsoid radius (exact on the
      axes);
    * outside it: CSF for ``0 <= d < gap`` (1.5-3), extracerebral tissue up to a further 4.5-8,
      background beyond (head outline 6-11 beyond the brain);
    * sulci: the zero-level sheets of a smooth random field ``g`` (correlation length 3.8, so
      sheets ~12 apart), from the pial envelope down to a smoothly varying depth (7-22); the
      distance to a sheet is ``|g| / |grad g|``; the interhemispheric fissure is a midline sheet
      down to the corpus callosum (full depth in front of and behind it);
    * with ``c`` the distance to the nearest CSF surface (envelope, sulcus or fissure): sulcal
      CSF for ``c < 0``, cortical GM for ``c`` below a smoothly varying thickness (2.5-4), WM
      beyond;
    * deep GM: bilateral ellipsoids (caudate, putamen, globus pallidus, thalamus); ventricles:
      two tapered, downward-curved lateral bodies near the midline plus a thin third ventricle;
    * on coarse grids, a cortical GM, WM, deep GM (and lesion) voxel that sampling missed is
      restored at the best-matching voxel so each tissue stays present.
    """
    shape3 = _as_shape(shape)
    voxel = _as_voxel_mm(voxel_mm)
    gen = np.random.default_rng(rng)
    anat = _draw_anatomy(gen)
    ax = _voxel_axes(shape3, voxel)
    px, py, pz = (ax[k] - anat.centre[k] for k in range(3))
    a = anat.semi_axes
    rel = a / _BRAIN_SEMI_AXES_MM  # structure scaling to this subject's brain

    # Signed distance to the brain envelope: (r - 1)/|grad r| with r the ellipsoid radius.
    r2 = (px / a[0]) ** 2 + (py / a[1]) ** 2 + (pz / a[2]) ** 2
    g2 = (px / a[0] ** 2) ** 2 + (py / a[1] ** 2) ** 2 + (pz / a[2] ** 2) ** 2
    r = np.sqrt(r2)
    grad_r = np.sqrt(g2) / np.maximum(r, 1e-12)
    np.maximum(grad_r, 1.0 / a.max(), out=grad_r)
    d = ((r - 1.0) / grad_r).astype(np.float32)
    del r2, g2, r, grad_r
    d -= _SHAPE_AMPLITUDE_MM * _sample(anat.shape_field, ax)

    labels = np.zeros(shape3, dtype=np.int8)
    labels[d < anat.csf_gap + anat.extracerebral] = Tissue.EXTRACEREBRAL
    labels[d < anat.csf_gap] = Tissue.CSF
    brain = d < 0.0
    depth = -d[brain]

    # Sulcal sheets: |g|/|grad g| is the first-order distance to the zero-level set of g.
    g = np.abs(_sample(anat.sulcal_field, ax)[brain])
    g /= np.maximum(_sample(anat.sulcal_grad, ax)[brain], 1e-6)
    mean, sd, lo, hi = _SULCAL_DEPTH_MM
    sulcal_depth = np.clip(mean + sd * _sample(anat.depth_field, ax)[brain], lo, hi)
    below = np.maximum(depth - sulcal_depth, 0.0)
    sheet = np.sqrt(g * g + below * below) - _SULCAL_HALF_WIDTH_MM
    del g, below, sulcal_depth

    # Interhemispheric fissure (nominal brain-centred coordinates).
    qx = np.broadcast_to(px / rel[0] - anat.midline_x, shape3)[brain]
    qy = np.broadcast_to(py / rel[1], shape3)[brain]
    qz = np.broadcast_to(pz / rel[2], shape3)[brain]
    y_cc, half_cc = _CALLOSUM_Y_MM
    up = np.maximum(0.0, np.minimum(_CALLOSUM_TOP_Z_MM - qz, half_cc - np.abs(qy - y_cc)))
    fissure = np.sqrt(qx * qx + up * up) - _FISSURE_HALF_WIDTH_MM
    del qx, qy, qz, up

    to_csf = np.minimum(np.minimum(depth, sheet), fissure)
    del sheet, fissure
    mean, sd, lo, hi = _GM_THICKNESS_MM
    thickness = np.clip(mean + sd * _sample(anat.thickness_field, ax)[brain], lo, hi)
    brain_labels = np.full(to_csf.shape, Tissue.WM, dtype=np.int8)
    brain_labels[to_csf < thickness] = Tissue.CORTICAL_GM
    brain_labels[to_csf < 0.0] = Tissue.CSF
    gm_score = np.full(shape3, np.inf, dtype=np.float32)
    gm_score[brain] = np.abs(to_csf - 0.5 * thickness)
    wm_score = np.full(shape3, np.inf, dtype=np.float32)
    wm_score[brain] = -to_csf
    labels[brain] = brain_labels
    del to_csf, thickness, brain_labels, depth

    # Deep grey nuclei (bilateral ellipsoids), nominal coordinates scaled to this brain.
    deep_score = np.full(shape3, np.inf, dtype=np.float32)
    for n, (c_nom, s_nom) in enumerate(_NUCLEI_MM):
        for side_index, side in enumerate((1.0, -1.0)):
            c = (np.array(c_nom) * [side, 1.0, 1.0] + anat.nuclei_jitter[n, side_index]) * rel
            s = np.array(s_nom) * rel
            e = ((px - c[0]) / s[0]) ** 2 + ((py - c[1]) / s[1]) ** 2 + ((pz - c[2]) / s[2]) ** 2
            inside = (e < 1.0) & brain
            labels[inside] = Tissue.DEEP_GM
            np.minimum(deep_score, e, out=deep_score)

    # Lateral ventricles: tapered elliptic bodies along y, curving down at both ends, diverging
    # laterally towards the back; then the thin midline third ventricle.
    jx, jrx, jrz, jlen = anat.ventricle
    qx = px / rel[0] - anat.midline_x
    qy = py / rel[1]
    qz = pz / rel[2]
    y0, length = -4.0, 32.0 * (1.0 + jlen)
    u = (qy - y0) / length
    taper = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    zc = 9.0 - 12.0 * u * u
    for side in (1.0, -1.0):
        xc = side * (6.0 * (1.0 + jx) + 0.12 * np.maximum(y0 - qy, 0.0))
        e = ((qx - xc) / (5.0 * (1.0 + jrx))) ** 2 + ((qz - zc) / (8.0 * (1.0 + jrz))) ** 2
        labels[(e < taper * taper) & brain] = Tissue.CSF
    (c3, s3) = _THIRD_VENTRICLE_MM
    e = ((qx - c3[0]) / s3[0]) ** 2 + ((qy - c3[1]) / s3[1]) ** 2 + ((qz - c3[2]) / s3[2]) ** 2
    labels[(e < 1.0) & brain] = Tissue.CSF
    del e, u, taper, zc

    tissue_voxels = brain & (labels >= Tissue.CORTICAL_GM)
    _ensure_present(labels, Tissue.CORTICAL_GM, gm_score, tissue_voxels & (labels == Tissue.WM))
    _ensure_present(labels, Tissue.DEEP_GM, deep_score, tissue_voxels & (labels == Tissue.WM))
    _ensure_present(labels, Tissue.WM, wm_score, tissue_voxels & (labels == Tissue.CORTICAL_GM))
    del gm_score, wm_score, deep_score

    if lesion:
        _paint_lesion(labels, anat, px, py, pz)
    return labels


def _paint_lesion(
    labels: npt.NDArray[np.int8],
    anat: _Anatomy,
    px: npt.NDArray[np.float64],
    py: npt.NDArray[np.float64],
    pz: npt.NDArray[np.float64],
) -> None:
    """Paint the infarct core and penumbra over cortical GM / WM / deep GM of one hemisphere."""
    u = anat.lesion_direction
    a = anat.semi_axes
    # Point where the ray from the brain centre along u meets the ellipsoid; step back inside so
    # the core reaches the cortex and extends into the white matter.
    surface = u / math.sqrt(float(np.sum((u / a) ** 2)))
    centre = surface - u * (0.8 * anat.lesion_radius + 4.0)
    dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    inv = 1.0 / np.maximum(dist, 1e-9)
    nx, ny, nz = dx * inv, dy * inv, dz * inv
    b, c = anat.lesion_b, anat.lesion_c
    modulation = 1.0 + b[0] * nx + b[1] * ny + b[2] * nz
    for i, ni in enumerate((nx, ny, nz)):
        for j, nj in enumerate((nx, ny, nz)):
            modulation = modulation + c[i, j] * ni * nj
    radius = anat.lesion_radius * np.clip(modulation, 0.7, 1.3)
    # Same hemisphere as the centre, brain tissue only.
    eligible = (labels >= Tissue.CORTICAL_GM) & (np.sign(px) == anat.lesion_side)
    core = eligible & (dist < radius)
    penumbra = eligible & ~core & (dist < radius + anat.lesion_penumbra)
    labels[core] = Tissue.INFARCT_CORE
    labels[penumbra] = Tissue.PENUMBRA
    dist_b = np.broadcast_to(dist, labels.shape)
    _ensure_present(labels, Tissue.INFARCT_CORE, dist_b, eligible)
    eligible &= labels != Tissue.INFARCT_CORE
    _ensure_present(labels, Tissue.PENUMBRA, dist_b, eligible)


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


def _lookup_tables(
    param: str, y_offset: float, z_offset: float
) -> tuple[npt.NDArray[np.float64], ...]:
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
        :class:`Tissue` codes, e.g. from :func:`make_tissue_labels`.
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
        If `labels` is not a 3-D integer array of :class:`Tissue` codes, or `voxel_mm` is
        invalid.

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
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be a 3-D integer array, got {lab.dtype} {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= len(Tissue)):
        raise ValueError("labels must hold Tissue codes 0..7")
    voxel = _as_voxel_mm(voxel_mm)
    gen = np.random.default_rng(rng)
    drawn_y_offset = float(gen.normal(0.0, _Y_OFFSET_SD))
    y_off = drawn_y_offset if y_offset is None else float(y_offset)
    z_offsets = {p: float(gen.standard_normal()) for p in PARAMETERS if p != "Y"}
    # All smooth fields first (a fixed number of draws), then the white noise (grid-dependent),
    # so a seed gives the same smooth maps at any resolution.
    fields = {
        p: _draw_field(gen, _PARAM_CORRELATION_MM / math.sqrt(2.0), _PARAM_SPACING_MM)
        for p in PARAMETERS
    }
    ax = _voxel_axes(lab.shape, voxel)
    index = lab.astype(np.intp)
    maps: dict[str, npt.NDArray[np.float32]] = {}
    for p in PARAMETERS:
        mean, sd, lo, hi = _lookup_tables(p, y_off, z_offsets.get(p, 0.0))
        z = _standardise_per_tissue(_sample(fields[p], ax), index)
        z *= _SMOOTH_WEIGHT
        z += _WHITE_WEIGHT * gen.standard_normal(lab.shape)
        z *= sd[index]
        z += mean[index]
        np.clip(z, lo[index], hi[index], out=z)
        maps[p] = z.astype(np.float32)
    return maps


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
        Echo times, seconds (any spacing, >= 0).
    rng : numpy.random.Generator or int
        Random generator or seed; the result is deterministic for a seed.
    snr : float
        Signal-to-noise ratio of echo 1: the median noise-free first-echo magnitude in the
        brain divided by the noise sd ``sigma`` of each complex component. ``numpy.inf`` gives
        noise-free magnitudes (so does a field of view without brain voxels).
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
        Labels, brain mask, ground truth, magnitude (X, Y, Z, E) float32 and chi (X, Y, Z)
        float32 ppm.

    Raises
    ------
    ValueError
        If an argument is invalid (shape, voxel size, echo times, snr <= 0, negative
        `qsm_noise_ppm`).

    Notes
    -----
    ``magnitude = |S + sigma (n1 + i n2)|`` with ``S = qbold_signal(truth, te_s)`` and
    ``n1, n2 ~ N(0, 1)`` in every voxel, background included (Rician statistics; the background
    is Rayleigh with mean ``sigma sqrt(pi / 2)``). ``chi = qsm_susceptibility(truth) + N(0,
    qsm_noise_ppm)`` inside the head, 0 in the background. The noise-free signal is computed
    only for head voxels, and the noise added in z-slabs, so peak memory is about the output
    plus one slab of temporaries (< 1 GB at 176 x 208 x 160 x 8). The magnitude and chi noise
    come from two streams spawned from `rng` after the maps are drawn, so a noise-free
    magnitude does not change the chi noise.
    """
    te = np.asarray(te_s, dtype=np.float64)
    if te.ndim != 1 or te.size == 0 or not np.all(np.isfinite(te)) or np.any(te < 0):
        raise ValueError("te_s must be a non-empty 1-D array of finite echo times >= 0 (s)")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr!r}")
    if not (np.isfinite(qsm_noise_ppm) and qsm_noise_ppm >= 0):
        raise ValueError(f"qsm_noise_ppm must be finite and >= 0, got {qsm_noise_ppm!r}")
    shape3 = _as_shape(shape)
    voxel = _as_voxel_mm(voxel_mm)
    gen = np.random.default_rng(rng)
    labels = make_tissue_labels(shape3, voxel, gen, lesion=lesion)
    truth = simulate_parameter_maps(labels, voxel, gen, y_offset=y_offset)
    mag_gen, chi_gen = gen.spawn(2)
    mask = labels >= Tissue.CORTICAL_GM
    head = labels != Tissue.BACKGROUND

    # Noise-free signal of the head voxels only (background S0 = 0 gives 0 anyway).
    head_truth = {p: truth[p][head] for p in PARAMETERS}
    signal = qbold_signal(
        head_truth["S0"],
        head_truth["R2"],
        head_truth["Y"],
        head_truth["v"],
        head_truth["chi_nb"],
        te,
        b0_t,
    )
    magnitude = np.zeros((*shape3, te.size), dtype=np.float32)
    magnitude[head] = signal
    brain_first_echo = signal[mask[head], 0]
    del signal
    reference = float(np.median(brain_first_echo)) if brain_first_echo.size else 0.0
    sigma = reference / snr if np.isfinite(snr) else 0.0
    if sigma > 0:
        slab = max(1, (1 << 22) // max(1, shape3[0] * shape3[1] * te.size))
        for z0 in range(0, shape3[2], slab):
            block = magnitude[:, :, z0 : z0 + slab]
            real = mag_gen.standard_normal(block.shape, dtype=np.float32)
            real *= np.float32(sigma)
            real += block
            imag = mag_gen.standard_normal(block.shape, dtype=np.float32)
            imag *= np.float32(sigma)
            np.hypot(real, imag, out=block)

    chi = np.zeros(shape3, dtype=np.float32)
    chi_head = qsm_susceptibility(head_truth["Y"], head_truth["v"], head_truth["chi_nb"])
    if qsm_noise_ppm > 0:
        chi_head = chi_head + chi_gen.normal(0.0, qsm_noise_ppm, chi_head.shape).astype(np.float32)
    chi[head] = chi_head
    return SubjectSimulation(
        labels=labels,
        mask=mask,
        truth=truth,
        magnitude=magnitude,
        chi=chi,
        te_s=tuple(float(t) for t in te),
        voxel_mm=voxel,
        noise_sigma=float(sigma),
    )
