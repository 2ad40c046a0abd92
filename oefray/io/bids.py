"""BIDS datasets of multi-echo GRE magnitude, QSM and optional QQ ground truth (DESIGN.md §4).

Layout::

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

Writing uses nibabel; reading is lazy (``img.dataobj`` slabs along z) and accepts gzipped or plain
``.nii``, any affine, float or integer storage with ``scl_slope``/``scl_inter``. Every contract
violation raises :class:`~oefray.errors.DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import textwrap
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from oefray.errors import DatasetError
from oefray.io import names

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

_ECHO_RE = re.compile(
    r"^sub-(?P<label>[A-Za-z0-9]+)_echo-(?P<echo>\d+)_part-mag_MEGRE\.nii(\.gz)?$"
)
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
    """
    if suffix not in _NIFTI_SUFFIXES:
        raise ValueError(f"suffix must be one of {_NIFTI_SUFFIXES}, got {suffix!r}")
    if magnitude.ndim != 4 or magnitude.shape[-1] != len(te_s):
        raise ValueError(f"magnitude must be (X, Y, Z, {len(te_s)}), got {magnitude.shape}")
    anat = root / f"sub-{label}" / "anat"
    for k, te in enumerate(te_s, start=1):
        stem = anat / f"sub-{label}_echo-{k}_part-mag_MEGRE"
        _save(magnitude[..., k - 1], affine, stem.with_name(stem.name + suffix), dtype=np.float32)
        meta: dict[str, object] = {
            "EchoTime": float(te),
            "EchoNumber": k,
            "MagneticFieldStrength": float(b0_t),
        }
        meta.update(sidecar or {})
        _write_json(stem.with_name(stem.name + ".json"), meta)
    outside = ~np.asarray(mask, dtype=bool)
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
    if truth:
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
class SubjectFiles:
    """Where one subject's images are, validated against the contract (plain data, picklable).

    Attributes
    ----------
    label : str
        Subject label without ``sub-``.
    echoes : tuple of str
        Magnitude files in acquisition order (echo-1 first).
    te_s : tuple of float
        Echo times in seconds, one per echo file.
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

    @property
    def depth(self) -> int:
        return self.shape[2]


@dataclass(frozen=True)
class Slab:
    """Voxel data of the z planes ``z0:z1`` of one subject.

    Attributes
    ----------
    magnitude : (X, Y, z1-z0, n_echoes) float32 array
    chi : (X, Y, z1-z0) float32 array
    mask : (X, Y, z1-z0) bool array
    truth : dict of str to (X, Y, z1-z0) float32 arrays (empty when absent)
    """

    z0: int
    z1: int
    magnitude: np.ndarray
    chi: np.ndarray
    mask: np.ndarray
    truth: dict[str, np.ndarray]


def _nifti(path: Path, stem: str) -> Path | None:
    """The ``.nii.gz`` or ``.nii`` file with this stem, if any (error if both exist)."""
    found = [path / (stem + s) for s in _NIFTI_SUFFIXES if (path / (stem + s)).is_file()]
    if len(found) > 1:
        raise DatasetError(found[0], f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _truth_file(qq_dir: Path, label: str, name: str) -> Path | None:
    """Ground-truth map ``name``: named by :func:`truth_stem`, or as oefray named it before
    (``sub-<L>_desc-<P>_qq``); error if both exist."""
    stems = dict.fromkeys(
        (truth_stem(label, name), names.legacy_stem(label, name, names.TRUTH_KIND))
    )
    found = [f for f in (_nifti(qq_dir, stem) for stem in stems) if f is not None]
    if len(found) > 1:
        raise DatasetError(found[0], f"both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _load(path: Path) -> nib.Nifti1Image:
    try:
        img = nib.load(path)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(path, f"cannot read NIfTI header ({exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DatasetError(path, "not a NIfTI-1/2 image")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise DatasetError(path, f"expected a 3-D volume, got shape {tuple(img.shape)}")
    dtype = img.get_data_dtype()
    if dtype.kind == "c":
        raise DatasetError(path, f"complex-valued image ({dtype}); oefray reads real volumes")
    if dtype.kind not in "biuf":
        raise DatasetError(path, f"unsupported NIfTI data type {dtype}; expected real numbers")
    return img


def _grid(img: nib.Nifti1Image) -> tuple[tuple[int, int, int], np.ndarray]:
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)  # type: ignore[return-value]


def _check_grid(path: Path, img: nib.Nifti1Image, ref_path: Path, shape, affine) -> None:
    s, a = _grid(img)
    if s != shape:
        raise DatasetError(path, f"shape {s} differs from {Path(ref_path).name}'s {shape}")
    if not np.allclose(a, affine, rtol=0, atol=1e-3):
        raise DatasetError(path, f"grid (affine) differs from {Path(ref_path).name}'s")


def _echo_time(sidecar: Path) -> float:
    if not sidecar.is_file():
        raise DatasetError(sidecar, "JSON sidecar is missing (it must give EchoTime in seconds)")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(sidecar, f"malformed JSON ({exc})") from None
    if not isinstance(meta, dict) or "EchoTime" not in meta:
        raise DatasetError(sidecar, "no EchoTime")
    te = meta["EchoTime"]
    if isinstance(te, bool) or not isinstance(te, int | float) or not np.isfinite(te) or te <= 0:
        raise DatasetError(sidecar, f"EchoTime must be a positive number of seconds, got {te!r}")
    if te > 1.0:
        raise DatasetError(sidecar, f"EchoTime {te} looks like milliseconds; BIDS uses seconds")
    return float(te)


#: A mask voxel is brain where its value is at least this: every nonzero voxel of a 0/1 (or
#: 0/255) mask; a soft (probabilistic) mask is cut at one half, with a warning naming the file.
MASK_THRESHOLD = 0.5


def read_mask(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read a brain mask as a bool array (see :data:`MASK_THRESHOLD`); warns, naming the file,
    when it holds values other than 0 and 1."""
    path = Path(path)
    img = _load(path)
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


