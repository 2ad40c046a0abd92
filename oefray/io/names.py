"""File names of the parameter maps, one rule for every writer and reader of oefray.

BIDS (1.11, the quantitative-MRI maps of ``anat``) has a suffix for three of oefray's maps, and
they use it: the tissue's true transverse relaxation rate R2 of the QQ model is an ``R2map``
(1/s), the signal at TE = 0 an ``S0map`` (arbitrary units), and the non-blood susceptibility
chi_nb a ``Chimap`` (ppm) told apart from the QSM by ``desc-nb``. Venous oxygenation Y, venous
blood volume fraction v and OEF have no BIDS suffix, and oefray does not invent one that looks
official: they keep oefray's own names ``desc-<P>_<kind>``, which each dataset's ``.bidsignore``
lists (:func:`bidsignore_patterns`), so that the BIDS validator passes the dataset.

Ground truth of a simulated dataset (``derivatives/qq``; its kind is ``qq``)::

    sub-<L>_R2map.nii.gz   sub-<L>_S0map.nii.gz   sub-<L>_desc-nb_Chimap.nii.gz
    sub-<L>_desc-Y_qq.nii.gz   sub-<L>_desc-v_qq.nii.gz                         (.bidsignore)

Maps of another kind ``K`` (``pred``: predicted; ``ensmean``/``ensstd``: across repeats; ...)::

    sub-<L>_desc-K_R2map.nii.gz   sub-<L>_desc-K_S0map.nii.gz   sub-<L>_desc-nbK_Chimap.nii.gz
    sub-<L>_desc-Y_K.nii.gz   sub-<L>_desc-v_K.nii.gz   sub-<L>_desc-OEF_K.nii.gz   (.bidsignore)

Each map has a JSON sidecar (:func:`map_sidecar`: ``Description``, ``SkullStripped``, and
``Units`` where the quantity has one). Names written by oefray before (every map as
``sub-<L>_desc-<P>_<kind>``, ``P`` in Y, v, R2, S0, chinb, OEF) are still read
(:func:`legacy_stem`, :func:`parse_map_name`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Every map, by the name it has in arrays and feature columns (OEF in percent).
MAP_NAMES: tuple[str, ...] = ("Y", "v", "R2", "S0", "chi_nb", "OEF")

#: The ``desc-`` label of each map in the names without a BIDS suffix, and in every name oefray
#: wrote before (``chi_nb`` has no underscore in BIDS entities).
LEGACY_DESC: dict[str, str] = {
    "Y": "Y",
    "v": "v",
    "R2": "R2",
    "S0": "S0",
    "chi_nb": "chinb",
    "OEF": "OEF",
}

#: The BIDS suffix of the maps one fits, and the ``desc-`` prefix that tells it from another map
#: of that suffix (chi_nb from the QSM ``Chimap``).
BIDS_SUFFIX: dict[str, str] = {"R2": "R2map", "S0": "S0map", "chi_nb": "Chimap"}
DESC_PREFIX: dict[str, str] = {"chi_nb": "nb"}

#: The kind of the simulated ground truth (``derivatives/qq``): no ``desc-`` kind on the maps
#: with a BIDS suffix, ``_qq`` on the others.
TRUTH_KIND = "qq"

#: Units of the sidecars (BIDS: the unit of R2map is 1/s, of S0map arbitrary, of Chimap ppm);
#: Y and v are fractions without a unit.
UNITS: dict[str, str] = {"R2": "1/s", "S0": "arbitrary", "chi_nb": "ppm", "OEF": "%"}

#: What each map holds, for the sidecars' ``Description``.
QUANTITY: dict[str, str] = {
    "Y": "venous blood oxygenation Y (fraction, 0 to 1)",
    "v": "venous blood volume fraction v (0 to 1)",
    "R2": "tissue transverse relaxation rate R2 of the QQ model (1/s)",
    "S0": "signal amplitude at TE = 0, S0 (arbitrary units)",
    "chi_nb": "non-blood magnetic susceptibility chi_nb (ppm)",
    "OEF": "oxygen extraction fraction OEF (percent)",
}

#: What each kind of map is, for the sidecars' ``Description`` (other kinds: ``<kind> map``).
KIND: dict[str, str] = {
    TRUTH_KIND: "Ground truth of the simulation",
    "truth": "Ground truth",
    "pred": "Predicted by oefray",
    "ensmean": "Per-voxel mean of the repeats' predictions",
    "ensstd": "Per-voxel sample standard deviation of the repeats' predictions",
}

_NIFTI = r"\.nii(?:\.gz)?"
#: The subject label and the scan's other entities before ``desc-`` (``P6``, ``P6_ses-01_run-1``).
_LABEL = r"(?P<label>[A-Za-z0-9]+(?:_(?!desc-)[a-z]+-[A-Za-z0-9]+)*)"
_NEW_RE = re.compile(
    rf"^sub-{_LABEL}(?:_desc-(?P<desc>[A-Za-z0-9]+))?_(?P<suffix>"
    + "|".join(BIDS_SUFFIX.values())
    + rf"){_NIFTI}$"
)
_LEGACY_RE = re.compile(
    rf"^sub-{_LABEL}_desc-(?P<desc>"
    + "|".join(LEGACY_DESC.values())
    + rf")_(?P<kind>[A-Za-z0-9]+){_NIFTI}$"
)


def check_label(label: str) -> str:
    """``label`` if it is a subject label, optionally followed by entities (``P6``,
    ``P6_ses-01_run-1``); else ValueError."""
    if not isinstance(label, str) or not re.fullmatch(_LABEL, label):
        raise ValueError(
            f"label must be a BIDS subject label, optionally with entities (P6_ses-01_run-1), "
            f"got {label!r}"
        )
    return label


def _check(name: str, kind: str) -> None:
    if name not in LEGACY_DESC:
        raise ValueError(f"unknown map {name!r}; expected one of {', '.join(MAP_NAMES)}")
    if not kind or not kind.isalnum():
        raise ValueError(f"kind must be a non-empty alphanumeric BIDS value, got {kind!r}")


def map_stem(label: str, name: str, kind: str) -> str:
    """The file name, without extension, of map ``name`` of kind ``kind`` of subject ``label``.

    Parameters
    ----------
    label : str
        Subject label without ``sub-``, followed by the scan's other entities where it has them
        (``P6_ses-01_acq-gre_run-1``: :attr:`oefray.io.bids.ScanFiles.prefix` without ``sub-``).
    name : str
        One of :data:`MAP_NAMES`.
    kind : str
        ``qq`` (:data:`TRUTH_KIND`, the simulated ground truth), ``pred``, ``ensmean``, ...

    Examples
    --------
    >>> map_stem("P6", "R2", "pred"), map_stem("P6", "chi_nb", "qq"), map_stem("P6", "OEF", "pred")
    ('sub-P6_desc-pred_R2map', 'sub-P6_desc-nb_Chimap', 'sub-P6_desc-OEF_pred')
    """
    _check(name, kind)
    if name not in BIDS_SUFFIX:
        return legacy_stem(label, name, kind)
    desc = DESC_PREFIX.get(name, "") + ("" if kind == TRUTH_KIND else kind)
    return f"sub-{label}" + (f"_desc-{desc}" if desc else "") + f"_{BIDS_SUFFIX[name]}"


def legacy_stem(label: str, name: str, kind: str) -> str:
    """The name oefray gave the map before (``sub-<L>_desc-<P>_<kind>``), still read."""
    _check(name, kind)
    return f"sub-{label}_desc-{LEGACY_DESC[name]}_{kind}"


@dataclass(frozen=True)
class MapFile:
    """What a map's file name says: subject label, map name (:data:`MAP_NAMES`) and kind."""

    label: str
    name: str
    kind: str


