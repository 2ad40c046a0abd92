"""Finding the scans of a BIDS dataset: which files are a scan's echoes, QSM, mask, ground truth.

File names are read by their BIDS entities, parsed by ``bids2table`` (``parse_bids_entities``;
chosen over pybids and ancpbids by ``benchmarks/bids_index.py``), and sidecars are read with
BIDS inheritance (:func:`sidecar_metadata`: a top-level ``*_MEGRE.json`` applies to every
subject, a subject-level one to its sessions, the file's own sidecar wins).

A **scan** is a subject's mGRE acquisition in one session (:mod:`oefray.io.keys`): the images in
``sub-<L>/anat/`` or, when the subject has session folders, in each ``sub-<L>/ses-<S>/anat/``.

Magnitude echoes (``_MEGRE`` NIfTI files of the scan's folder):

* ``part-mag`` files, or files without ``part-`` when the acquisition has no phase; ``part-phase``
  (``real``, ``imag``) files are ignored on purpose (logged at ``--verbose``).
* one 3-D file per echo (``echo-<k>``, k = 1..n), or **one 4-D file** holding every echo along
  its fourth axis, as converters write it (no ``echo-`` entity; the sidecar's ``EchoTime`` is a
  list, one value per volume). A 4-D ``.nii`` is read as lazily as 3-D files; a 4-D
  ``.nii.gz`` is streamed once per echo, so it costs ``n(n+1)/2`` volumes of inflating instead
  of ``n`` (splitting it, or ``.nii``, reads faster).
* several acquisitions of one scan (other ``acq``, ``run``, ``rec``, ... entities): ``acq`` and
  ``run`` of :class:`ScanSelection` choose; left open, the scan is refused with one line that
  lists them.

QSM, mask and ground truth come from the derivative datasets under ``derivatives/``, matched to
the scan by entities (``sub``, ``ses``, and any other entity the derivative's file carries must
equal the scan's: QSMxT keeps ``acq``/``run``, many pipelines drop them):

* QSM: a ``_Chimap`` without ``desc-`` (a ``desc-nb_Chimap`` is oefray's non-blood
  susceptibility, not a QSM), from the derivative :attr:`ScanSelection.qsm` names, or else the
  one derivative that has such a file for the scan (several: one line listing them).
* mask: ``desc-brain_mask``, else ``_mask`` without ``desc-`` (QSMxT, qsm-forward), from
  :attr:`ScanSelection.mask` or else the QSM's derivative.
* ground truth (optional): the maps named by :mod:`oefray.io.names` in the derivative
  :attr:`ScanSelection.truth` (``qq`` by default; absent is fine unless named explicitly).
* labels (optional): a tissue segmentation ``_dseg`` (class names from its ``dseg.tsv``) and a
  lesion mask ``_label-lesion_mask`` (as a clinician draws one), from :attr:`ScanSelection.dseg`
  and :attr:`ScanSelection.lesions` or else the one derivative that has such a file.

A scan that cannot be read is an error naming its folder and what was found there: the near
misses (a wrong entity, a 4-D file among 3-D ones, a missing sidecar ...), each with the reason it
was skipped, so that one line says what to fix.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray.errors import DatasetError
from oefray.io import names
from oefray.io.bids import (
    TRUTH_DESC,
    ScanFiles,
    check_grid,
    grid_of,
    load_image,
    read_mask,
    read_participants,
)
from oefray.io.keys import LABEL, ScanKey, natural_key

log = logging.getLogger(__name__)

#: BIDS entity order (the schema's, for the entities an mGRE file name may carry).
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt",
    "part", "chunk",
)  # fmt: skip
#: Entities that tell one acquisition of a scan from another (all but sub, ses, echo, part).
_ACQUISITION_SKIP = frozenset({"sub", "ses", "echo", "part", "datatype", "suffix", "ext"})
_NIFTI_EXTS = (".nii", ".nii.gz")
_PHASE_PARTS = frozenset({"phase", "real", "imag"})
#: Most near-miss files named in one error line.
MAX_SEEN = 8


@dataclass(frozen=True)
class ScanSelection:
    """Which files of a dataset make a scan, where a dataset offers a choice.

    Parameters
    ----------
    acq, run : str, optional
        The ``acq``/``run`` label of the magnitude echoes, where a scan has several.
    qsm : str, optional
        The derivative (``derivatives/<qsm>``) holding the QSM ``_Chimap``; None searches them all.
    mask : str, optional
        The derivative holding the brain mask; None: the QSM's.
    truth : str
        The derivative holding ground-truth / reference QQ maps (absent: no ground truth, unless
        named explicitly, other than the default ``qq``).
    dseg, lesions : str, optional
        The derivative holding a tissue segmentation (``_dseg``, with its ``dseg.tsv``), and the
        one holding lesion masks (``_label-lesion_mask``); None: the one derivative that has
        such a file for the scan, if any.
    """

    acq: str | None = None
    run: str | None = None
    qsm: str | None = None
    mask: str | None = None
    truth: str = names.TRUTH_KIND
    dseg: str | None = None
    lesions: str | None = None

    def __post_init__(self) -> None:
        for what in ("acq", "run"):
            value = getattr(self, what)
            if value is not None and not LABEL.fullmatch(value):
                raise ValueError(
                    f"--{what} must be a BIDS label (letters and digits), got {value!r}"
                )
        for what in ("qsm", "mask", "truth", "dseg", "lesions"):
            value = getattr(self, what)
            # a folder name under derivatives/: never a path
            if value is not None and (
                not value or "/" in value or "\\" in value or value in (".", "..")
            ):
                raise ValueError(f"--{what} must name a folder under derivatives/, got {value!r}")


@dataclass(frozen=True)
class DatasetIndex:
    """The scans of a dataset: those that validate, and one error line for each that doesn't.

    Attributes
    ----------
    scans : dict of str to ScanFiles
        Valid scans by scan key (:mod:`oefray.io.keys`), in natural order.
    errors : dict of str to DatasetError
        Each invalid scan's error, by scan key (a subject whose sessions cannot even be listed:
        by its label).
    split : dict of str to str
        Each scan's ``participants.tsv`` ``split`` (its subject's; "" where none).
    """

    root: Path
    name: str
    scans: dict[str, ScanFiles]
    errors: dict[str, DatasetError]
    split: dict[str, str]

    @property
    def keys(self) -> list[str]:
        """Every scan, valid or not, in natural order."""
        return sorted({*self.scans, *self.errors}, key=natural_key)


# --------------------------------------------------------------------------------------------
# Entities
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _File:
    path: Path
    entities: dict[str, str]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def suffix(self) -> str:
        return self.entities.get("suffix", "")

    def get(self, key: str) -> str | None:
        return self.entities.get(key)


def _entities(path: Path) -> dict[str, str]:
    import bids2table  # a fast, schema-driven parser (benchmarks/bids_index.py)

    return bids2table.parse_bids_entities(path)


def _niftis(folder: Path) -> list[_File]:
    """The NIfTI files of a folder with their entities, in name order."""
    if not folder.is_dir():
        return []
    found = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name.endswith(_NIFTI_EXTS) and not p.name.startswith("."):
            found.append(_File(p, _entities(p)))
    return found


def acquisition_of(entities: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The entities that tell one acquisition of a scan from another, in BIDS order."""
    keys = [k for k in entities if k not in _ACQUISITION_SKIP]
    keys.sort(key=lambda k: ENTITY_ORDER.index(k) if k in ENTITY_ORDER else len(ENTITY_ORDER))
    return tuple((k, entities[k]) for k in keys)


