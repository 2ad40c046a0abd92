"""Parameter maps as NIfTI volumes on a subject's grid (DESIGN.md §5, "Maps").

Predictions live per brain voxel, identified by ``idx``, the C-order flat index into the subject's
``(X, Y, Z)`` grid (the features' ``idx`` column). Writing scatters them into a float32 volume that
is ``fill`` (NaN by default) outside the given voxels, so any NIfTI viewer shows the brain on an
empty background. Layout of the maps of one subject::

    <out_dir>/sub-<L>_desc-<P>_<suffix>.nii.gz     P in Y, v, R2, S0, chinb, OEF

Files are written to a temporary name and renamed into place, so a reader never sees half a map.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from oefray.errors import OefrayError
from oefray.io.files import atomic_path

#: Map names as used in arrays/columns, and their BIDS ``desc-`` labels (``chi_nb`` has no
#: underscore in BIDS entities; OEF is in percent).
MAP_DESC: dict[str, str] = {
    "Y": "Y",
    "v": "v",
    "R2": "R2",
    "S0": "S0",
    "chi_nb": "chinb",
    "OEF": "OEF",
}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_suffix(path: Path) -> str:
    for s in _NIFTI_SUFFIXES:
        if path.name.endswith(s):
            return s
    raise ValueError(f"map path must end in .nii.gz or .nii, got {path.name!r}")


def _check_grid(shape: Sequence[int], affine: np.ndarray | Sequence[Sequence[float]]):
    shape3 = tuple(int(n) for n in shape)
    if len(shape3) != 3 or min(shape3) < 1:
        raise ValueError(f"shape must be three positive sizes (X, Y, Z), got {tuple(shape)}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    return shape3, aff


def scatter_map(
    values: np.ndarray,
    idx: np.ndarray,
    shape: Sequence[int],
    *,
    fill: float = np.nan,
) -> np.ndarray:
    """Scatter per-voxel values into a volume.

    Parameters
    ----------
    values : (n,) array-like of float
        One value per voxel (NaN allowed, e.g. for voxels whose fit failed).
    idx : (n,) array-like of int
        C-order flat indices of the voxels in the ``(X, Y, Z)`` grid; unique, in ``[0, X*Y*Z)``.
    shape : (3,) sequence of int
        The grid ``(X, Y, Z)``.
    fill : float
        Value of every voxel not in ``idx``.

    Returns
    -------
    (X, Y, Z) float32 ndarray

    Raises
    ------
    ValueError
        If the arrays are not 1-D of equal length, or an index is out of range or repeated.
    """
    shape3 = tuple(int(n) for n in shape)
    if len(shape3) != 3:
        raise ValueError(f"shape must be (X, Y, Z), got {tuple(shape)}")
    values = np.asarray(values)
    idx = np.asarray(idx)
    if values.ndim != 1 or idx.ndim != 1 or values.shape != idx.shape:
        raise ValueError(
            f"values and idx must be 1-D of equal length, got {values.shape} and {idx.shape}"
        )
    if idx.size and idx.dtype.kind not in "iu":
        raise ValueError(f"idx must be integer, got dtype {idx.dtype}")
    size = int(np.prod(shape3))
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= size:
            raise ValueError(f"idx out of range [0, {size}) for grid {shape3}: [{lo}, {hi}]")
        # Features are sorted by idx, so the cheap check usually settles uniqueness.
        if not np.all(np.diff(idx) > 0) and np.unique(idx).size != idx.size:
            raise ValueError("idx has repeated voxels")
    volume = np.full(size, fill, dtype=np.float32)
    volume[idx.astype(np.int64, copy=False)] = values
    return volume.reshape(shape3)


def write_map(
    path: str | os.PathLike[str],
    values: np.ndarray,
    idx: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray | Sequence[Sequence[float]],
    *,
    fill: float = np.nan,
) -> Path:
    """Scatter per-voxel values into a float32 volume and save it as NIfTI, atomically.

    Parameters
    ----------
    path : path-like
        Destination, ending in ``.nii.gz`` (compressed) or ``.nii``; parent folders are created.
    values : (n,) array-like of float
        One value per voxel, in the map's unit (OEF in percent, chi_nb in ppm, R2 in s^-1, ...).
    idx : (n,) array-like of int64
        C-order flat indices of the voxels in the ``(X, Y, Z)`` grid (the features' ``idx``).
    shape : (3,) sequence of int
        The subject's grid ``(X, Y, Z)``.
    affine : (4, 4) array-like
        Voxel-to-world (mm) transform; written as both qform and sform (code 1, scanner).
    fill : float
        Value outside the given voxels (NaN: background in viewers).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        On a bad path suffix, grid, affine, or values/idx (see :func:`scatter_map`).
    """
    path = Path(path)
    _nifti_suffix(path)  # refuses other names before any work
    shape3, aff = _check_grid(shape, affine)
    volume = scatter_map(values, idx, shape3, fill=fill)
    img = nib.Nifti1Image(volume, aff)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    # nibabel picks gzip from the file name, so the temporary name keeps the suffix.
    with atomic_path(path, keep_suffix=True) as tmp:
        nib.save(img, tmp)
    return path


def read_map(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 3-D map written by :func:`write_map` (or any 3-D NIfTI).

    Parameters
    ----------
    path : path-like
        A ``.nii.gz`` or ``.nii`` file.

    Returns
    -------
    (X, Y, Z) float32 ndarray
        The voxel values, with ``scl_slope``/``scl_inter`` applied.

    Raises
    ------
    OefrayError
        If the file is missing, unreadable, or not a 3-D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise OefrayError(path, "map file does not exist")
    try:
        img = nib.load(path)
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise OefrayError(path, "not a NIfTI-1/2 image")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise OefrayError(path, f"cannot read NIfTI map ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise OefrayError(path, f"expected a 3-D map, got shape {data.shape}")
    return data


def map_path(
    out_dir: str | os.PathLike[str], label: str, name: str, *, suffix: str = "pred"
) -> Path:
    """Where :func:`write_prediction_maps` puts map ``name`` of subject ``label``.

    ``<out_dir>/sub-<label>_desc-<MAP_DESC[name]>_<suffix>.nii.gz``
    """
    if name not in MAP_DESC:
        raise ValueError(f"unknown map {name!r}; expected one of {', '.join(MAP_DESC)}")
    return Path(out_dir) / f"sub-{label}_desc-{MAP_DESC[name]}_{suffix}.nii.gz"


def write_prediction_maps(
    out_dir: str | os.PathLike[str],
    label: str,
    predictions: Mapping[str, np.ndarray],
    idx: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray | Sequence[Sequence[float]],
    *,
    suffix: str = "pred",
) -> list[Path]:
    """Write one NIfTI map per predicted quantity of one subject.

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if missing).
    label : str
        Subject label without ``sub-``.
    predictions : mapping of str to (n,) array
        Per-voxel values keyed by map name (any of ``Y, v, R2, S0, chi_nb, OEF``); OEF in percent.
    idx : (n,) array of int64
        C-order flat indices of the voxels in the ``(X, Y, Z)`` grid.
    shape : (3,) sequence of int
        The subject's grid ``(X, Y, Z)`` (the manifest's ``shape``).
    affine : (4, 4) array-like
        The subject's voxel-to-world transform (the manifest's ``affine``).
    suffix : str
        Last name entity (``pred``; e.g. ``truth`` or ``err`` for other maps).

    Returns
    -------
    list of Path
        The written files, in :data:`MAP_DESC` order.

    Raises
    ------
    ValueError
        On an unknown map name, a bad label or suffix, or bad arrays.
    """
    unknown = [k for k in predictions if k not in MAP_DESC]
    if unknown:
        raise ValueError(f"unknown map(s) {unknown}; expected names among {', '.join(MAP_DESC)}")
    for what, text in (("label", label), ("suffix", suffix)):
        if not text or not text.isalnum():
            raise ValueError(f"{what} must be a non-empty alphanumeric BIDS value, got {text!r}")
    shape3, aff = _check_grid(shape, affine)
    idx = np.asarray(idx)
    return [
        write_map(
            map_path(out_dir, label, name, suffix=suffix), predictions[name], idx, shape3, aff
        )
        for name in MAP_DESC
        if name in predictions
    ]
