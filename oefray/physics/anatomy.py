"""Anatomy of the procedural brain phantom: tissue codes and the label volume (DESIGN.md §3).

:func:`make_tissue_labels` draws a brain-like 3-D label volume (:class:`Tissue` codes) in
physical millimetre coordinates (:mod:`oefray.physics.grid`), so the same seed gives the same
anatomy at any resolution. All label randomness is drawn on grids of a fixed physical size, in a
fixed order, from the ``rng`` argument only.

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

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from oefray.physics.grid import (
    GridField,
    RngLike,
    as_shape,
    as_voxel_mm,
    draw_field,
    gradient_norm,
    sample_field,
    voxel_axes,
)

__all__ = ["BRAIN_TISSUES", "TISSUE_NAMES", "Tissue", "make_tissue_labels"]


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


#: The name of each tissue class (a segmentation's ``dseg.tsv``).
TISSUE_NAMES: Final[dict[int, str]] = {
    int(Tissue.BACKGROUND): "background",
    int(Tissue.EXTRACEREBRAL): "extracerebral",
    int(Tissue.CSF): "CSF",
    int(Tissue.CORTICAL_GM): "cortical GM",
    int(Tissue.WM): "WM",
    int(Tissue.DEEP_GM): "deep GM",
    int(Tissue.INFARCT_CORE): "infarct core",
    int(Tissue.PENUMBRA): "penumbra",
}

#: Tissue codes that form the brain mask (ground truth is meaningful only there).
BRAIN_TISSUES: Final[tuple[Tissue, ...]] = tuple(t for t in Tissue if t >= Tissue.CORTICAL_GM)

# --- anatomy constants (mm unless stated) -----------------------------------------------------

#: Nominal brain semi-axes (x, y, z) and per-subject relative jitter (sd, clipped at 2.5 sd).
_BRAIN_SEMI_AXES_MM: Final = np.array([67.0, 82.0, 58.0])
_BRAIN_SCALE_SD: Final = 0.03
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

#: Voxel-centre coordinates, mm, one broadcastable array per axis: (x, y, z).
_Points = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]


@dataclass(frozen=True)
class _Lesion:
    """Per-subject random draws of the lesion (mm): drawn always, painted on request."""

    side: float  # +1 or -1: the hemisphere (sign of x)
    direction: npt.NDArray[np.float64]  # (3,) unit vector from the brain centre
    radius: float
    penumbra: float
    b: npt.NDArray[np.float64]  # (3,) dipolar radius modulation
    c: npt.NDArray[np.float64]  # (3, 3) quadrupolar radius modulation


@dataclass(frozen=True)
class _Anatomy:
    """Per-subject random draws of the label phantom (all in mm, FOV-centred)."""

    semi_axes: npt.NDArray[np.float64]  # (3,)
    centre: npt.NDArray[np.float64]  # (3,)
    csf_gap: float
    extracerebral: float
    midline_x: float
    shape_field: GridField
    thickness_field: GridField
    depth_field: GridField
    sulcal_field: GridField
    sulcal_grad: GridField
    nuclei_jitter: npt.NDArray[np.float64]  # (n_nuclei, 2 sides, 3)
    ventricle: npt.NDArray[np.float64]  # (4,) relative jitter of x0, rx, rz, length
    lesion: _Lesion


@dataclass(frozen=True)
class _Frame:
    """One subject's anatomy placed on one voxel grid: what every painting step reads."""

    anat: _Anatomy
    ax: _Points  # voxel centres, field-of-view-centred (for sampling the random fields)
    p: _Points  # voxel centres relative to the brain centre
    rel: npt.NDArray[np.float64]  # (3,) this brain's semi-axes over the nominal ones

    @classmethod
    def place(
        cls, anat: _Anatomy, shape: tuple[int, int, int], voxel: tuple[float, float, float]
    ) -> _Frame:
        ax = voxel_axes(shape, voxel)
        p = (ax[0] - anat.centre[0], ax[1] - anat.centre[1], ax[2] - anat.centre[2])
        return cls(anat, (ax[0], ax[1], ax[2]), p, anat.semi_axes / _BRAIN_SEMI_AXES_MM)

    def nominal(self) -> _Points:
        """Coordinates scaled to the nominal brain (``_BRAIN_SEMI_AXES_MM``), x from the midline."""
        px, py, pz = self.p
        return px / self.rel[0] - self.anat.midline_x, py / self.rel[1], pz / self.rel[2]


