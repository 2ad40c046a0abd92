"""Voxel grids in physical coordinates, and the smooth random fields sampled on them.

The phantom (:mod:`oefray.physics.anatomy`, :mod:`oefray.physics.parameter_maps`) draws all of
its randomness on grids of a fixed physical size and samples it at the voxel centres, so a seed
gives the same subject at any resolution.

Coordinates are RAS-like and centred on the field of view: axis 0 is x (left to right), axis 1
is y (posterior to anterior), axis 2 is z (inferior to superior, slices along z). Voxel ``i``
along an axis of ``n`` voxels of size ``h`` mm has its centre at ``(i + 0.5) h - n h / 2`` mm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "FIELD_HALF_EXTENT_MM",
    "GridField",
    "RngLike",
    "as_shape",
    "as_voxel_mm",
    "draw_field",
    "gradient_norm",
    "sample_field",
    "voxel_axes",
]

#: A random generator or an int seed (``numpy.random.default_rng`` accepts both).
RngLike: TypeAlias = np.random.Generator | int

#: Random fields are drawn on grids covering this half-extent (x, y, z), mm, around the
#: field-of-view centre; points beyond it take the nearest edge value (they lie outside any head).
FIELD_HALF_EXTENT_MM: Final = (100.0, 120.0, 96.0)


@dataclass(frozen=True)
class GridField:
    """A scalar field on a regular grid: ``values[i, j, k]`` at ``origin + spacing * (i, j, k)``.

    Attributes
    ----------
    values : ndarray of shape (I, J, K), float32
    origin_mm : tuple of 3 float
        Position of ``values[0, 0, 0]``, mm, field-of-view-centred.
    spacing_mm : float
        Isotropic grid spacing, mm.
    """

    values: npt.NDArray[np.float32]
    origin_mm: tuple[float, float, float]
    spacing_mm: float


def as_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """`shape` as three positive ints; ValueError naming ``shape`` otherwise."""
    out = tuple(int(n) for n in shape)
    if len(out) != 3 or any(n < 1 for n in out):
        raise ValueError(f"shape must be three positive integers, got {shape!r}")
    return out


def as_voxel_mm(voxel_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """One (isotropic) or three voxel sizes, mm, as three positive finite floats.

    ValueError naming ``voxel_mm`` otherwise.
    """
    arr = np.asarray(voxel_mm, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(3, arr)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"voxel_mm must be one or three positive finite sizes, got {voxel_mm!r}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def voxel_axes(
    shape: tuple[int, int, int], voxel: tuple[float, float, float]
) -> tuple[npt.NDArray[np.float64], ...]:
    """Voxel-centre coordinates along each axis, mm, field-of-view-centred.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid size (X, Y, Z).
    voxel : tuple of 3 float
        Voxel size, mm.

    Returns
    -------
    tuple of 3 ndarray, of shapes (X, 1, 1), (1, Y, 1), (1, 1, Z)
        Shaped to broadcast against each other.
    """
    axes = []
    for k, (n, h) in enumerate(zip(shape, voxel, strict=True)):
        c = (np.arange(n, dtype=np.float64) + 0.5) * h - 0.5 * n * h
        bshape = [1, 1, 1]
        bshape[k] = n
        axes.append(c.reshape(bshape))
    return tuple(axes)


def draw_field(gen: np.random.Generator, sigma_mm: float, spacing_mm: float) -> GridField:
    """Unit-variance smooth Gaussian random field: white noise filtered with a Gaussian.

    Parameters
    ----------
    gen : numpy.random.Generator
        Draws ``prod(grid shape)`` standard normals (float32).
    sigma_mm : float
        Standard deviation of the Gaussian filter, mm.
    spacing_mm : float
        Grid spacing, mm.

    Returns
    -------
    GridField
        Standardised (zero mean, unit variance) over its grid.

    Notes
    -----
    The grid covers the fixed :data:`FIELD_HALF_EXTENT_MM` box, so the number of draws does not
    depend on any voxel grid. The correlation function is ``exp(-r**2 / (4 sigma_mm**2))``.
    """
    n = tuple(int(math.ceil(2.0 * e / spacing_mm)) + 1 for e in FIELD_HALF_EXTENT_MM)
    noise = gen.standard_normal(n, dtype=np.float32)
    field = ndimage.gaussian_filter(noise, sigma_mm / spacing_mm, mode="wrap", truncate=3.0)
    field -= field.mean()
    field /= field.std()
    ex, ey, ez = FIELD_HALF_EXTENT_MM
    return GridField(field, (-ex, -ey, -ez), spacing_mm)


def gradient_norm(field: GridField) -> GridField:
    """``|grad field|`` (per mm), on the same grid."""
    grads = np.gradient(field.values, field.spacing_mm)
    norm = np.sqrt(sum(g * g for g in grads)).astype(np.float32)
    return GridField(norm, field.origin_mm, field.spacing_mm)


def sample_field(
    field: GridField, axes: Sequence[npt.NDArray[np.float64]]
) -> npt.NDArray[np.float32]:
    """Trilinear interpolation of a grid field at tensor-product voxel centres.

    Parameters
    ----------
    field : GridField
    axes : sequence of 3 ndarray
        Voxel-centre coordinates per axis, mm, as from :func:`voxel_axes`.

    Returns
    -------
    ndarray of shape (X, Y, Z), float32
        Points beyond the field's grid take its edge value.

    Notes
    -----
    Separable: one 1-D linear interpolation per axis (cheap for a tensor-product target grid).
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
