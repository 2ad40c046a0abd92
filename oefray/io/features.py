"""The features dataset: Parquet partitioned by subject, plus ``_manifest.json`` (DESIGN.md §5).

Layout (format version 3, :mod:`oefray.io.manifest`)::

    FEATURES/
      _manifest.json                          what the folder holds, with each file's SHA-256
      _results.json                           what the last preprocess did
      subject=<L>/part-z<z0>-<z1>.parquet     one file per slab that holds brain voxels
      subject=<L>/session=<S>/part-...        the same, per session, where the dataset has them

Columns: ``subject`` (:func:`read_features`: the scan key, ``<L>`` or ``<L>_ses-<S>``,
:mod:`oefray.io.keys`; a hive reader gets ``subject`` and ``session`` from the path),
``i, j, k, idx, A, B, E, S, status`` and, when the dataset carries ground truth,
``Y, v, R2, S0, chi_nb``, and, where the scans have a segmentation or lesion masks,
``tissue`` and ``lesion`` (:data:`LABEL_COLUMNS`). ``i, j, k`` are the voxel indices (NIfTI
order) and ``idx`` the C-order flat index of ``(i, j, k)`` in the subject's grid. Rows of a file
are sorted by ``idx``. Side files start with ``_`` (and temporaries with ``.``), which Parquet
readers skip: ``pyarrow.dataset.dataset(FEATURES, format="parquet", partitioning="hive")`` and
DuckDB's ``read_parquet('FEATURES/**/*.parquet', hive_partitioning = true)`` read the folder as
it is. Folders of format
version 2 (``manifest.json``, columns ``x, y, z``) are still read, their indices renamed.

A subject appears by one ``rename`` of its finished folder, so a reader never sees half a subject;
files and the manifest are written to a temporary name first and renamed into place. Readers hold
the folder's shared lock (:mod:`oefray.io.locks`) and check every file against its recorded
SHA-256 before reading it (:mod:`oefray.io.integrity`); :func:`verify_features` checks a whole
folder, content checksums included (``oefray verify``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from oefray.errors import FeaturesError
from oefray.io.files import atomic_path
from oefray.io.integrity import verify_files
from oefray.io.keys import parse_key
from oefray.io.locks import reading

# MANIFEST and read_manifest are defined in oefray.io.manifest; readers of a folder get them here
from oefray.io.manifest import (  # noqa: F401
    FORMAT_VERSION,
    INDEX_COLUMNS,
    LEGACY_INDEX_COLUMNS,
    MANIFEST,
    FeaturesManifest,
    read_manifest,
)

#: Where ``oefray preprocess`` writes what it did, by default.
RESULTS = "_results.json"

STAGING_PREFIX = ".staging-"

FEATURE_COLUMNS: tuple[str, ...] = ("A", "B", "E", "S")
TRUTH_COLUMNS: tuple[str, ...] = ("Y", "v", "R2", "S0", "chi_nb")
_BASE_FIELDS = [
    pa.field("i", pa.int32()),
    pa.field("j", pa.int32()),
    pa.field("k", pa.int32()),
    pa.field("idx", pa.int64()),
    pa.field("A", pa.float32()),
    pa.field("B", pa.float32()),
    pa.field("E", pa.float32()),
    pa.field("S", pa.float32()),
    pa.field("status", pa.int8()),
]


#: Label columns, each present when every scan has (tissue) or any scan has (lesion) the image:
#: ``tissue`` the segmentation's class code, ``lesion`` 1 inside a lesion mask.
LABEL_COLUMNS: tuple[str, ...] = ("tissue", "lesion")


def file_schema(
    with_truth: bool, format_version: int = FORMAT_VERSION, labels: tuple[str, ...] = ()
) -> pa.Schema:
    """Schema of one Parquet file (``subject`` lives in the partition path, not in the file);
    ``format_version`` 2 names the voxel indices ``x, y, z``; ``labels``: the
    :data:`LABEL_COLUMNS` present."""
    fields = list(_BASE_FIELDS)
    if format_version < 3:
        legacy = dict(zip(INDEX_COLUMNS, LEGACY_INDEX_COLUMNS, strict=True))
        fields = [f.with_name(legacy.get(f.name, f.name)) for f in fields]
    if with_truth:
        fields += [pa.field(c, pa.float32()) for c in TRUTH_COLUMNS]
    unknown = [c for c in labels if c not in LABEL_COLUMNS]
    if unknown:
        raise ValueError(f"unknown label column(s) {unknown}; expected {LABEL_COLUMNS}")
    fields += [pa.field(c, pa.int16()) for c in LABEL_COLUMNS if c in labels]
    return pa.schema(fields)


def columns(with_truth: bool, labels: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Column names of the dataset as read, in order."""
    return ("subject",) + tuple(file_schema(with_truth, labels=labels).names)