# --- random draws -------------------------------------------------------------------------------


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
    shape_field = draw_field(gen, _SHAPE_SIGMA_MM, _COARSE_SPACING_MM)
    thickness_field = draw_field(gen, 6.0, _COARSE_SPACING_MM / 2.0)
    depth_field = draw_field(gen, 8.0, _COARSE_SPACING_MM)
    sulcal_field = draw_field(gen, _SULCAL_SIGMA_MM, _SULCAL_SPACING_MM)
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
        sulcal_grad=gradient_norm(sulcal_field),
        nuclei_jitter=np.clip(gen.normal(0.0, 1.0, (len(_NUCLEI_MM), 2, 3)), -2.0, 2.0),
        ventricle=np.clip(gen.normal(0.0, 0.1, 4), -0.25, 0.25),
        lesion=_draw_lesion(gen),
    )


def _draw_lesion(gen: np.random.Generator) -> _Lesion:
    """Hemisphere, lateral direction from the brain centre, radius, penumbra thickness, and a
    smooth (dipole + quadrupole) modulation of the radius so the blob is not a sphere."""
    side = 1.0 if gen.random() < 0.5 else -1.0
    ux = float(gen.uniform(0.5, 0.9))
    phi = float(gen.uniform(0.0, 2.0 * np.pi))
    rest = math.sqrt(1.0 - ux * ux)
    uy, uz = rest * math.cos(phi), rest * math.sin(phi)
    uz = max(uz, -0.2 * rest)  # keep away from the skull base
    direction = np.array([side * ux, uy, uz])
    direction /= np.linalg.norm(direction)
    radius = float(gen.uniform(8.0, 20.0))
    penumbra = float(gen.uniform(5.0, 10.0))
    b = gen.normal(0.0, 0.06, 3)
    c = gen.normal(0.0, 0.06, (3, 3))
    c = 0.5 * (c + c.T)
    c -= np.trace(c) / 3.0 * np.eye(3)
    return _Lesion(side, direction, radius, penumbra, b, c)


# --- geometry -----------------------------------------------------------------------------------


