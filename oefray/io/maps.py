"""Parameter maps as NIfTI volumes on a subject's grid (DESIGN.md §5, "Maps").

Predictions live per brain voxel, identified by ``idx``, the C-order flat index into the subject's
``(X, Y, Z)`` grid (the features' ``idx`` column). Writing scatters them into a float32 volume that
is ``fill`` (NaN by default) outside the given voxels, so any NIfTI viewer shows the brain on an
empty background. The maps of one subject, of one kind (``pred``, ``ensmean``, ...), are named
by :mod:`oefray.io.names` (BIDS suffixes where one fits), each with a JSON sidecar::

    <out_dir>/sub-<L>_desc-<kind>_R2map.nii.gz   sub-<L>_desc-<kind>_S0map.nii.gz
    <out_dir>/sub-<L>_desc-nb<kind>_Chimap.nii.gz
    <out_dir>/sub-<L>_desc-<P>_<kind>.nii.gz     P in Y, v, OEF (no BIDS suffix: .bidsignore)

``oefray predict`` writes them as a BIDS derivative, ``<out>/sub-<L>[/ses-<S>]/anat/``
(:func:`subject_dir`), named with the scan's entities (``sub-<L>_ses-<S>_run-1_desc-...``).
Files are written to a temporary name and renamed into place, so a reader never sees half a map.
"""

from __future__ import annotations

import json
import os
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from oefray.errors import OefrayError
from oefray.io import names
from oefray.io.files import atomic_path, write_text_atomic
from oefray.io.keys import parse_key

#: Map names as used in arrays/columns, and the ``desc-`` labels of their names before they took
#: BIDS suffixes (:data:`oefray.io.names.LEGACY_DESC`; OEF is in percent).
MAP_DESC: dict[str, str] = names.LEGACY_DESC