def _same(entity: str, a: str | None, b: str | None) -> bool:
    """Whether two values of an entity are equal; ``run`` (and ``echo``) are indices, so
    ``run-01`` is ``run-1``."""
    if (
        entity in ("run", "echo")
        and a is not None
        and b is not None
        and a.isdigit()
        and b.isdigit()
    ):
        return int(a) == int(b)
    return a == b


def _describe(acquisition: tuple[tuple[str, str], ...]) -> str:
    return "_".join(f"{k}-{v}" for k, v in acquisition) or "(no acq/run)"


def _shown(seen: Sequence[str]) -> str:
    if not seen:
        return ""
    more = len(seen) - MAX_SEEN
    return "; seen: " + ", ".join(seen[:MAX_SEEN]) + (f", and {more} more" if more > 0 else "")


# --------------------------------------------------------------------------------------------
# Magnitude echoes
# --------------------------------------------------------------------------------------------


def sidecar_metadata(image: Path) -> dict[str, Any]:
    """The sidecar metadata of an image, with BIDS inheritance.

    Every ``.json`` from the dataset root (the nearest folder above with a
    ``dataset_description.json``) down to the image's folder whose suffix is the image's and
    whose entities are a subset of the image's applies, the deeper one winning key by key (at
    one level, the one with more entities wins).

    Not ``bids2table.load_bids_metadata``: it skips a malformed sidecar silently, and caches
    every file it read for the life of the process.

    Raises
    ------
    DatasetError
        Naming a sidecar that is not a JSON object.
    """
    entities = _entities(image)
    wanted = {k: v for k, v in entities.items() if k not in ("ext", "datatype")}
    levels: list[Path] = []
    for folder in image.parents:
        levels.append(folder)
        if (folder / "dataset_description.json").is_file():
            break
    meta: dict[str, Any] = {}
    for folder in reversed(levels):
        found = []
        for p in folder.glob(f"*{wanted.get('suffix', '')}.json"):
            if not p.is_file():
                continue
            e = {k: v for k, v in _entities(p).items() if k not in ("ext", "datatype")}
            if e.get("suffix") == wanted.get("suffix") and e.items() <= wanted.items():
                found.append((len(e), p))
        for _, p in sorted(found):
            meta.update(_read_json(p))
    return meta


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"malformed JSON ({exc})") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read the sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(path, f"the sidecar is not a JSON object (found {type(data).__name__})")
    return data


