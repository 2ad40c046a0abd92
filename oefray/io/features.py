"""The features dataset: Parquet partitioned by subject, plus ``manifest.json`` (DESIGN.md §5).

Layout::

    FEATURES/
      manifest.json
      subject=<L>/part-z<z0>-<z1>.parquet     one file per slab that holds brain voxels

Columns: ``subject`` (from the hive partition), ``x, y, z, idx, A, B, E, S, status`` and, when the
dataset carries ground truth, ``Y, v, R2, S0, chi_nb``. ``idx`` is the C-order flat index of
``(x, y, z)`` in the subject's grid. Rows of a file are sorted by ``idx``.

A subject appears by one ``rename`` of its finished folder, so a reader never sees half a subject;
files and the manifest are written to a temporary name first and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from oefray.errors import FeaturesError
from oefray.io.files import atomic_path

# MANIFEST and read_manifest are defined in oefray.io.manifest; readers of a folder get them here
from oefray.io.manifest import MANIFEST, FeaturesManifest, read_manifest  # noqa: F401

STAGING_PREFIX = ".staging-"

FEATURE_COLUMNS: tuple[str, ...] = ("A", "B", "E", "S")
TRUTH_COLUMNS: tuple[str, ...] = ("Y", "v", "R2", "S0", "chi_nb")
_BASE_FIELDS = [
    pa.field("x", pa.int32()),
    pa.field("y", pa.int32()),
    pa.field("z", pa.int32()),
    pa.field("idx", pa.int64()),
    pa.field("A", pa.float32()),
    pa.field("B", pa.float32()),
    pa.field("E", pa.float32()),
    pa.field("S", pa.float32()),
    pa.field("status", pa.int8()),
]


def file_schema(with_truth: bool) -> pa.Schema:
    """Schema of one Parquet file (``subject`` lives in the partition path, not in the file)."""
    fields = list(_BASE_FIELDS)
    if with_truth:
        fields += [pa.field(c, pa.float32()) for c in TRUTH_COLUMNS]
    return pa.schema(fields)


def columns(with_truth: bool) -> tuple[str, ...]:
    """Column names of the dataset as read, in order."""
    return ("subject",) + tuple(file_schema(with_truth).names)


def subject_dir(root: Path, label: str) -> Path:
    return Path(root) / f"subject={label}"


def write_slab_table(directory: Path, table: pa.Table, z0: int, z1: int) -> Path:
    """Write one slab's rows as ``part-z<z0>-<z1>.parquet`` via a temporary file and a rename.

    The name depends only on the slab, so a retried task overwrites its own earlier attempt.
    """
    final = directory / f"part-z{z0:04d}-{z1:04d}.parquet"
    with atomic_path(final) as tmp:
        # Dictionary encoding of float columns costs 3x the write time for no gain on measured data.
        pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=False)
    return final


def table_from_columns(cols: Mapping[str, np.ndarray], with_truth: bool) -> pa.Table:
    """A Parquet-ready table from numpy columns (cast to the file schema)."""
    schema = file_schema(with_truth)
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
    """Move a finished subject folder into place atomically, replacing an older one."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex}")
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_features(root: str | Path, subjects: list[str] | None = None) -> pa.Table:
    """Read a features folder (every complete subject, or ``subjects``) as one Arrow table.

    Columns come in the order of :func:`columns`; rows are sorted by subject, then ``idx``.
    """
    root = Path(root)
    manifest = FeaturesManifest.load(root)
    done = list(manifest.subjects)
    wanted = done if subjects is None else list(subjects)
    missing = [s for s in wanted if s not in done]
    if missing:
        raise FeaturesError(root, f"subject(s) not in the features: {', '.join(missing)}")
    with_truth = manifest.has_truth
    parts = []
    for label in wanted:
        files = sorted(subject_dir(root, label).glob("part-*.parquet"))
        if not files:
            continue
        t = _read_files(files, file_schema(with_truth))
        t = t.sort_by("idx")
        parts.append(t.add_column(0, "subject", pa.array([label] * t.num_rows, type=pa.string())))
    if not parts:
        schema = pa.schema([pa.field("subject", pa.string())] + list(file_schema(with_truth)))
        return schema.empty_table()
    return pa.concat_tables(parts)


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