def label_columns(manifest: FeaturesManifest) -> tuple[str, ...]:
    """The :data:`LABEL_COLUMNS` a features folder holds."""
    return tuple(c for c in LABEL_COLUMNS if c in manifest.columns)


def scan_dir(root: Path, key: str) -> Path:
    """The folder of a scan's files: ``subject=<L>`` or ``subject=<L>/session=<S>``.

    Raises
    ------
    ValueError
        For a key that is not a scan key (it becomes a path: nothing else is accepted).
    """
    return Path(root) / parse_key(key).partition


def write_slab_table(directory: Path, table: pa.Table, z0: int, z1: int) -> Path:
    """Write one slab's rows as ``part-z<z0>-<z1>.parquet`` via a temporary file and a rename.

    The name depends only on the slab, so a retried task overwrites its own earlier attempt.
    """
    final = directory / f"part-z{z0:04d}-{z1:04d}.parquet"
    with atomic_path(final) as tmp:
        # Dictionary encoding of float columns costs 3x the write time for no gain on measured data.
        pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=False)
    return final


def table_from_columns(
    cols: Mapping[str, np.ndarray], with_truth: bool, labels: tuple[str, ...] = ()
) -> pa.Table:
    """A Parquet-ready table from numpy columns (cast to the file schema)."""
    schema = file_schema(with_truth, labels=labels)
    return pa.table(
        {f.name: pa.array(np.asarray(cols[f.name]), type=f.type) for f in schema}, schema=schema
    )


_MIX = np.uint64(0xBF58476D1CE4E5B9)
_SEED = np.uint64(0x9E3779B97F4A7C15)