def _check_te(path: Path, te: object) -> float:
    if isinstance(te, bool) or not isinstance(te, int | float) or not np.isfinite(te) or te <= 0:
        raise DatasetError(path, f"EchoTime must be a positive number of seconds, got {te!r}")
    if te > 1.0:
        raise DatasetError(path, f"EchoTime {te} looks like milliseconds; BIDS uses seconds")
    return float(te)


def _sidecar_name(image: Path) -> Path:
    return image.with_name(image.name.split(".nii")[0] + ".json")


def _echo_times(image: Path, n_volumes: int | None) -> list[float]:
    """``EchoTime`` of a 3-D echo file (``n_volumes`` None: one number) or a 4-D one (a list)."""
    meta = sidecar_metadata(image)
    sidecar = _sidecar_name(image)
    where = sidecar if sidecar.is_file() else image
    if "EchoTime" not in meta:
        if not sidecar.is_file():
            raise DatasetError(
                sidecar,
                "JSON sidecar is missing and none is inherited (it must give EchoTime in seconds)",
            )
        raise DatasetError(sidecar, "no EchoTime (in it or in an inherited sidecar)")
    te = meta["EchoTime"]
    if n_volumes is None:
        if isinstance(te, list):
            raise DatasetError(where, f"EchoTime is a list ({len(te)} values) for a 3-D echo")
        return [_check_te(where, te)]
    if not isinstance(te, list) or len(te) != n_volumes:
        got = f"a list of {len(te)}" if isinstance(te, list) else repr(te)
        raise DatasetError(
            where,
            f"a 4-D MEGRE of {n_volumes} echoes needs an EchoTime list of {n_volumes}, got {got}",
        )
    return [_check_te(where, t) for t in te]


def _magnitudes(
    files: list[_File], folder: Path, selection: ScanSelection, seen: list[str]
) -> tuple[tuple[tuple[str, str], ...], list[_File]]:
    """The chosen acquisition and its magnitude files (phase and other acquisitions set aside,
    each noted in ``seen``)."""
    groups: dict[tuple[tuple[str, str], ...], list[_File]] = {}
    for f in files:
        groups.setdefault(acquisition_of(f.entities), []).append(f)
    wanted = {k: v for k, v in (("acq", selection.acq), ("run", selection.run)) if v is not None}
    chosen = {
        a: fs
        for a, fs in groups.items()
        if all(_same(k, dict(a).get(k), v) for k, v in wanted.items())
    }
    if wanted:
        for a, fs in groups.items():
            if a not in chosen:
                flags = " ".join(f"--{k} {v}" for k, v in wanted.items())
                seen += [f"{f.name} ({_describe(a)}, not {flags})" for f in fs]
    if not chosen:
        raise DatasetError(
            folder,
            f"found 0 magnitude echo(es) of the chosen acquisition; it has {_candidates(groups)}"
            + _shown(seen),
        )
    if len(chosen) > 1:
        raise DatasetError(
            folder,
            f"several acquisitions: {_candidates(chosen)}; choose one with --acq/--run",
        )
    acquisition, group = next(iter(chosen.items()))
    phase = [f for f in group if f.get("part") in _PHASE_PARTS]
    for f in phase:
        log.info("%s: ignored (part-%s: oefray reads the magnitude)", f.path, f.get("part"))
    seen += [f"{f.name} (part-{f.get('part')}: ignored)" for f in phase]
    mag = [f for f in group if f.get("part") == "mag"]
    bare = [f for f in group if f.get("part") is None]
    if mag:
        seen += [f"{f.name} (no part- beside part-mag files)" for f in bare]
    elif bare and phase:
        seen += [f"{f.name} (no part- beside part-{phase[0].get('part')} files)" for f in bare]
    else:
        mag = bare
    other = [f for f in group if f not in mag and f not in phase and f.get("part") is not None]
    seen += [f"{f.name} (part-{f.get('part')})" for f in other]
    return acquisition, mag


