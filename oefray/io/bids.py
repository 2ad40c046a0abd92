"""BIDS datasets of multi-echo GRE magnitude, QSM and optional QQ ground truth (DESIGN.md §4).

What ``oefray simulate`` writes (other layouts that oefray reads, with sessions, ``acq``/``run``
entities, part-less or 4-D magnitudes and QSM from any pipeline: :mod:`oefray.io.scans`)::

    <dataset>/
      dataset_description.json, README, participants.tsv, participants.json, .bidsignore
      participants.tsv                       participant_id [, split, group]
      sub-<L>/anat/sub-<L>_echo-<k>_part-mag_MEGRE.nii.gz   k = 1..n, 3-D each, same grid
      sub-<L>/anat/sub-<L>_echo-<k>_part-mag_MEGRE.json     {"EchoTime": <seconds>, ...}
      derivatives/qsm/                       dataset_description.json (derivative), README
      derivatives/qsm/sub-<L>/anat/sub-<L>_Chimap.nii.gz            QSM, ppm (+ .json sidecar)
      derivatives/qsm/sub-<L>/anat/sub-<L>_desc-brain_mask.nii.gz   0/1 (+ .json sidecar)
      derivatives/qq/                        dataset_description.json, README, .bidsignore
      derivatives/qq/sub-<L>/anat/sub-<L>_R2map.nii.gz              optional ground truth:
      derivatives/qq/sub-<L>/anat/sub-<L>_S0map.nii.gz              R2, S0, chi_nb with BIDS
      derivatives/qq/sub-<L>/anat/sub-<L>_desc-nb_Chimap.nii.gz     suffixes, Y and v without
      derivatives/qq/sub-<L>/anat/sub-<L>_desc-<P>_qq.nii.gz        (P in Y, v; .bidsignore)

The ground truth is named by :mod:`oefray.io.names` (where a BIDS suffix fits and why Y and v
keep ``_qq``); the reader also takes the names oefray wrote before (``sub-<L>_desc-<P>_qq``,
``P`` in Y, v, R2, S0, chinb). What the writers write passes the BIDS validator: the raw
dataset, and each derivative validated on its own.

Writing uses nibabel; reading (a scan's slabs, once :mod:`oefray.io.scans` has found its files)
is lazy (``img.dataobj`` slabs along z) and accepts gzipped or plain ``.nii``, 3-D echoes or one
4-D file of them, any affine, float or integer storage with ``scl_slope``/``scl_inter``. Every
contract violation raises :class:`~oefray.errors.DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
import logging
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from oefray.errors import DatasetError
from oefray.io import names
from oefray.io.keys import ScanKey

#: Ground-truth parameter names as used in arrays/columns, and the ``desc-`` labels of their
#: names before R2, S0 and chi_nb took BIDS suffixes (file names: :func:`truth_stem`).
TRUTH_DESC: dict[str, str] = {"Y": "Y", "v": "v", "R2": "R2", "S0": "S0", "chi_nb": "chinb"}

#: The BIDS version the descriptions declare.
BIDS_VERSION = "1.10.0"

#: ``participants.json`` entries of the columns oefray writes (others: ``write_participants``).
PARTICIPANT_COLUMNS: dict[str, dict[str, object]] = {
    "participant_id": {"Description": "Unique participant identifier (sub-<label>)."},
    "split": {
        "Description": "The subject's role in oefray's experiments.",
        "Levels": {
            "train": "Training and validation subject.",
            "test": "Held-out test subject.",
        },
    },
}

#: The derivatives of a dataset (``derivatives/<pipeline>``) and what each holds.
DERIVATIVES: dict[str, str] = {
    "qsm": "QSM susceptibility maps (Chimap, ppm) and brain masks",
    "qq": "ground-truth QQ parameter maps",
}

_NIFTI_SUFFIXES = (".nii.gz", ".nii")

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_dataset_description(
    root: Path,
    name: str,
    *,
    generated_by: str | None = None,
    dataset_type: str | None = None,
    links: Mapping[str, str] | None = None,
) -> None:
    """Write ``dataset_description.json``: a raw dataset, or a derivative when ``generated_by``
    is given (``dataset_type`` overrides, e.g. a raw dataset that oefray generated).

    Parameters
    ----------
    root : Path
        Dataset root (created if missing).
    name : str
        ``Name``.
    generated_by : str, optional
        ``GeneratedBy[0].Name`` (``"oefray 0.1.0"``: name and version).
    dataset_type : {"raw", "derivative"}, optional
        ``DatasetType`` (default: derivative if ``generated_by`` is given, else raw).
    links : mapping of str to str, optional
        ``DatasetLinks``: the datasets the sidecars' BIDS URIs (``bids:<name>:<path>``) name,
        each also listed in ``SourceDatasets`` (e.g. ``{"raw": "../.."}`` for a derivative
        inside its raw dataset).
    """
    desc: dict[str, object] = {"Name": name, "BIDSVersion": BIDS_VERSION}
    desc["DatasetType"] = dataset_type or ("raw" if generated_by is None else "derivative")
    if generated_by is not None:
        desc["GeneratedBy"] = [{"Name": generated_by}]
    if links:
        desc["DatasetLinks"] = dict(links)
        desc["SourceDatasets"] = [{"URL": f"bids:{key}:"} for key in links]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")


def write_readme(root: Path, text: str) -> None:
    """Write the dataset's ``README`` (plain text)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README").write_text(text.rstrip("\n") + "\n")


