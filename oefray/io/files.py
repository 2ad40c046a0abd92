"""Atomic writes, shared by every writer of oefray (no third-party imports).

Readers see the old file (or folder) or the new one, never half of one:

- :func:`atomic_path` — write a file through a temporary name in the same folder, then rename;
- :func:`write_text_atomic` — the same for a text;
- :func:`atomic_folder` — build a folder under a hidden name beside it, then rename it into place.

On failure the temporary file or folder is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temporary_name(path: Path, keep_suffix: bool) -> Path:
    if not keep_suffix:  # ends in .tmp: no glob of the real files (*.parquet) picks it up
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)]
    return path.with_name(f".{stem}.{uuid.uuid4().hex}.tmp{suffixes}")


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success rename it to ``path``.

    Creates the parent folders. The temporary name is hidden and ends in ``.tmp``; with
    ``keep_suffix`` it ends in ``path``'s suffixes instead (``.tmp.nii.gz``), for writers that
    choose the format from the name (nibabel).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, keep_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``path`` to fill; on success it becomes ``path``.

    Parameters
    ----------
    path : path
        The folder to create.
    replace : bool
        Replace an existing folder ``path`` (moved aside, then removed, after the new one is in
        place). The caller decides whether that is allowed; a file is never replaced.

    Raises
    ------
    NotADirectoryError
        If ``path`` exists and is not a folder (before anything is written).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir(parents=True)
    try:
        yield partial
        old = None
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(partial, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