def _candidates(groups: dict[tuple[tuple[str, str], ...], list[_File]]) -> str:
    return ", ".join(f"{_describe(a)} ({len(fs)} file(s))" for a, fs in groups.items())


@dataclass
class _Echoes:
    files: list[Path] = field(default_factory=list)
    volumes: list[int] = field(default_factory=list)
    te_s: list[float] = field(default_factory=list)


def _echoes(mag: list[_File], folder: Path, seen: list[str]) -> _Echoes:
    """3-D ``echo-<k>`` files in echo order, or the volumes of one 4-D file."""
    numbered = [f for f in mag if f.get("echo") is not None]
    whole = [f for f in mag if f.get("echo") is None]
    if numbered:
        seen += [f"{f.name} (no echo- beside echo-<k> files)" for f in whole]
        return _numbered_echoes(numbered, folder, seen)
    four_d = []
    for f in whole:
        shape = load_image(f.path, volumes=True).shape
        if len(shape) == 4 and shape[3] > 1:
            four_d.append((f, int(shape[3])))
        else:
            seen.append(f"{f.name} (3-D, without echo-)")
    if len(four_d) > 1:
        raise DatasetError(
            folder, "several 4-D MEGRE files: " + ", ".join(f.name for f, _ in four_d)
        )
    if not four_d:
        raise DatasetError(
            folder,
            "found 0 magnitude echo(es) (*_echo-<k>[_part-mag]_MEGRE.nii[.gz], or one 4-D "
            "*_MEGRE.nii[.gz]); need at least 2" + _shown(seen),
        )
    f, n = four_d[0]
    return _Echoes([f.path] * n, list(range(n)), _echo_times(f.path, n))


def _numbered_echoes(files: list[_File], folder: Path, seen: list[str]) -> _Echoes:
    by_echo: dict[int, Path] = {}
    for f in files:
        label = f.get("echo") or ""
        if not label.isdigit():
            seen.append(f"{f.name} (echo-{label} is not a number)")
            continue
        k = int(label)
        if k in by_echo:
            raise DatasetError(f.path, f"echo {k} is present twice ({by_echo[k].name})")
        shape = load_image(f.path, volumes=True).shape
        if len(shape) == 4 and shape[3] > 1:
            raise DatasetError(
                f.path,
                f"expected a 3-D volume for echo-{k}, got shape {tuple(shape)} (a 4-D MEGRE of "
                "every echo has no echo- entity)",
            )
        by_echo[k] = f.path
    if len(by_echo) < 2:
        raise DatasetError(
            folder,
            f"found {len(by_echo)} magnitude echo(es) (*_echo-<k>[_part-mag]_MEGRE.nii[.gz]); "
            "need at least 2" + _shown(seen),
        )
    order = sorted(by_echo)
    if order != list(range(1, len(order) + 1)):
        raise DatasetError(folder, f"echo numbers must run 1..n without gaps, got {order}")
    paths = [by_echo[k] for k in order]
    te = [_echo_times(p, None)[0] for p in paths]
    return _Echoes(paths, [-1] * len(paths), te)


# --------------------------------------------------------------------------------------------
# Derivatives
# --------------------------------------------------------------------------------------------


def derivatives_of(root: Path) -> list[str]:
    """The derivative datasets of a dataset (folders under ``derivatives/``), in name order."""
    folder = root / "derivatives"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _matches(f: _File, scan: ScanKey, acquisition: tuple[tuple[str, str], ...]) -> str | None:
    """Why a derivative's file is not the scan's (None: it is)."""
    if f.get("sub") != scan.subject:
        return f"sub-{f.get('sub')}"
    if (f.get("ses") or "") != scan.session:
        return f"ses-{f.get('ses')}" if f.get("ses") else "no ses-"
    mine = dict(acquisition)
    for k, v in f.entities.items():
        if k in _ACQUISITION_SKIP or k in ("desc", "label"):
            continue
        if not _same(k, mine.get(k), v):
            return f"{k}-{v}, not the scan's {k}-{mine[k]}" if k in mine else f"{k}-{v}"
    return None


