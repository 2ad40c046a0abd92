"""The features folder's ``_manifest.json`` as a typed, versioned record (DESIGN.md §5).

``oefray preprocess`` writes it; every stage that reads features loads it through
:meth:`FeaturesManifest.load`, which is the one place that says "this is not a features folder".
The JSON layout::

    {"format": "oefray-features", "format_version": 3, "oefray_version": "...",
     "source": {"dataset": "/abs/path", "name": "..."}, "options": {"normalize": "none"},
     "has_truth": true, "columns": [...], "echo_times_s": [...] or null,
     "subjects": {"<scan>": {"rows", "checksum", "status_counts", "split", "shape", "affine",
                             "echo_times_s", "source_files", "created",
                             "files": {"part-z0000-0008.parquet": {"sha256", "bytes"}},
                             "session", "entities": {"acq": ..., "run": ...}}}}

``subjects`` is keyed by scan (:mod:`oefray.io.keys`): the subject label, or
``<label>_ses-<session>`` where the dataset has sessions, whose files are in
``subject=<label>/session=<session>/``; ``entities`` are the chosen acquisition's (``acq``,
``run``, ...), which the names of maps derived from the scan carry. Both are absent in folders
written before scans had sessions, and read as none.

``echo_times_s`` at the top is the scheme every subject shares, or null when they differ.
``checksum`` is the subject's content checksum (a sum of row hashes, independent of how rows are
split into files); ``files`` holds each file's SHA-256 and size, verified when a stage reads the
file (:mod:`oefray.io.integrity`).

Format versions (the feature values are the same in all of them, so a model trained on any applies
to features of any other: :data:`COMPATIBLE_VERSIONS`):

1. no ``files``; refused (re-run ``preprocess --force``).
2. adds ``files``; the manifest is ``manifest.json`` and the voxel indices are columns
   ``x, y, z``. Still read (the indices come back as ``i, j, k``), never extended.
3. the manifest is ``_manifest.json`` (Parquet readers skip ``_`` files, so pyarrow, DuckDB and
   Spark read the folder as it is) and the voxel indices are ``i, j, k`` (the NIfTI convention:
   ``y`` and ``Y`` are one name to case-insensitive engines such as DuckDB and Spark SQL).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oefray.errors import FeaturesError
from oefray.io.files import write_text_atomic
from oefray.io.keys import LABEL, natural_key, parse_key

FORMAT = "oefray-features"
FORMAT_VERSION = 3
#: Format versions this oefray reads (it writes only :data:`FORMAT_VERSION`).
READABLE_VERSIONS: frozenset[int] = frozenset({2, 3})
#: Feature format versions whose values mean the same as this one's (a model trained on any of
#: them applies to features of this version).
COMPATIBLE_VERSIONS: frozenset[int] = frozenset({1, 2, 3})
MANIFEST = "_manifest.json"
#: The manifest's name up to format version 2.
LEGACY_MANIFEST = "manifest.json"
#: Names of the voxel-index columns up to format version 2, and since.
LEGACY_INDEX_COLUMNS: tuple[str, ...] = ("x", "y", "z")
INDEX_COLUMNS: tuple[str, ...] = ("i", "j", "k")

#: A slab file's name (names read from a manifest become paths: nothing else is accepted).
_FILE = re.compile(r"part-z[0-9]{4,}-[0-9]{4,}\.parquet")


def _file_name(name: object) -> str:
    if not isinstance(name, str) or not _FILE.fullmatch(name):
        raise ValueError(f"file name {name!r} is not a slab file name (part-z<z0>-<z1>.parquet)")
    return name


def _entity(text: object) -> str:
    if not isinstance(text, str) or not LABEL.fullmatch(text):
        raise ValueError(f"entity {text!r} is not a BIDS label (letters and digits)")
    return text


def scan_prefix(key: str, record: SubjectRecord) -> str:
    """The BIDS entities of files derived from a scan: ``sub-P3_ses-01_acq-gre_run-1``."""
    return parse_key(key).name + "".join(f"_{k}-{v}" for k, v in record.entities.items())


class FeaturesVersionError(FeaturesError):
    """An oefray features folder of another format version (``preprocess --force`` redoes it)."""


_NOT_FEATURES = f"no {MANIFEST}: not a features folder (run oefray preprocess)"


@dataclass(frozen=True)
class SubjectRecord:
    """What the manifest records of one committed subject."""

    rows: int
    checksum: str
    status_counts: dict[str, int]
    split: str
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]
    echo_times_s: tuple[float, ...]
    source_files: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The chosen acquisition's entities other than sub and ses (``acq``, ``run``, ...).
    entities: dict[str, str] = field(default_factory=dict)
    #: The segmentation's class names by code (as strings: JSON keys), from its ``dseg.tsv``.
    label_names: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "checksum": self.checksum,
            "status_counts": dict(self.status_counts),
            "split": self.split,
            "shape": list(self.shape),
            "affine": [list(r) for r in self.affine],
            "echo_times_s": list(self.echo_times_s),
            "source_files": self.source_files,
            "created": self.created,
            "files": {name: dict(rec) for name, rec in self.files.items()},
            "entities": dict(self.entities),
            "label_names": dict(self.label_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubjectRecord:
        return cls(
            rows=int(data["rows"]),
            checksum=str(data["checksum"]),
            status_counts={str(k): int(v) for k, v in data.get("status_counts", {}).items()},
            split=str(data.get("split", "")),
            shape=tuple(int(n) for n in data["shape"]),  # type: ignore[arg-type]
            affine=tuple(tuple(float(v) for v in row) for row in data["affine"]),
            echo_times_s=tuple(float(t) for t in data["echo_times_s"]),
            source_files=dict(data.get("source_files", {})),
            created=str(data.get("created", "")),
            files={_file_name(k): dict(v) for k, v in data["files"].items()},
            entities={_entity(k): _entity(v) for k, v in data.get("entities", {}).items()},
            label_names={str(int(k)): str(v) for k, v in data.get("label_names", {}).items()},
        )

    @staticmethod
    def now() -> str:
        """A creation time stamp (UTC, seconds)."""
        return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def manifest_path(root: str | Path) -> Path | None:
    """The manifest file of a features folder (``_manifest.json``, or ``manifest.json`` of format
    version 2 and before), or None where there is none."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        path = Path(root) / name
        if path.is_file():
            return path
    return None


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a features folder as the JSON it is, or None if there is none yet.

    For tools and tests that look at the file itself; oefray's stages use
    :meth:`FeaturesManifest.load`.

    Raises
    ------
    FeaturesError
        If the manifest is unreadable or was written by another tool; FeaturesVersionError for a
        format version this oefray does not read.
    """
    path = manifest_path(root)
    if path is None:
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FeaturesError(path, f"malformed manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FeaturesError(path, f"not an oefray features manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or (path.name == MANIFEST) != (version == FORMAT_VERSION):
        raise FeaturesVersionError(
            path,
            f"features format version {version} is not the supported {FORMAT_VERSION}; "
            "re-run oefray preprocess with --force",
        )
    return manifest


@dataclass
class FeaturesManifest:
    """A features folder's manifest (see the module docstring for the JSON layout).

    Parameters
    ----------
    source : dict
        ``{"dataset": <absolute path>, "name": <dataset name>}``.
    options : dict
        Preprocessing options that change the features (``{"normalize": ...}``).
    has_truth : bool
        Whether the files carry the ground-truth columns.
    columns : list of str
        Column names of the dataset as read.
    subjects : dict of str to SubjectRecord
        Committed subjects in natural label order.
    oefray_version : str
        The oefray that last wrote the manifest.
    format_version : int
        The format of the folder as read (:data:`READABLE_VERSIONS`); ``columns`` always holds
        the names :func:`oefray.io.features.read_features` returns.
    """

    source: dict[str, str]
    options: dict[str, Any]
    has_truth: bool
    columns: list[str]
    subjects: dict[str, SubjectRecord] = field(default_factory=dict)
    oefray_version: str = ""
    format_version: int = FORMAT_VERSION

    # -- reading and writing -----------------------------------------------------------------

    @classmethod
    def read(cls, root: str | Path) -> FeaturesManifest | None:
        """The manifest of ``root``, or None where there is none yet (see :func:`read_manifest`)."""
        data = read_manifest(root)
        if data is None:
            return None
        path = manifest_path(root)
        for k in data.get("subjects", {}):
            try:  # keys become folder names (subject=<label>/...): never a path from a file
                parse_key(k)
            except ValueError as exc:
                raise FeaturesError(path, str(exc)) from None
        renamed = dict(zip(LEGACY_INDEX_COLUMNS, INDEX_COLUMNS, strict=True))
        version = int(data["format_version"])
        try:
            return cls(
                source=dict(data.get("source", {})),
                options=dict(data.get("options", {})),
                has_truth=bool(data.get("has_truth")),
                columns=[renamed.get(c, c) if version < 3 else c for c in data.get("columns", [])],
                subjects={str(k): SubjectRecord.from_dict(v) for k, v in data["subjects"].items()},
                oefray_version=str(data.get("oefray_version", "")),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FeaturesError(path, f"malformed manifest ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, root: str | Path) -> FeaturesManifest:
        """The manifest of an existing features folder.

        Raises
        ------
        FeaturesError
            ``no manifest.json: not a features folder``, or what :func:`read_manifest` raises.
        """
        manifest = cls.read(root)
        if manifest is None:
            raise FeaturesError(Path(root), _NOT_FEATURES)
        return manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "oefray_version": self.oefray_version,
            "source": self.source,
            "options": self.options,
            "has_truth": self.has_truth,
            "columns": list(self.columns),
            "echo_times_s": None if self.echo_times_s is None else list(self.echo_times_s),
            "subjects": {k: v.to_dict() for k, v in self.subjects.items()},
        }

    def save(self, root: str | Path) -> Path:
        """Write ``_manifest.json`` atomically (temporary file + rename).

        Raises
        ------
        ValueError
            For a manifest read from an older format (such a folder is redone, not extended).
        """
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"a format-{self.format_version} manifest is not rewritten")
        return write_text_atomic(Path(root) / MANIFEST, json.dumps(self.to_dict(), indent=2) + "\n")

    # -- views -----------------------------------------------------------------------------

    @property
    def echo_times_s(self) -> tuple[float, ...] | None:
        """The echo scheme every subject shares, or None when they differ (or no subject yet)."""
        schemes = {s.echo_times_s for s in self.subjects.values()}
        return schemes.pop() if len(schemes) == 1 else None

    @property
    def normalize(self) -> str:
        return str(self.options.get("normalize", "none"))

    @property
    def checksums(self) -> dict[str, str]:
        """Each subject's content checksum, by label."""
        return {label: s.checksum for label, s in self.subjects.items()}

    def digest(self, subjects: Sequence[str] | None = None) -> str:
        """A short digest (16 hex digits, within MLflow's 36) of the format version, the options
        and the subjects' checksums (in label order, whatever order they are given in): what
        identifies the data a run learned from or was tested on (an MLflow dataset digest)."""
        labels = sorted(self.subjects if subjects is None else subjects)
        payload = json.dumps(
            [self.format_version, self.options, [(s, self.subjects[s].checksum) for s in labels]]
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def add_subject(self, label: str, record: SubjectRecord, oefray_version: str) -> None:
        """Record a committed subject (replacing an older record), keeping natural label order."""
        self.subjects[label] = record
        self.subjects = dict(sorted(self.subjects.items(), key=lambda kv: natural_key(kv[0])))
        self.oefray_version = oefray_version

    def split_subjects(
        self,
        root: str | Path,
        train: Sequence[str] | None = None,
        test: Sequence[str] | None = None,
    ) -> tuple[list[str], list[str]]:
        """Training and test scans: the given ones, else the manifest's ``split``.

        ``train`` and ``test`` name subjects (every scan of the subject) or scans
        (``P3_ses-01``). The split is by subject: a subject with scans on both sides is refused,
        since its sessions would leak into the test.

        Raises
        ------
        FeaturesError
            When either side is empty, a name matches no scan, or a subject is on both sides.
        """
        train_s = self._scans(root, train, "train")
        test_s = self._scans(root, test, "test")
        if not train_s or not test_s:
            raise FeaturesError(
                Path(root) / MANIFEST,
                f"need training and test subjects (split: {len(train_s)} train, {len(test_s)} test)",
            )
        both = {parse_key(k).subject for k in train_s} & {parse_key(k).subject for k in test_s}
        if both:
            raise FeaturesError(
                Path(root),
                f"subjects both in training and test: {', '.join(sorted(both, key=natural_key))}",
            )
        return train_s, test_s

    def _scans(self, root: str | Path, given: Sequence[str] | None, split: str) -> list[str]:
        if not given:
            return [k for k, r in self.subjects.items() if r.split == split]
        scans: list[str] = []
        for name in given:
            found = [k for k in self.subjects if k == name or parse_key(k).subject == name]
            if not found:
                raise FeaturesError(Path(root), f"subject(s) not in the features: {name}")
            scans += [k for k in found if k not in scans]
        return scans