#: What the sidecar of a map of :func:`write_prediction_maps` says of the voxels outside the brain.
_OUTSIDE = "Voxels without a value (outside the brain, or not predicted) are NaN."

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
    """Where :func:`write_prediction_maps` puts map ``name`` of kind ``suffix`` of ``label``.

    ``<out_dir>/<oefray.io.names.map_stem(label, name, suffix)>.nii.gz``, e.g.
    ``sub-P6_desc-pred_R2map.nii.gz`` or ``sub-P6_desc-OEF_pred.nii.gz``.

    Raises
    ------
    ValueError
        On an unknown map name or a kind that is not alphanumeric.
    """
    return Path(out_dir) / (names.map_stem(label, name, suffix) + ".nii.gz")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar of a map: the same name with ``.json`` for ``.nii.gz``/``.nii``."""
    path = Path(path)
    return path.with_name(path.name[: -len(_nifti_suffix(path))] + ".json")


def subject_dir(root: str | os.PathLike[str], key: str) -> Path:
    """The folder of a scan's maps in a BIDS derivative dataset: ``<root>/sub-<L>/anat``, or
    ``<root>/sub-<L>/ses-<S>/anat`` (``key``: a scan key of :mod:`oefray.io.keys`)."""
    return Path(root) / parse_key(key).bids_dir


def write_named_map(
    out_dir: str | os.PathLike[str],
    label: str,
    name: str,
    values: np.ndarray,
    idx: np.ndarray,
    shape: Sequence[int],
    affine: np.ndarray | Sequence[Sequence[float]],
    *,
    kind: str = "pred",
    what: str | None = None,
) -> Path:
    """Write map ``name`` of kind ``kind`` at :func:`map_path`, NaN outside ``idx``, with its
    JSON sidecar (:func:`oefray.io.names.map_sidecar`: ``SkullStripped`` true, since only the
    given voxels carry a value; ``what`` made the map, by default the kind's description).

    Returns
    -------
    Path
        The written map (its sidecar is :func:`sidecar_path` of it).

    Raises
    ------
    ValueError
        On an unknown map name, a bad label or kind, or bad arrays (see :func:`write_map`).
    """
    names.check_label(label)
    if not kind or not kind.isalnum():
        raise ValueError(f"suffix must be a non-empty alphanumeric BIDS value, got {kind!r}")
    path = map_path(out_dir, label, name, suffix=kind)
    meta = names.map_sidecar(name, kind, skull_stripped=True, note=_OUTSIDE, what=what)
    write_map(path, values, idx, shape, affine)
    write_text_atomic(sidecar_path(path), json.dumps(meta, indent=2) + "\n")
    return path


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
    """Write one NIfTI map, with its JSON sidecar, per predicted quantity of one subject.

    File names follow :mod:`oefray.io.names`: the BIDS suffixes ``R2map``, ``S0map`` and
    ``Chimap`` (``desc-nb<kind>``) for R2, S0 and chi_nb, and ``desc-<P>_<kind>`` for Y, v and
    OEF, which BIDS has no suffix for (a dataset of them lists
    :func:`oefray.io.names.bidsignore_patterns` in its ``.bidsignore``).

    Parameters
    ----------
    out_dir : path-like
        Output folder (created if missing); in a BIDS derivative, :func:`subject_dir`.
    label : str
        Subject label without ``sub-``, with the scan's other entities where it has them
        (``P6_ses-01_run-1``; :func:`oefray.io.names.map_stem`).
    predictions : mapping of str to (n,) array
        Per-voxel values keyed by map name (any of ``Y, v, R2, S0, chi_nb, OEF``); OEF in percent.
    idx : (n,) array of int64
        C-order flat indices of the voxels in the ``(X, Y, Z)`` grid.
    shape : (3,) sequence of int
        The subject's grid ``(X, Y, Z)`` (the manifest's ``shape``).
    affine : (4, 4) array-like
        The subject's voxel-to-world transform (the manifest's ``affine``).
    suffix : str
        The kind of the maps (``pred``; e.g. ``truth`` or ``err`` for other maps).

    Returns
    -------
    list of Path
        The written maps (not their sidecars), in :data:`MAP_DESC` order.

    Raises
    ------
    ValueError
        On an unknown map name, a bad label or suffix, or bad arrays.
    """
    unknown = [k for k in predictions if k not in MAP_DESC]
    if unknown:
        raise ValueError(f"unknown map(s) {unknown}; expected names among {', '.join(MAP_DESC)}")
    names.check_label(label)
    if not suffix or not suffix.isalnum():
        raise ValueError(f"suffix must be a non-empty alphanumeric BIDS value, got {suffix!r}")
    shape3, aff = _check_grid(shape, affine)
    idx = np.asarray(idx)
    return [
        write_named_map(out_dir, label, name, predictions[name], idx, shape3, aff, kind=suffix)
        for name in MAP_DESC
        if name in predictions
    ]


def describe_maps_dataset(
    folder: str | os.PathLike[str],
    about: str,
    *,
    kind: str = "pred",
    other_files: Sequence[str] = (),
) -> None:
    """Write the ``README`` and ``.bidsignore`` of a BIDS derivative of maps of ``kind`` laid
    out by :func:`subject_dir` (its ``dataset_description.json``:
    :func:`oefray.io.outputs.mark_output`).

    Parameters
    ----------
    folder : path-like
        The dataset root.
    about : str
        The README's first paragraph: what the maps were made by and from.
    kind : str
        The kind of the maps (:func:`write_prediction_maps`'s ``suffix``).
    other_files : sequence of str
        Files of the folder that are not BIDS (``results.json``, tables): ignored too.
    """
    folder = Path(folder)
    naming = (
        "One folder per subject (sub-<label>/anat), each map on the grid of the subject's input "
        "images, NaN where a voxel has no value (outside the brain), with a JSON sidecar "
        "(Description, Units, SkullStripped). R2, S0 and chi_nb use the BIDS suffixes of "
        f"quantitative maps: sub-<label>_desc-{kind}_R2map (1/s), sub-<label>_desc-{kind}_S0map "
        f"(arbitrary units), sub-<label>_desc-nb{kind}_Chimap (non-blood susceptibility, ppm). "
        "BIDS has no suffix for venous oxygenation Y, venous blood volume fraction v or OEF: "
        f"they are sub-<label>_desc-Y_{kind}, sub-<label>_desc-v_{kind} (fractions, 0 to 1) and "
        f"sub-<label>_desc-OEF_{kind} (percent), listed in .bidsignore so that the BIDS "
        "validator passes the dataset."
    )
    text = "\n\n".join(textwrap.fill(p, 100) for p in (about, naming))
    write_text_atomic(folder / "README", text + "\n")
    ignored = [*other_files, *names.bidsignore_patterns(kind)]
    write_text_atomic(folder / ".bidsignore", "".join(f"{p}\n" for p in ignored))