def _derivative_files(
    root: Path, pipeline: str, scan: ScanKey, acquisition, suffix: str, seen: list[str]
) -> list[_File]:
    """The NIfTI files with ``suffix`` of a derivative that belong to the scan (the others with
    that suffix noted in ``seen``)."""
    folder = root / "derivatives" / pipeline / scan.bids_dir
    mine = []
    for f in _niftis(folder):
        if suffix and f.suffix != suffix:
            continue
        why = _matches(f, scan, acquisition)
        if why is None:
            mine.append(f)
        else:
            seen.append(f"{pipeline}/{f.name} ({why})")
    return mine


def _pick_qsm(files: list[_File], pipeline: str, seen: list[str]) -> list[_File]:
    chimaps = [f for f in files if f.suffix == "Chimap"]
    qsm = [f for f in chimaps if f.get("desc") is None]
    seen += [
        f"{pipeline}/{f.name} (desc-{f.get('desc')}: not a QSM)" for f in chimaps if f not in qsm
    ]
    return qsm


def _find_qsm(
    root: Path, scan: ScanKey, acquisition, selection: ScanSelection, seen: list[str]
) -> tuple[str, Path]:
    folder = root / "derivatives"
    pipelines = [selection.qsm] if selection.qsm else derivatives_of(root)
    if selection.qsm and not (folder / selection.qsm).is_dir():
        raise DatasetError(
            folder / selection.qsm,
            f"no such derivative (--qsm); derivatives/ holds {', '.join(derivatives_of(root)) or 'none'}",
        )
    found: dict[str, list[_File]] = {}
    for pipeline in pipelines:
        files = _derivative_files(root, pipeline, scan, acquisition, "Chimap", seen)
        qsm = _pick_qsm(files, pipeline, seen)
        if qsm:
            found[pipeline] = qsm
    where = folder / (selection.qsm or "*") / scan.bids_dir
    if not found:
        raise DatasetError(
            where,
            f"QSM map is missing (no {scan.name}[_<entities>]_Chimap.nii[.gz] in "
            + (f"derivatives/{selection.qsm})" if selection.qsm else "any derivative)")
            + _shown(seen),
        )
    if len(found) > 1:
        listed = ", ".join(f"{p}/{fs[0].name}" for p, fs in found.items())
        raise DatasetError(
            folder, f"several QSM maps for {scan.name}: {listed}; choose one with --qsm NAME"
        )
    pipeline, files = next(iter(found.items()))
    if len(files) > 1:
        raise DatasetError(
            files[0].path.parent,
            f"several QSM maps for {scan.name}: {', '.join(f.name for f in files)}",
        )
    return pipeline, files[0].path


def _find_mask(
    root: Path, pipeline: str, scan: ScanKey, acquisition, explicit: bool, seen: list[str]
) -> Path:
    folder = root / "derivatives" / pipeline
    if explicit and not folder.is_dir():
        raise DatasetError(
            folder,
            f"no such derivative (--mask); derivatives/ holds {', '.join(derivatives_of(root)) or 'none'}",
        )
    masks = _derivative_files(root, pipeline, scan, acquisition, "mask", seen)
    seen += [f"{pipeline}/{f.name} (label-{f.get('label')})" for f in masks if f.get("label")]
    masks = [f for f in masks if not f.get("label")]
    for desc in ("brain", None):
        chosen = [f for f in masks if f.get("desc") == desc]
        if len(chosen) > 1:
            raise DatasetError(
                chosen[0].path.parent,
                f"several brain masks for {scan.name}: {', '.join(f.name for f in chosen)}",
            )
        if chosen:
            return chosen[0].path
    seen += [f"{pipeline}/{f.name} (desc-{f.get('desc')})" for f in masks]
    raise DatasetError(
        folder / scan.bids_dir,
        f"brain mask is missing ({scan.name}[_<entities>]_desc-brain_mask or _mask.nii[.gz])"
        + _shown(seen),
    )