def _ellipsoid_radius2(
    p: Sequence[npt.NDArray[np.float64]],
    centre: Sequence[float] | npt.NDArray[np.float64],
    semi_axes: Sequence[float] | npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Squared normalised radius ``sum_k ((p_k - c_k) / s_k)**2`` (< 1 inside the ellipsoid)."""
    return (
        ((p[0] - centre[0]) / semi_axes[0]) ** 2
        + ((p[1] - centre[1]) / semi_axes[1]) ** 2
        + ((p[2] - centre[2]) / semi_axes[2]) ** 2
    )


def _envelope_distance(frame: _Frame) -> npt.NDArray[np.float32]:
    """Approximate signed distance to the deformed brain envelope, mm (< 0 inside)."""
    px, py, pz = frame.p
    a = frame.anat.semi_axes
    # (r - 1)/|grad r| with r the normalised ellipsoid radius (exact on the axes).
    r2 = (px / a[0]) ** 2 + (py / a[1]) ** 2 + (pz / a[2]) ** 2
    g2 = (px / a[0] ** 2) ** 2 + (py / a[1] ** 2) ** 2 + (pz / a[2] ** 2) ** 2
    r = np.sqrt(r2)
    grad_r = np.sqrt(g2) / np.maximum(r, 1e-12)
    np.maximum(grad_r, 1.0 / a.max(), out=grad_r)
    d = ((r - 1.0) / grad_r).astype(np.float32)
    del r2, g2, r, grad_r
    d -= _SHAPE_AMPLITUDE_MM * sample_field(frame.anat.shape_field, frame.ax)
    return d


def _sulcal_distance(
    frame: _Frame, brain: npt.NDArray[np.bool_], depth: npt.NDArray[np.float32]
) -> npt.NDArray[np.floating]:
    """Distance of each brain voxel to the nearest sulcal CSF, mm (< 0 inside a sulcus).

    ``|g|/|grad g|`` is the first-order distance to the zero-level sheets of the sulcal field
    ``g``; a sheet reaches from the envelope down to a smoothly varying depth.
    """
    anat, ax = frame.anat, frame.ax
    g = np.abs(sample_field(anat.sulcal_field, ax)[brain])
    g /= np.maximum(sample_field(anat.sulcal_grad, ax)[brain], 1e-6)
    mean, sd, lo, hi = _SULCAL_DEPTH_MM
    sulcal_depth = np.clip(mean + sd * sample_field(anat.depth_field, ax)[brain], lo, hi)
    below = np.maximum(depth - sulcal_depth, 0.0)
    return np.sqrt(g * g + below * below) - _SULCAL_HALF_WIDTH_MM


def _fissure_distance(frame: _Frame, brain: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Distance of each brain voxel to the interhemispheric fissure's CSF, mm."""
    qx, qy, qz = (np.broadcast_to(q, brain.shape)[brain] for q in frame.nominal())
    y_cc, half_cc = _CALLOSUM_Y_MM
    up = np.maximum(0.0, np.minimum(_CALLOSUM_TOP_Z_MM - qz, half_cc - np.abs(qy - y_cc)))
    return np.sqrt(qx * qx + up * up) - _FISSURE_HALF_WIDTH_MM


# --- painting -----------------------------------------------------------------------------------


def _paint_cortex(
    labels: npt.NDArray[np.int8], brain: npt.NDArray[np.bool_], frame: _Frame, d: npt.NDArray
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Label the brain sulcal CSF, cortical GM or WM by the distance to the nearest CSF surface
    (`d` is the envelope distance); return the scores (lower: a better stand-in) for restoring
    a missing GM or WM voxel."""
    depth = -d[brain]
    to_csf = np.minimum(
        np.minimum(depth, _sulcal_distance(frame, brain, depth)), _fissure_distance(frame, brain)
    )
    mean, sd, lo, hi = _GM_THICKNESS_MM
    thickness = sample_field(frame.anat.thickness_field, frame.ax)[brain]
    thickness = np.clip(mean + sd * thickness, lo, hi)
    brain_labels = np.full(to_csf.shape, Tissue.WM, dtype=np.int8)
    brain_labels[to_csf < thickness] = Tissue.CORTICAL_GM
    brain_labels[to_csf < 0.0] = Tissue.CSF
    gm_score = np.full(labels.shape, np.inf, dtype=np.float32)
    gm_score[brain] = np.abs(to_csf - 0.5 * thickness)
    wm_score = np.full(labels.shape, np.inf, dtype=np.float32)
    wm_score[brain] = -to_csf
    labels[brain] = brain_labels
    return gm_score, wm_score


def _paint_deep_grey(
    labels: npt.NDArray[np.int8], brain: npt.NDArray[np.bool_], frame: _Frame
) -> npt.NDArray[np.float32]:
    """Bilateral deep grey ellipsoids, scaled to this brain; returns their normalised radius."""
    deep_score = np.full(labels.shape, np.inf, dtype=np.float32)
    for n, (c_nom, s_nom) in enumerate(_NUCLEI_MM):
        for side_index, side in enumerate((1.0, -1.0)):
            jitter = frame.anat.nuclei_jitter[n, side_index]
            c = (np.array(c_nom) * [side, 1.0, 1.0] + jitter) * frame.rel
            e = _ellipsoid_radius2(frame.p, c, np.array(s_nom) * frame.rel)
            labels[(e < 1.0) & brain] = Tissue.DEEP_GM
            np.minimum(deep_score, e, out=deep_score)
    return deep_score


def _paint_ventricles(
    labels: npt.NDArray[np.int8], brain: npt.NDArray[np.bool_], frame: _Frame
) -> None:
    """Lateral ventricles (tapered elliptic bodies along y, curving down at both ends,
    diverging laterally towards the back) and the thin midline third ventricle: CSF."""
    jx, jrx, jrz, jlen = frame.anat.ventricle
    qx, qy, qz = frame.nominal()
    y0, length = -4.0, 32.0 * (1.0 + jlen)
    u = (qy - y0) / length
    taper = np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    zc = 9.0 - 12.0 * u * u
    for side in (1.0, -1.0):
        xc = side * (6.0 * (1.0 + jx) + 0.12 * np.maximum(y0 - qy, 0.0))
        e = ((qx - xc) / (5.0 * (1.0 + jrx))) ** 2 + ((qz - zc) / (8.0 * (1.0 + jrz))) ** 2
        labels[(e < taper * taper) & brain] = Tissue.CSF
    centre, semi_axes = _THIRD_VENTRICLE_MM
    labels[(_ellipsoid_radius2((qx, qy, qz), centre, semi_axes) < 1.0) & brain] = Tissue.CSF


def _paint_lesion(labels: npt.NDArray[np.int8], frame: _Frame) -> None:
    """Paint the infarct core and penumbra over cortical GM / WM / deep GM of one hemisphere."""
    px, py, pz = frame.p
    lesion = frame.anat.lesion
    u = lesion.direction
    a = frame.anat.semi_axes
    # Point where the ray from the brain centre along u meets the ellipsoid; step back inside so
    # the core reaches the cortex and extends into the white matter.
    surface = u / math.sqrt(float(np.sum((u / a) ** 2)))
    centre = surface - u * (0.8 * lesion.radius + 4.0)
    dx, dy, dz = px - centre[0], py - centre[1], pz - centre[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    inv = 1.0 / np.maximum(dist, 1e-9)
    nx, ny, nz = dx * inv, dy * inv, dz * inv
    b, c = lesion.b, lesion.c
    modulation = 1.0 + b[0] * nx + b[1] * ny + b[2] * nz
    for i, ni in enumerate((nx, ny, nz)):
        for j, nj in enumerate((nx, ny, nz)):
            modulation = modulation + c[i, j] * ni * nj
    radius = lesion.radius * np.clip(modulation, 0.7, 1.3)
    # Same hemisphere as the centre, brain tissue only.
    eligible = (labels >= Tissue.CORTICAL_GM) & (np.sign(px) == lesion.side)
    core = eligible & (dist < radius)
    penumbra = eligible & ~core & (dist < radius + lesion.penumbra)
    labels[core] = Tissue.INFARCT_CORE
    labels[penumbra] = Tissue.PENUMBRA
    dist_b = np.broadcast_to(dist, labels.shape)
    _ensure_present(labels, Tissue.INFARCT_CORE, dist_b, eligible)
    eligible &= labels != Tissue.INFARCT_CORE
    _ensure_present(labels, Tissue.PENUMBRA, dist_b, eligible)


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
    The construction is in the module docstring (:mod:`oefray.physics.anatomy`).
    """
    shape3, voxel = as_shape(shape), as_voxel_mm(voxel_mm)  # bad arguments: before any draw
    frame = _Frame.place(_draw_anatomy(np.random.default_rng(rng)), shape3, voxel)
    d = _envelope_distance(frame)
    labels = np.zeros(d.shape, dtype=np.int8)
    labels[d < frame.anat.csf_gap + frame.anat.extracerebral] = Tissue.EXTRACEREBRAL
    labels[d < frame.anat.csf_gap] = Tissue.CSF
    brain = d < 0.0
    gm_score, wm_score = _paint_cortex(labels, brain, frame, d)
    deep_score = _paint_deep_grey(labels, brain, frame)
    _paint_ventricles(labels, brain, frame)
    # Coarse grids: restore a tissue that sampling missed at its best-matching voxel.
    tissue_voxels = brain & (labels >= Tissue.CORTICAL_GM)
    _ensure_present(labels, Tissue.CORTICAL_GM, gm_score, tissue_voxels & (labels == Tissue.WM))
    _ensure_present(labels, Tissue.DEEP_GM, deep_score, tissue_voxels & (labels == Tissue.WM))
    _ensure_present(labels, Tissue.WM, wm_score, tissue_voxels & (labels == Tissue.CORTICAL_GM))
    if lesion:
        _paint_lesion(labels, frame)
    return labels