def scan_subject(root: Path, label: str) -> SubjectFiles:
    """Locate and validate one subject's files (headers, sidecars, grids, mask).

    Reads every header, every sidecar and the mask; image data is read later, slab by slab.

    Raises
    ------
    DatasetError
        On any contract violation, naming the offending file.
    """
    anat = root / f"sub-{label}" / "anat"
    if not anat.is_dir():
        raise DatasetError(anat, "missing anat folder")
    echoes: dict[int, Path] = {}
    for p in anat.iterdir():
        m = _ECHO_RE.match(p.name)
        if m is None or m["label"] != label:
            continue
        k = int(m["echo"])
        if k in echoes:
            raise DatasetError(p, f"echo {k} is present twice ({echoes[k].name})")
        echoes[k] = p
    if len(echoes) < 2:
        raise DatasetError(
            anat,
            f"found {len(echoes)} magnitude echo(es) (*_echo-<k>_part-mag_MEGRE.nii[.gz]); need at least 2",
        )
    order = sorted(echoes)
    if order != list(range(1, len(order) + 1)):
        raise DatasetError(anat, f"echo numbers must run 1..n without gaps, got {order}")
    files = [echoes[k] for k in order]
    te = []
    for f in files:
        sidecar = f.with_name(f.name.split(".nii")[0] + ".json")
        te.append(_echo_time(sidecar))
    if len(set(te)) != len(te):
        raise DatasetError(anat, f"duplicate echo times {te}")
    ref = _load(files[0])
    shape, affine = _grid(ref)
    for f in files[1:]:
        _check_grid(f, _load(f), files[0], shape, affine)
    qsm_dir = root / "derivatives" / "qsm" / f"sub-{label}" / "anat"
    chi = _nifti(qsm_dir, f"sub-{label}_Chimap")
    if chi is None:
        raise DatasetError(qsm_dir / f"sub-{label}_Chimap.nii.gz", "QSM map is missing")
    _check_grid(chi, _load(chi), files[0], shape, affine)
    mask_path = _nifti(qsm_dir, f"sub-{label}_desc-brain_mask")
    if mask_path is None:
        raise DatasetError(qsm_dir / f"sub-{label}_desc-brain_mask.nii.gz", "brain mask is missing")
    _check_grid(mask_path, _load(mask_path), files[0], shape, affine)
    n_brain = int(read_mask(mask_path).sum())
    if n_brain == 0:
        raise DatasetError(mask_path, "brain mask is empty")
    qq_dir = root / "derivatives" / "qq" / f"sub-{label}" / "anat"
    truth: dict[str, str] = {}
    for name in TRUTH_DESC:
        found = _truth_file(qq_dir, label, name)
        if found is not None:
            _check_grid(found, _load(found), files[0], shape, affine)
            truth[name] = str(found)
    if truth and len(truth) != len(TRUTH_DESC):
        missing = sorted(set(TRUTH_DESC) - set(truth))
        raise DatasetError(qq_dir, f"ground truth is incomplete, missing {missing}")
    return SubjectFiles(
        label=label,
        echoes=tuple(str(f) for f in files),
        te_s=tuple(te),
        chi=str(chi),
        mask=str(mask_path),
        truth=truth,
        shape=shape,
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        n_brain=n_brain,
    )


@dataclass(frozen=True)
class DatasetIndex:
    """The subjects of a dataset: those that validate, and one error line for each that doesn't."""

    root: Path
    name: str
    subjects: dict[str, SubjectFiles]
    errors: dict[str, DatasetError]
    split: dict[str, str]