def _find_truth(
    root: Path, scan: ScanKey, acquisition, selection: ScanSelection
) -> dict[str, Path]:
    pipeline = selection.truth
    folder = root / "derivatives" / pipeline
    if not folder.is_dir():
        if pipeline != names.TRUTH_KIND:
            raise DatasetError(
                folder,
                f"no such derivative (--truth); derivatives/ holds {', '.join(derivatives_of(root)) or 'none'}",
            )
        return {}
    truth: dict[str, Path] = {}
    for f in _derivative_files(root, pipeline, scan, acquisition, "", []):
        found = names.map_of_entities(f.get("desc"), f.suffix)
        if found is None or found[1] != names.TRUTH_KIND:
            continue
        name = found[0]
        if name in truth:
            raise DatasetError(f.path, f"both {truth[name].name} and {f.name} exist; keep one")
        truth[name] = f.path
    truth.pop("OEF", None)
    if not truth and pipeline != names.TRUTH_KIND:  # named explicitly: it must be there
        raise DatasetError(
            folder / scan.bids_dir, f"no ground-truth maps of {scan.name} (--truth {pipeline})"
        )
    if truth and len(truth) != len(TRUTH_DESC):
        missing = sorted(set(TRUTH_DESC) - set(truth))
        raise DatasetError(folder / scan.bids_dir, f"ground truth is incomplete, missing {missing}")
    return truth


def _find_label_image(
    root: Path,
    scan: ScanKey,
    acquisition,
    named: str | None,
    what: str,
    pick,
) -> Path | None:
    """The one file ``pick`` chooses for the scan, in derivative ``named`` or else in the one
    derivative that has it (None where none has; several: one line listing them)."""
    folder = root / "derivatives"
    if named and not (folder / named).is_dir():
        raise DatasetError(
            folder / named,
            f"no such derivative (--{what}); derivatives/ holds {', '.join(derivatives_of(root)) or 'none'}",
        )
    found: dict[str, list[_File]] = {}
    for pipeline in [named] if named else derivatives_of(root):
        files = pick(_derivative_files(root, pipeline, scan, acquisition, "", []))
        if files:
            found[pipeline] = files
    if len(found) > 1:
        listed = ", ".join(f"{p}/{fs[0].name}" for p, fs in found.items())
        raise DatasetError(
            folder,
            f"several {what} images for {scan.name}: {listed}; choose one with --{what} NAME",
        )
    if not found:
        return None
    files = next(iter(found.values()))
    if len(files) > 1:
        raise DatasetError(
            files[0].path.parent,
            f"several {what} images for {scan.name}: {', '.join(f.name for f in files)}",
        )
    return files[0].path


def _find_labels(
    root: Path, scan: ScanKey, acquisition, selection: ScanSelection
) -> dict[str, Path]:
    """The scan's tissue segmentation (``_dseg``) and lesion mask (``_label-lesion_mask``)."""
    labels: dict[str, Path] = {}
    dseg = _find_label_image(
        root,
        scan,
        acquisition,
        selection.dseg,
        "dseg",
        lambda fs: [f for f in fs if f.suffix == "dseg"],
    )
    if dseg is not None:
        labels["tissue"] = dseg
    elif selection.dseg:
        raise DatasetError(
            root / "derivatives" / selection.dseg / scan.bids_dir,
            f"no segmentation (_dseg) of {scan.name} (--dseg {selection.dseg})",
        )
    lesion = _find_label_image(
        root,
        scan,
        acquisition,
        selection.lesions,
        "lesions",
        lambda fs: [f for f in fs if f.suffix == "mask" and f.get("label") == "lesion"],
    )
    if lesion is not None:
        labels["lesion"] = lesion
    return labels


def find_roi_mask(root: str | Path, scan: ScanFiles, derivative: str, label: str) -> Path:
    """A scan's region-of-interest mask ``*_label-<label>_mask`` in ``derivatives/<derivative>``
    (e.g. a venous-sinus ROI: ``label="sinus"``), checked to be on the scan's grid.

    Raises
    ------
    DatasetError
        No such derivative, no such mask for the scan (or several), a mask off the grid.
    """
    root = Path(root)
    option = f"{label}-mask"
    path = _find_label_image(
        root,
        scan.scan,
        scan.entities,
        derivative,
        option,
        lambda fs: [f for f in fs if f.suffix == "mask" and f.get("label") == label],
    )
    if path is None:
        raise DatasetError(
            root / "derivatives" / derivative / scan.scan.bids_dir,
            f"no _label-{label}_mask of {scan.scan.name} (--{option} {derivative})",
        )
    check_grid(path, load_image(path), scan.echoes[0], scan.shape, np.asarray(scan.affine))
    return path