def row_hashes(table: pa.Table) -> np.ndarray:
    """A 64-bit hash of every row (all columns, in schema order), vectorised.

    Returns
    -------
    (n_rows,) uint64 array
    """
    h = np.full(table.num_rows, _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for position, name in enumerate(table.column_names):
            values = np.ascontiguousarray(table[name].to_numpy(zero_copy_only=False))
            if values.dtype.kind not in "iuf":
                raise TypeError(f"column {name!r} of dtype {values.dtype} cannot be hashed")
            bits = values.view(f"u{values.dtype.itemsize}").astype(np.uint64)
            h ^= bits + np.uint64(position)
            h *= _MIX
            h ^= h >> np.uint64(31)
    return h


def checksum(table: pa.Table) -> int:
    """Content checksum of a table: the sum (mod 2**64) of its row hashes.

    Being a sum, it does not depend on row order or on how rows are split into files, so slab
    checksums add up to the subject's checksum.
    """
    return int(np.sum(row_hashes(table), dtype=np.uint64))


def format_checksum(value: int) -> str:
    return f"xsum64:{value % 2**64:016x}"


def publish_subject(staged: Path, final: Path) -> None:
    """Move a finished scan's folder into place atomically, replacing an older one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


PART_GLOB = "part-*.parquet"


def subject_files(root: Path, label: str, manifest: FeaturesManifest, *, cached: bool = True):
    """The files of a committed subject, checked against the manifest's record of them.

    Raises
    ------
    FeaturesError
        One line naming a file that is missing, unrecorded, truncated or changed.
    """
    record = manifest.subjects[label]
    folder = scan_dir(root, label)
    if record.rows and not folder.is_dir():
        raise FeaturesError(folder, "is missing (the manifest records the subject)")
    return verify_files(folder, record.files, pattern=PART_GLOB, cached=cached)


def read_features(root: str | Path, subjects: list[str] | None = None) -> pa.Table:
    """Read a features folder (every complete subject, or ``subjects``) as one Arrow table.

    Columns come in the order of :func:`columns`; rows are sorted by subject, then ``idx``.
    Holds the folder's shared lock while reading, and checks each file's SHA-256 against the
    manifest (once per file per process).

    Raises
    ------
    FeaturesError
        For a missing subject, a file that does not match the manifest, or a corrupt file; or
        (as :class:`~oefray.errors.OefrayError`) while another oefray command writes the folder.
    """
    root = Path(root)
    with reading(root):
        manifest = FeaturesManifest.load(root)
        done = list(manifest.subjects)
        wanted = done if subjects is None else list(subjects)
        missing = [s for s in wanted if s not in done]
        if missing:
            raise FeaturesError(root, f"subject(s) not in the features: {', '.join(missing)}")
        with_truth = manifest.has_truth
        labels = label_columns(manifest)
        stored = file_schema(with_truth, manifest.format_version, labels)
        parts = []
        for label in wanted:
            files = subject_files(root, label, manifest)
            if not files:
                continue
            t = _read_files(files, stored).rename_columns(
                file_schema(with_truth, labels=labels).names
            )
            t = t.sort_by("idx")
            label_column = pa.array([label] * t.num_rows, type=pa.string())
            parts.append(t.add_column(0, "subject", label_column))
    if not parts:
        schema = pa.schema(
            [pa.field("subject", pa.string())] + list(file_schema(with_truth, labels=labels))
        )
        return schema.empty_table()
    return pa.concat_tables(parts)


@dataclass
class VerifyReport:
    """What :func:`verify_features` checked and found."""

    root: str
    subjects: int = 0
    files: int = 0
    bytes: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    #: Subject folders the manifest does not record (a run killed between publishing a subject
    #: and recording it; readers ignore them and the next preprocess redoes them).
    unrecorded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        return {
            "command": "verify",
            "features": self.root,
            "ok": self.ok,
            "subjects": self.subjects,
            "files": self.files,
            "bytes": self.bytes,
            "rows": self.rows,
            "problems": list(self.problems),
            "unrecorded": list(self.unrecorded),
        }


def verify_features(root: str | Path, progress=None) -> VerifyReport:
    """Check every file of a features folder: present, recorded, SHA-256 as recorded, readable,
    and each subject's row count and content checksum as the manifest records them.

    Every file is hashed again (nothing is taken from this process's memory of earlier checks).
    ``progress(done, total, label)`` is called after each subject.

    Raises
    ------
    FeaturesError
        When the folder has no readable manifest (the problems of its files are reported).
    """
    root = Path(root).resolve()
    report = VerifyReport(root=str(root))
    with reading(root):
        manifest = FeaturesManifest.load(root)
        schema = file_schema(manifest.has_truth, manifest.format_version, label_columns(manifest))
        for n, (label, record) in enumerate(manifest.subjects.items(), start=1):
            report.subjects += 1
            try:
                files = subject_files(root, label, manifest, cached=False)
                table = _read_files(files, schema) if files else schema.empty_table()
                if table.num_rows != record.rows:
                    raise FeaturesError(
                        scan_dir(root, label),
                        f"holds {table.num_rows} rows, the manifest records {record.rows}",
                    )
                got = format_checksum(checksum(table))
                if got != record.checksum:
                    raise FeaturesError(
                        scan_dir(root, label),
                        f"content checksum {got} is not the recorded {record.checksum}",
                    )
            except FeaturesError as exc:
                report.problems.append(str(exc))
            else:
                report.files += len(files)
                report.bytes += sum(f.stat().st_size for f in files)
                report.rows += table.num_rows
            if progress:
                progress(n, len(manifest.subjects), f"sub-{label}")
        recorded = {scan_dir(root, k) for k in manifest.subjects}
        report.unrecorded = sorted(
            str(p)
            for p in [*root.glob("subject=*"), *root.glob("subject=*/session=*")]
            if p not in recorded and p.is_dir() and not any(r.is_relative_to(p) for r in recorded)
        )
    return report


def _read_files(files: list[Path], schema: pa.Schema) -> pa.Table:
    """The rows of a subject's slab files; a truncated or foreign file is one line naming it."""
    try:
        return pads.dataset(files, schema=schema, format="parquet").to_table()
    except (pa.ArrowException, OSError) as exc:
        bad = next((f for f in files if not _readable(f)), files[0].parent)
        first = " ".join(str(exc).split())[:200]
        raise FeaturesError(
            bad, f"cannot read the features file, corrupt or truncated ({first})"
        ) from None


def _readable(path: Path) -> bool:
    try:
        pq.read_metadata(path)
        return True
    except (pa.ArrowException, OSError):
        return False