def parse_map_name(filename: str) -> MapFile | None:
    """Read a map file name of :func:`map_stem` or :func:`legacy_stem` (``.nii.gz``/``.nii``).

    Returns None for any other file (a sidecar, a raw image, a QSM ``Chimap`` without ``nb``).
    """
    m = _NEW_RE.match(filename)
    if m is not None:
        name = next(n for n, s in BIDS_SUFFIX.items() if s == m["suffix"])
        desc = m["desc"] or ""
        prefix = DESC_PREFIX.get(name, "")
        if not desc.startswith(prefix):
            return None
        return MapFile(m["label"], name, desc[len(prefix) :] or TRUTH_KIND)
    m = _LEGACY_RE.match(filename)
    if m is not None:
        name = next(n for n, d in LEGACY_DESC.items() if d == m["desc"])
        return MapFile(m["label"], name, m["kind"])
    return None


def map_of_entities(desc: str | None, suffix: str) -> tuple[str, str] | None:
    """The map (:data:`MAP_NAMES`) and kind a file's ``desc`` entity and suffix name, or None.

    The inverse of :func:`map_stem` and :func:`legacy_stem` on parsed entities (e.g. from
    ``bids2table.parse_bids_entities``): ``(None, "R2map")`` is ``("R2", "qq")``,
    ``("nbpred", "Chimap")`` is ``("chi_nb", "pred")``, ``("Y", "qq")`` is ``("Y", "qq")``; a QSM
    ``Chimap`` (no ``desc``) is None.
    """
    for name, bids_suffix in BIDS_SUFFIX.items():
        if suffix == bids_suffix:
            prefix = DESC_PREFIX.get(name, "")
            d = desc or ""
            if not d.startswith(prefix) or (prefix and not desc):
                return None
            return name, d[len(prefix) :] or TRUTH_KIND
    if desc is not None and suffix.isalnum():
        for name, legacy in LEGACY_DESC.items():
            if desc == legacy:
                return name, suffix
    return None


def bidsignore_patterns(kind: str) -> list[str]:
    """``.bidsignore`` lines for the maps of ``kind`` that have no BIDS suffix, and sidecars."""
    _check("Y", kind)
    return [f"*_{kind}.nii.gz", f"*_{kind}.nii", f"*_{kind}.json"]


def map_sidecar(
    name: str, kind: str, *, skull_stripped: bool, note: str = "", what: str | None = None
) -> dict[str, object]:
    """The JSON sidecar of a map: ``Description``, ``SkullStripped`` and ``Units`` if any.

    Parameters
    ----------
    name, kind : str
        As for :func:`map_stem`.
    skull_stripped : bool
        Whether the voxels outside the brain hold no value (BIDS ``SkullStripped``).
    note : str
        Appended to the description (e.g. what the voxels outside the brain hold).
    what : str, optional
        What made the map (default: :data:`KIND` of ``kind``).
    """
    _check(name, kind)
    what = what or KIND.get(kind, f"{kind} map")
    meta: dict[str, object] = {
        "Description": f"{what}: {QUANTITY[name]}." + (f" {note}" if note else ""),
        "SkullStripped": bool(skull_stripped),
    }
    if name in UNITS:
        meta["Units"] = UNITS[name]
    return meta