def read_dseg_names(image: str | Path) -> dict[int, str]:
    """A segmentation's class names by code, from its ``dseg.tsv`` (beside it, or inherited: the
    nearest ``*dseg.tsv`` up to the dataset root); empty without one.

    Raises
    ------
    DatasetError
        Naming a ``dseg.tsv`` without ``index`` and ``name`` columns or with a bad row.
    """
    image = Path(image)
    own = image.with_name(image.name.split(".nii")[0] + ".tsv")
    candidates = [own] + [p / "dseg.tsv" for p in image.parents[:4]]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return {}
    lines = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line]
    if not lines or "index" not in lines[0] or "name" not in lines[0]:
        raise DatasetError(path, f"a dseg.tsv needs index and name columns, found {lines[:1]}")
    i, n = lines[0].index("index"), lines[0].index("name")
    names: dict[int, str] = {}
    for row in lines[1:]:
        try:
            names[int(row[i])] = row[n]
        except (ValueError, IndexError):
            raise DatasetError(path, f"bad row {row!r} (index must be an integer)") from None
    return names


# --------------------------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------------------------


def sessions_of(root: Path, label: str) -> list[str]:
    """A subject's session labels (``ses-*`` folders), or ``[""]`` when it has none.

    Raises
    ------
    DatasetError
        If the subject has neither an ``anat`` folder nor session folders.
    """
    subject = root / f"sub-{label}"
    sessions = sorted(
        (
            p.name[4:]
            for p in subject.iterdir()
            if p.is_dir() and re.fullmatch(r"ses-[A-Za-z0-9]+", p.name)
        ),
        key=natural_key,
    )
    if sessions:
        return sessions
    if not (subject / "anat").is_dir():
        inside = sorted(p.name + ("/" if p.is_dir() else "") for p in subject.iterdir())
        raise DatasetError(
            subject / "anat",
            "missing anat folder (and no ses-<label> folders)"
            + (f"; found {', '.join(inside[:MAX_SEEN])}" if inside else "; the folder is empty"),
        )
    return [""]


def scan_subject(
    root: str | Path,
    label: str,
    session: str = "",
    selection: ScanSelection | None = None,
) -> ScanFiles:
    """Locate and validate one scan's files (headers, sidecars, grids, mask).

    Reads every header, every sidecar and the mask; image data is read later, slab by slab.

    Parameters
    ----------
    root : path
        Dataset root.
    label : str
        Subject label without ``sub-``.
    session : str
        Session label without ``ses-`` ("" when the subject has no sessions).
    selection : ScanSelection, optional
        Acquisition and derivatives to use where there is a choice.

    Raises
    ------
    DatasetError
        On any contract violation, naming the offending file or folder and the near misses.
    """
    root = Path(root)
    selection = selection or ScanSelection()
    scan = ScanKey(label, session)
    anat = root / scan.bids_dir
    if not anat.is_dir():
        raise DatasetError(anat, "missing anat folder")
    seen: list[str] = []
    megre = []
    files = _niftis(anat)  # listed and parsed once
    for f in files:
        if f.suffix != "MEGRE":
            continue
        if f.get("sub") != label or (f.get("ses") or "") != session:
            other = f"sub-{f.get('sub')}" + (f"_ses-{f.get('ses')}" if f.get("ses") else "")
            seen.append(f"{f.name} (names {other})")
            continue
        megre.append(f)
    if not megre:
        others = [f"{f.name} (suffix {f.suffix or 'none'})" for f in files if f.suffix != "MEGRE"]
        raise DatasetError(
            anat,
            "found 0 magnitude echo(es) (*_echo-<k>[_part-mag]_MEGRE.nii[.gz]); need at least 2"
            + _shown(seen + others),
        )
    acquisition, mag = _magnitudes(megre, anat, selection, seen)
    echoes = _echoes(mag, anat, seen)
    if len(set(echoes.te_s)) != len(echoes.te_s):
        raise DatasetError(anat, f"duplicate echo times {echoes.te_s}")
    ref = echoes.files[0]
    shape, affine = grid_of(load_image(ref, volumes=True))
    for path in dict.fromkeys(echoes.files[1:]):
        check_grid(path, load_image(path, volumes=True), ref, shape, affine)
    pipeline, chi = _find_qsm(root, scan, acquisition, selection, [])
    check_grid(chi, load_image(chi), ref, shape, affine)
    mask = _find_mask(
        root, selection.mask or pipeline, scan, acquisition, selection.mask is not None, []
    )
    check_grid(mask, load_image(mask), ref, shape, affine)
    n_brain = int(read_mask(mask).sum())
    if n_brain == 0:
        raise DatasetError(mask, "brain mask is empty")
    truth = _find_truth(root, scan, acquisition, selection)
    for truth_path in truth.values():
        check_grid(truth_path, load_image(truth_path), ref, shape, affine)
    labels = _find_labels(root, scan, acquisition, selection)
    for label_path in labels.values():
        check_grid(label_path, load_image(label_path), ref, shape, affine)
    return ScanFiles(
        label=label,
        session=session,
        entities=acquisition,
        echoes=tuple(str(f) for f in echoes.files),
        volumes=tuple(echoes.volumes) if any(v >= 0 for v in echoes.volumes) else (),
        te_s=tuple(echoes.te_s),
        chi=str(chi),
        mask=str(mask),
        truth={k: str(v) for k, v in truth.items()},
        labels={k: str(v) for k, v in labels.items()},
        label_names=read_dseg_names(labels["tissue"]) if "tissue" in labels else {},
        shape=shape,
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        n_brain=n_brain,
    )


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