def list_subjects(root: Path) -> list[str]:
    """Subject labels of a BIDS dataset (``sub-*`` folders), in natural order.

    Raises
    ------
    DatasetError
        If ``root`` is not a BIDS dataset or holds no subjects.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a folder")
    if not (root / "dataset_description.json").is_file():
        raise DatasetError(root, "not a BIDS dataset (no dataset_description.json)")
    labels = [
        p.name[4:]
        for p in root.iterdir()
        if p.is_dir() and re.fullmatch(r"sub-[A-Za-z0-9]+", p.name)
    ]
    if not labels:
        raise DatasetError(root, "BIDS dataset has no sub-<label> folders")
    return sorted(labels, key=natural_key)


def natural_key(label: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


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


def scan_dataset(root: str | Path, subjects: Sequence[str] | None = None) -> DatasetIndex:
    """Validate a dataset, subject by subject.

    Parameters
    ----------
    root : path
        Dataset root.
    subjects : sequence of str, optional
        Labels to scan (default: every ``sub-*`` folder).

    Returns
    -------
    DatasetIndex
        Valid subjects, and the error of each invalid one (so ``--keep-going`` can go on).

    Raises
    ------
    DatasetError
        If the folder itself is not a BIDS dataset, or a requested subject does not exist.
    """
    root = Path(root).resolve()
    labels = labels_on_disk = list_subjects(root)
    if subjects is not None:
        unknown = [s for s in subjects if s not in labels]
        if unknown:
            raise DatasetError(root, f"no such subject(s): {', '.join(unknown)}")
        labels = list(subjects)
    try:
        name = str(
            json.loads((root / "dataset_description.json").read_text()).get("Name", root.name)
        )
    except (json.JSONDecodeError, AttributeError) as exc:
        raise DatasetError(root / "dataset_description.json", f"malformed JSON ({exc})") from None
    participants = read_participants(root)
    for label in sorted(set(participants) - set(labels_on_disk), key=natural_key):
        log.warning(
            "%s: sub-%s is listed but has no folder; it is left out",
            root / "participants.tsv",
            label,
        )
    found: dict[str, SubjectFiles] = {}
    errors: dict[str, DatasetError] = {}
    for label in labels:
        try:
            found[label] = scan_subject(root, label)
        except DatasetError as exc:
            errors[label] = exc
    split = {s: participants.get(s, {}).get("split", "") for s in labels}
    return DatasetIndex(root=root, name=name, subjects=found, errors=errors, split=split)


def _read_planes(path: str, z0: int, z1: int) -> np.ndarray:
    img = _load(Path(path))
    try:
        data = img.dataobj[:, :, z0:z1] if img.ndim == 3 else img.dataobj[:, :, z0:z1, 0]
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DatasetError(
            path, f"cannot read image data, file corrupt or truncated ({exc})"
        ) from None
    return np.asarray(data, dtype=np.float32)


def read_slab(subject: SubjectFiles, z0: int, z1: int) -> Slab:
    """Read the z planes ``z0:z1`` of every image of a subject, lazily from ``img.dataobj``.

    Integer storage is scaled by ``scl_slope``/``scl_inter`` (nibabel) and returned as float32.
    """
    if not 0 <= z0 < z1 <= subject.depth:
        raise ValueError(f"slab {z0}:{z1} outside 0:{subject.depth}")
    x, y = subject.shape[:2]
    magnitude = np.empty((x, y, z1 - z0, len(subject.echoes)), dtype=np.float32)
    for k, path in enumerate(subject.echoes):
        magnitude[..., k] = _read_planes(path, z0, z1)
    return Slab(
        z0=z0,
        z1=z1,
        magnitude=magnitude,
        chi=_read_planes(subject.chi, z0, z1),
        mask=_read_planes(subject.mask, z0, z1) >= MASK_THRESHOLD,
        truth={name: _read_planes(p, z0, z1) for name, p in subject.truth.items()},
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
    """

    z0: int
    z1: int
    mask: np.ndarray
    signal: np.ndarray
    chi: np.ndarray
    truth: dict[str, np.ndarray]


def read_brain_voxels(subject: SubjectFiles, z0: int, z1: int) -> BrainVoxels:
    """Like :func:`read_slab`, but keep only the brain voxels, gathering each image as it is read
    (no (X, Y, Z, n_echoes) array is built; memory is one slab plane set plus the brain voxels)."""
    if not 0 <= z0 < z1 <= subject.depth:
        raise ValueError(f"slab {z0}:{z1} outside 0:{subject.depth}")
    mask = _read_planes(subject.mask, z0, z1) >= MASK_THRESHOLD
    signal = np.empty((int(mask.sum()), len(subject.echoes)), dtype=np.float32)
    for k, path in enumerate(subject.echoes):
        signal[:, k] = _read_planes(path, z0, z1)[mask]
    return BrainVoxels(
        z0=z0,
        z1=z1,
        mask=mask,
        signal=signal,
        chi=_read_planes(subject.chi, z0, z1)[mask],
        truth={name: _read_planes(p, z0, z1)[mask] for name, p in subject.truth.items()},
    )
