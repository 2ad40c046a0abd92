"""Content checksums of the files oefray writes, verified when they are read (DESIGN.md §5).

``oefray preprocess`` records every Parquet file of a subject in the manifest as
``{"<file name>": {"sha256": "<hex>", "bytes": <size>}}``; :func:`verify_files` checks a folder
against such a record before a stage reads it. A file is hashed once per process: the result is
remembered under the file's identity (device, inode, size, modification time), so reading the same
subject again costs a ``stat``. ``oefray verify`` (:func:`oefray.io.features.verify_features`)
checks a whole features folder, without that memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oefray.errors import FeaturesError

_CHUNK = 1 << 20

#: Identities of files already found to match their record in this process.
_VERIFIED: set[tuple[int, int, int, int, str]] = set()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the manifest records of one file: ``{"sha256": ..., "bytes": ...}``."""
    return {"sha256": sha256_file(path), "bytes": os.stat(path).st_size}


def _identity(st: os.stat_result, sha256: str) -> tuple[int, int, int, int, str]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256)


def verify_files(
    folder: Path, records: Mapping[str, Mapping[str, Any]], *, pattern: str, cached: bool = True
) -> list[Path]:
    """Check that ``folder`` holds exactly the recorded files, each with its recorded content.

    Parameters
    ----------
    folder : path
        The folder the file names of ``records`` are relative to.
    records : mapping
        ``{file name: {"sha256": hex, "bytes": int}}``.
    pattern : str
        Glob of the files that belong to the record (a matching file not in it is an error).
    cached : bool
        Skip files this process already verified and that have not changed since.

    Returns
    -------
    list of path
        The recorded files, in name order.

    Raises
    ------
    FeaturesError
        One line naming the first file that is missing, unrecorded, of the wrong size or whose
        content does not match its checksum.
    """
    files = []
    for name in sorted(records):
        path = folder / name
        expected = records[name]
        try:
            st = path.stat()
        except FileNotFoundError:
            raise FeaturesError(path, "is missing (the manifest records it)") from None
        want = str(expected.get("sha256", ""))
        if cached and _identity(st, want) in _VERIFIED:
            files.append(path)
            continue
        if st.st_size != int(expected.get("bytes", -1)):
            raise FeaturesError(
                path,
                f"is {st.st_size} bytes, the manifest records {expected.get('bytes')}: "
                "truncated or changed since oefray preprocess wrote it",
            )
        got = sha256_file(path)
        if got != want:
            raise FeaturesError(
                path,
                f"content does not match its checksum (sha256 {got[:16]}..., the manifest "
                f"records {want[:16]}...): changed since oefray preprocess wrote it",
            )
        _VERIFIED.add(_identity(st, want))
        files.append(path)
    extra = sorted(p.name for p in folder.glob(pattern) if p.name not in records)
    if extra:
        raise FeaturesError(folder / extra[0], "is not recorded in the manifest")
    return files


def forget_verified() -> None:
    """Forget which files this process verified (the next read hashes them again)."""
    _VERIFIED.clear()