def _dataset_name(root: Path) -> str:
    path = root / "dataset_description.json"
    try:
        return str(json.loads(path.read_text()).get("Name", root.name))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise DatasetError(path, f"malformed JSON ({exc})") from None


def scan_dataset(
    root: str | Path,
    subjects: Sequence[str] | None = None,
    selection: ScanSelection | None = None,
) -> DatasetIndex:
    """Validate a dataset, scan by scan.

    Parameters
    ----------
    root : path
        Dataset root.
    subjects : sequence of str, optional
        Subject labels (every session of each), or scan keys (``P3_ses-01``: that session); by
        default every ``sub-*`` folder.
    selection : ScanSelection, optional
        Acquisition and derivatives to use where there is a choice.

    Returns
    -------
    DatasetIndex
        Valid scans, and the error of each invalid one (so ``--keep-going`` can go on).

    Raises
    ------
    DatasetError
        If the folder itself is not a BIDS dataset, or a requested subject does not exist.
    """
    root = Path(root).resolve()
    selection = selection or ScanSelection()
    labels_on_disk = list_subjects(root)
    name = _dataset_name(root)
    wanted = _wanted(root, labels_on_disk, subjects)
    participants = read_participants(root)
    for label in sorted(set(participants) - set(labels_on_disk), key=natural_key):
        log.warning(
            "%s: sub-%s is listed but has no folder; it is left out",
            root / "participants.tsv",
            label,
        )
    found: dict[str, ScanFiles] = {}
    errors: dict[str, DatasetError] = {}
    split: dict[str, str] = {}
    for label, only in wanted.items():
        try:
            sessions = sessions_of(root, label)
        except DatasetError as exc:
            errors[label] = exc
            split[label] = participants.get(label, {}).get("split", "")
            continue
        if only is not None:
            absent = sorted(set(only) - set(sessions))
            if absent:
                raise DatasetError(
                    root / f"sub-{label}", f"no such session(s): {', '.join(absent)}"
                )
            sessions = [s for s in sessions if s in only]
        for session in sessions:
            key = ScanKey(label, session).key
            split[key] = participants.get(label, {}).get("split", "")
            try:
                found[key] = scan_subject(root, label, session, selection)
            except DatasetError as exc:
                errors[key] = exc
    return DatasetIndex(root=root, name=name, scans=found, errors=errors, split=split)


def _wanted(
    root: Path, on_disk: list[str], subjects: Iterable[str] | None
) -> dict[str, list[str] | None]:
    """Subject label -> the sessions asked for (None: all)."""
    if subjects is None:
        return dict.fromkeys(on_disk)
    from oefray.io.keys import parse_key

    wanted: dict[str, list[str] | None] = {}
    bad = []
    for item in subjects:
        try:
            key = parse_key(item)
        except ValueError:
            bad.append(item)
            continue
        if key.subject not in on_disk:
            bad.append(item)
            continue
        if not key.session:
            wanted[key.subject] = None
        elif wanted.get(key.subject, []) is not None:
            wanted.setdefault(key.subject, [])
            assert wanted[key.subject] is not None
            wanted[key.subject].append(key.session)  # type: ignore[union-attr]
    if bad:
        raise DatasetError(root, f"no such subject(s): {', '.join(bad)}")
    return wanted