def write_bidsignore(root: Path, patterns: Sequence[str]) -> None:
    """Write ``.bidsignore``: the files the BIDS validator is to skip, one pattern a line."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".bidsignore").write_text("".join(f"{p}\n" for p in patterns))


def write_participants(
    root: Path,
    rows: Sequence[Mapping[str, str]],
    descriptions: Mapping[str, Mapping[str, object]] | None = None,
) -> None:
    """Write ``participants.tsv`` and ``participants.json``.

    Parameters
    ----------
    root : Path
        Dataset root.
    rows : sequence of mapping
        One per subject, ``participant_id`` (``sub-<L>``) first; every row has the same columns.
    descriptions : mapping, optional
        ``participants.json`` entries of columns other than :data:`PARTICIPANT_COLUMNS` (or
        replacing one of those); a column described nowhere is left out of the JSON.
    """
    if not rows:
        raise ValueError("participants.tsv needs at least one row")
    columns = list(rows[0])
    with open(root / "participants.tsv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    known = {**PARTICIPANT_COLUMNS, **(descriptions or {})}
    meta = {c: dict(known[c]) for c in columns if c in known}
    (root / "participants.json").write_text(json.dumps(meta, indent=2) + "\n")


def write_derivative_datasets(root: Path, generated_by: str) -> None:
    """Describe the derivatives of :func:`write_subject` as BIDS datasets of their own.

    ``derivatives/qsm`` and ``derivatives/qq`` each get a ``dataset_description.json``
    (``DatasetType`` derivative, ``GeneratedBy``, ``DatasetLinks`` ``raw`` = ``../..``: the
    dataset the sidecars' ``bids:raw:`` URIs point into) and a ``README``; ``derivatives/qq``
    gets the ``.bidsignore`` of the ground-truth maps BIDS has no suffix for.
    """
    for pipeline, holds in DERIVATIVES.items():
        folder = root / "derivatives" / pipeline
        write_dataset_description(
            folder, f"{pipeline} maps", generated_by=generated_by, links={"raw": "../.."}
        )
        write_readme(folder, _derivative_readme(pipeline, holds, generated_by))
    write_bidsignore(root / "derivatives" / "qq", names.bidsignore_patterns(names.TRUTH_KIND))


def _derivative_readme(pipeline: str, holds: str, generated_by: str) -> str:
    paragraphs = [
        f"{holds[0].upper()}{holds[1:]} of the raw dataset two folders up (bids:raw:), written "
        f"by {generated_by}: one folder per subject (sub-<label>/anat), every image on the grid "
        "of the subject's magnitude echoes, with a JSON sidecar (Description, Units, "
        "SkullStripped; the masks: Type, Sources, SpatialReference).",
    ]
    if pipeline == "qsm":
        paragraphs.append(
            "sub-<label>_Chimap: magnetic susceptibility, ppm. sub-<label>_desc-brain_mask: "
            "1 in the brain, 0 elsewhere."
        )
    else:
        paragraphs.append(
            "R2, S0 and chi_nb use the BIDS suffixes of quantitative maps: sub-<label>_R2map "
            "(the tissue's R2 of the QQ model, 1/s), sub-<label>_S0map (signal at TE = 0, "
            "arbitrary units), sub-<label>_desc-nb_Chimap (non-blood susceptibility, ppm). BIDS "
            "has no suffix for venous oxygenation Y or venous blood volume fraction v: they are "
            "sub-<label>_desc-Y_qq and sub-<label>_desc-v_qq (fractions, 0 to 1), listed in "
            ".bidsignore so that the BIDS validator passes the dataset."
        )
    return "\n\n".join(textwrap.fill(p, 100) for p in paragraphs)


def truth_stem(label: str, name: str) -> str:
    """File name, without extension, of ground-truth map ``name`` (``derivatives/qq``)."""
    return names.map_stem(label, name, names.TRUTH_KIND)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, *, dtype: type) -> None:
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def write_subject(
    root: Path,
    label: str,
    affine: np.ndarray,
    magnitude: np.ndarray,
    te_s: Sequence[float],
    chi: np.ndarray,
    mask: np.ndarray,
    truth: Mapping[str, np.ndarray] | None = None,
    *,
    b0_t: float = 3.0,
    sidecar: Mapping[str, object] | None = None,
    suffix: str = ".nii.gz",
    labels: np.ndarray | None = None,
    label_names: Mapping[int, str] | None = None,
    lesion_codes: Sequence[int] = (),
    lesion: np.ndarray | None = None,
) -> None:
    """Write one subject following the data contract.

    Every image gets a JSON sidecar. The echoes': ``EchoTime``, ``EchoNumber``,
    ``MagneticFieldStrength`` and ``sidecar``. The QSM ``Chimap``'s and each ground-truth map's:
    ``Description``, ``Units``, ``SkullStripped`` (whether every voxel outside ``mask`` is 0).
    The mask's: ``Type`` ``Brain``, ``Sources`` and ``SpatialReference``, the BIDS URI
    ``bids:raw:`` of echo 1 (the derivatives' ``DatasetLinks``, :func:`write_derivative_datasets`).
    The ground truth is named by :func:`truth_stem`: ``R2map``, ``S0map`` and ``desc-nb_Chimap``
    for R2, S0 and chi_nb (BIDS suffixes), ``desc-Y_qq`` and ``desc-v_qq`` for Y and v (no
    suffix in BIDS; ``derivatives/qq/.bidsignore`` lists them).

    Parameters
    ----------
    root : Path
        Dataset root.
    label : str
        Subject label without ``sub-``.
    affine : (4, 4) array
        Voxel-to-world (mm) transform shared by every image of the subject.
    magnitude : (X, Y, Z, n_echoes) array
        Echo magnitudes, echo axis last; written one 3-D float32 file per echo.
    te_s : (n_echoes,) sequence of float
        Echo times in seconds (the ``EchoTime`` of each sidecar).
    chi : (X, Y, Z) array
        QSM susceptibility in ppm.
    mask : (X, Y, Z) array of bool
        Brain mask.
    truth : mapping of str to (X, Y, Z) array, optional
        Ground-truth maps keyed by ``Y, v, R2, S0, chi_nb``.
    b0_t : float
        Field strength written as ``MagneticFieldStrength``.
    sidecar : mapping, optional
        Extra sidecar entries of the echoes.
    suffix : {".nii.gz", ".nii"}
        Compressed or plain NIfTI.
    labels : (X, Y, Z) array of int, optional
        Tissue segmentation, written beside the ground truth as ``sub-<L>_dseg`` with its
        ``sub-<L>_dseg.tsv`` lookup (``index``, ``name``: ``label_names``) and, where a voxel's
        code is one of ``lesion_codes``, the lesion mask ``sub-<L>_label-lesion_mask``.
    label_names : mapping of int to str, optional
        The classes of ``labels`` by code.
    lesion_codes : sequence of int
        The codes of ``labels`` that are the lesion (an infarct core).
    lesion : (X, Y, Z) array of bool, optional
        The lesion mask itself (instead of ``lesion_codes``), e.g. one read from a dataset.
    """
    if suffix not in _NIFTI_SUFFIXES:
        raise ValueError(f"suffix must be one of {_NIFTI_SUFFIXES}, got {suffix!r}")
    if magnitude.ndim != 4 or magnitude.shape[-1] != len(te_s):
        raise ValueError(f"magnitude must be (X, Y, Z, {len(te_s)}), got {magnitude.shape}")
    _write_echoes(root, label, affine, magnitude, te_s, b0_t, sidecar or {}, suffix)
    outside = ~np.asarray(mask, dtype=bool)
    _write_qsm(root, label, affine, chi, mask, outside, suffix)
    if truth:
        _write_truth(root, label, affine, truth, outside, suffix)
    if labels is not None:
        if lesion is None:
            codes = np.asarray(list(lesion_codes), dtype=np.int64)
            lesion = np.isin(np.asarray(labels).astype(np.int64), codes)
        _write_labels(root, label, affine, labels, label_names or {}, lesion, suffix)


#: The ``dseg.tsv`` columns oefray writes and reads (BIDS: ``index`` and ``name`` required).
DSEG_COLUMNS: tuple[str, ...] = ("index", "name")


def _write_labels(root, label, affine, labels, label_names, lesion, suffix) -> None:
    """``derivatives/qq``: the segmentation (``_dseg`` + ``.tsv`` + ``.json``) and, if any voxel is
    lesion, the lesion mask (``_label-lesion_mask`` + ``.json``)."""
    qq = root / "derivatives" / "qq" / f"sub-{label}" / "anat"
    codes = np.asarray(labels).astype(np.uint8)
    _save(codes, affine, qq / f"sub-{label}_dseg{suffix}", dtype=np.uint8)
    rows = "".join(f"{code}\t{name}\n" for code, name in sorted(label_names.items()))
    (qq / f"sub-{label}_dseg.tsv").write_text("\t".join(DSEG_COLUMNS) + "\n" + rows)
    echo1 = f"bids:raw:sub-{label}/anat/sub-{label}_echo-1_part-mag_MEGRE{suffix}"
    _write_json(
        qq / f"sub-{label}_dseg.json",
        {
            "Description": "Tissue classes of the simulation's anatomy (dseg.tsv: the lookup).",
            "Sources": [echo1],
            "SpatialReference": echo1,
            "SkullStripped": False,
        },
    )
    lesion = np.asarray(lesion, dtype=bool)
    if lesion.any():
        _save(lesion, affine, qq / f"sub-{label}_label-lesion_mask{suffix}", dtype=np.uint8)
        _write_json(
            qq / f"sub-{label}_label-lesion_mask.json",
            {
                "Description": "Lesion mask (1 = infarct core, 0 elsewhere).",
                "Type": "Lesion",
                "Sources": [echo1],
                "SpatialReference": echo1,
            },
        )


def _write_echoes(root, label, affine, magnitude, te_s, b0_t, sidecar, suffix) -> None:
    """``sub-<L>/anat``: one 3-D float32 file per echo, each with its sidecar."""
    anat = root / f"sub-{label}" / "anat"
    for k, te in enumerate(te_s, start=1):
        stem = anat / f"sub-{label}_echo-{k}_part-mag_MEGRE"
        _save(magnitude[..., k - 1], affine, stem.with_name(stem.name + suffix), dtype=np.float32)
        meta: dict[str, object] = {
            "EchoTime": float(te),
            "EchoNumber": k,
            "MagneticFieldStrength": float(b0_t),
        }
        meta.update(sidecar)
        _write_json(stem.with_name(stem.name + ".json"), meta)


def _write_qsm(root, label, affine, chi, mask, outside, suffix) -> None:
    """``derivatives/qsm``: the Chimap and the brain mask, with their sidecars."""
    echo1 = f"bids:raw:sub-{label}/anat/sub-{label}_echo-1_part-mag_MEGRE{suffix}"
    qsm = root / "derivatives" / "qsm" / f"sub-{label}" / "anat"
    _save(chi, affine, qsm / f"sub-{label}_Chimap{suffix}", dtype=np.float32)
    _write_json(
        qsm / f"sub-{label}_Chimap.json",
        {
            "Description": "Quantitative susceptibility map (QSM), on the grid of the echoes.",
            "Units": "ppm",
            "SkullStripped": _skull_stripped(chi, outside),
        },
    )
    _save(mask, affine, qsm / f"sub-{label}_desc-brain_mask{suffix}", dtype=np.uint8)
    _write_json(
        qsm / f"sub-{label}_desc-brain_mask.json",
        {
            "Description": "Brain mask (1 = brain, 0 elsewhere), on the grid of the echoes.",
            "Type": "Brain",
            "Sources": [echo1],
            "SpatialReference": echo1,
        },
    )


def _write_truth(root, label, affine, truth, outside, suffix) -> None:
    """``derivatives/qq``: the ground-truth maps (:func:`truth_stem`), with their sidecars."""
    qq = root / "derivatives" / "qq" / f"sub-{label}" / "anat"
    for name in TRUTH_DESC:
        base = truth_stem(label, name)
        _save(truth[name], affine, qq / f"{base}{suffix}", dtype=np.float32)
        meta = names.map_sidecar(
            name, names.TRUTH_KIND, skull_stripped=_skull_stripped(truth[name], outside)
        )
        _write_json(qq / f"{base}.json", meta)


def _skull_stripped(data: np.ndarray, outside: np.ndarray) -> bool:
    """BIDS ``SkullStripped``: whether every voxel outside the brain is 0."""
    return not bool(np.any(np.asarray(data)[outside]))


def _write_json(path: Path, meta: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanFiles:
    """Where one scan's images are, validated against the contract (plain data, picklable).

    Found by :func:`oefray.io.scans.scan_subject`.

    Attributes
    ----------
    label : str
        Subject label without ``sub-``.
    echoes : tuple of str
        Magnitude files in acquisition order (echo 1 first); one 4-D file appears once per echo.
    te_s : tuple of float
        Echo times in seconds, one per echo.
    chi, mask : str
        QSM map and brain mask.
    truth : dict of str to str
        Ground-truth maps keyed by ``Y, v, R2, S0, chi_nb``; empty when absent.
    shape : tuple of int
        The (X, Y, Z) grid shared by every image.
    affine : tuple of tuple of float
        The 4x4 voxel-to-world transform of echo 1.
    n_brain : int
        Number of voxels in the mask.
    session : str
        Session label without ``ses-`` ("" when the subject has no sessions).
    entities : tuple of (str, str)
        The entities of the chosen acquisition other than sub, ses, echo and part (``acq``,
        ``run``, ...), in BIDS order.
    volumes : tuple of int
        For echoes in one 4-D file: each echo's volume (fourth index); empty when every echo is a
        3-D file.
    labels : dict of str to str
        Label images on the grid: ``tissue`` (a segmentation, ``_dseg``) and ``lesion`` (a
        ``label-lesion`` mask), each where found.
    label_names : dict of int to str
        The segmentation's class names by code (its ``dseg.tsv``; empty without one).
    """

    label: str
    echoes: tuple[str, ...]
    te_s: tuple[float, ...]
    chi: str
    mask: str
    truth: dict[str, str]
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    n_brain: int
    session: str = ""
    entities: tuple[tuple[str, str], ...] = ()
    volumes: tuple[int, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)

    @property
    def depth(self) -> int:
        return self.shape[2]

    @property
    def scan(self) -> ScanKey:
        return ScanKey(self.label, self.session)

    @property
    def key(self) -> str:
        """The scan key (:mod:`oefray.io.keys`): ``P3`` or ``P3_ses-01``."""
        return self.scan.key

    @property
    def prefix(self) -> str:
        """The BIDS entities of the scan's derived files: ``sub-P3_ses-01_acq-gre_run-1``."""
        return self.scan.name + "".join(f"_{k}-{v}" for k, v in self.entities)

    def volume(self, k: int) -> int | None:
        """The volume of echo ``k`` (0-based) in its 4-D file, or None for a 3-D file."""
        return self.volumes[k] if self.volumes else None


@dataclass(frozen=True)
class Slab:
    """Voxel data of the z planes ``z0:z1`` of one subject.

    Attributes
    ----------
    magnitude : (X, Y, z1-z0, n_echoes) float32 array
    chi : (X, Y, z1-z0) float32 array
    mask : (X, Y, z1-z0) bool array
    truth : dict of str to (X, Y, z1-z0) float32 arrays (empty when absent)
    labels : dict of str to (X, Y, z1-z0) int16 arrays (:attr:`ScanFiles.labels`)
    """

    z0: int
    z1: int
    magnitude: np.ndarray
    chi: np.ndarray
    mask: np.ndarray
    truth: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def load_image(path: str | Path, *, volumes: bool = False) -> nib.Nifti1Image:
    """Open a NIfTI image (header only) and check it holds one real-valued 3-D volume, or, with
    ``volumes``, a 4-D stack of them (a multi-echo file).

    Raises
    ------
    DatasetError
        Naming the file: unreadable, not NIfTI, complex, or of another dimensionality.
    """
    path = Path(path)
    try:
        img = nib.load(path)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(path, f"cannot read NIfTI header ({exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DatasetError(path, "not a NIfTI-1/2 image")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 and not (volumes and len(shape) == 4):
        raise DatasetError(path, f"expected a 3-D volume, got shape {tuple(img.shape)}")
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise DatasetError(path, f"complex-valued image ({dtype}); oefray reads real volumes")
    if dtype.kind not in "biuf":
        raise DatasetError(path, f"unsupported NIfTI data type {dtype}; expected real numbers")
    return img


def grid_of(img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    """An image's (X, Y, Z) grid and its voxel-to-world affine."""
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)  # type: ignore[return-value]


def check_grid(path: str | Path, img: nib.Nifti1Image, ref_path: str | Path, shape, affine) -> None:
    """Raise a :class:`DatasetError` naming ``path`` unless ``img`` is on the grid of ``ref_path``."""
    s, a = grid_of(img)
    if s != shape:
        raise DatasetError(path, f"shape {s} differs from {Path(ref_path).name}'s {shape}")
    if not np.allclose(a, affine, rtol=0, atol=1e-3):
        raise DatasetError(path, f"grid (affine) differs from {Path(ref_path).name}'s")


#: A mask voxel is brain where its value is at least this: every nonzero voxel of a 0/1 (or
#: 0/255) mask; a soft (probabilistic) mask is cut at one half, with a warning naming the file.
MASK_THRESHOLD = 0.5


def read_mask(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a brain mask as a bool array (see :data:`MASK_THRESHOLD`); warns, naming the file,
    when it holds values other than 0 and 1."""
    path = Path(path)
    img = load_image(path)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(
            path, f"cannot read image data, file corrupt or truncated ({exc})"
        ) from None
    data = data.reshape(data.shape[:3])
    if not np.all(np.isfinite(data)):
        raise DatasetError(path, "mask contains NaN or inf")
    values = np.unique(data)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        log.warning(
            "%s: mask holds values other than 0 and 1 (%s): brain = value >= %g",
            path,
            shown,
            MASK_THRESHOLD,
        )
    return data >= MASK_THRESHOLD


def read_participants(root: Path) -> dict[str, dict[str, str]]:
    """``participants.tsv`` rows keyed by label (without ``sub-``); empty if the file is absent."""
    path = Path(root) / "participants.tsv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if reader.fieldnames is None or "participant_id" not in reader.fieldnames:
            raise DatasetError(path, "no participant_id column")
        rows = {}
        for row in reader:
            pid = row["participant_id"] or ""
            rows[pid.removeprefix("sub-")] = {k: v for k, v in row.items() if k is not None}
    return rows


def _read_planes(path: str, z0: int, z1: int, volume: int | None = None) -> np.ndarray:
    """Planes ``z0:z1`` of a 3-D image, or of volume ``volume`` of a 4-D one."""
    img = load_image(Path(path), volumes=volume is not None)
    try:
        if img.ndim == 3:
            data = img.dataobj[:, :, z0:z1]
        else:
            data = img.dataobj[:, :, z0:z1, 0 if volume is None else volume]
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(
            path, f"cannot read image data, file corrupt or truncated ({exc})"
        ) from None
    return np.asarray(data, dtype=np.float32)


def read_slab(subject: ScanFiles, z0: int, z1: int) -> Slab:
    """Read the z planes ``z0:z1`` of every image of a subject, lazily from ``img.dataobj``.

    Integer storage is scaled by ``scl_slope``/``scl_inter`` (nibabel) and returned as float32.
    """
    if not 0 <= z0 < z1 <= subject.depth:
        raise ValueError(f"slab {z0}:{z1} outside 0:{subject.depth}")
    x, y = subject.shape[:2]
    magnitude = np.empty((x, y, z1 - z0, len(subject.echoes)), dtype=np.float32)
    for k, path in enumerate(subject.echoes):
        magnitude[..., k] = _read_planes(path, z0, z1, subject.volume(k))
    return Slab(
        z0=z0,
        z1=z1,
        magnitude=magnitude,
        chi=_read_planes(subject.chi, z0, z1),
        mask=_read_planes(subject.mask, z0, z1) >= MASK_THRESHOLD,
        truth={name: _read_planes(p, z0, z1) for name, p in subject.truth.items()},
        labels={name: label_values(_read_planes(p, z0, z1)) for name, p in subject.labels.items()},
    )


@dataclass(frozen=True)
class BrainVoxels:
    """The brain voxels of the z planes ``z0:z1`` of one subject, gathered in C order.

    Attributes
    ----------
    mask : (X, Y, z1-z0) bool array
        Which voxels of the slab are brain; ``np.nonzero(mask)`` gives their coordinates.
    signal : (n, n_echoes) float32 array
        Magnitude of every brain voxel at each echo.
    chi : (n,) float32 array
    truth : dict of str to (n,) float32 arrays (empty when absent)
    labels : dict of str to (n,) int16 arrays (:attr:`ScanFiles.labels`)
    """

    z0: int
    z1: int
    mask: np.ndarray
    signal: np.ndarray
    chi: np.ndarray
    truth: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def read_brain_voxels(subject: ScanFiles, z0: int, z1: int) -> BrainVoxels:
    """Like :func:`read_slab`, but keep only the brain voxels, gathering each image as it is read
    (no (X, Y, Z, n_echoes) array is built; memory is one slab plane set plus the brain voxels)."""
    if not 0 <= z0 < z1 <= subject.depth:
        raise ValueError(f"slab {z0}:{z1} outside 0:{subject.depth}")
    mask = _read_planes(subject.mask, z0, z1) >= MASK_THRESHOLD
    signal = np.empty((int(mask.sum()), len(subject.echoes)), dtype=np.float32)
    for k, path in enumerate(subject.echoes):
        signal[:, k] = _read_planes(path, z0, z1, subject.volume(k))[mask]
    return BrainVoxels(
        z0=z0,
        z1=z1,
        mask=mask,
        signal=signal,
        chi=_read_planes(subject.chi, z0, z1)[mask],
        truth={name: _read_planes(p, z0, z1)[mask] for name, p in subject.truth.items()},
        labels={
            name: label_values(_read_planes(p, z0, z1)[mask]) for name, p in subject.labels.items()
        },
    )


def label_values(planes: np.ndarray) -> np.ndarray:
    """A label image's values as int16 codes (stored as floats or integers; rounded)."""
    return np.rint(np.nan_to_num(planes, nan=0.0)).astype(np.int16)
