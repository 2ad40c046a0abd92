"""Who may touch an oefray folder now: one writer, or any number of readers (``flock``).

A writer (``preprocess`` into a features folder, ``simulate``/``predict`` replacing an output
with ``--force``) holds an exclusive lock on ``<folder>/.lock`` for its whole run and writes its
name and pid into the file; a reader (every stage that reads features) holds a shared lock while
it reads. Neither waits: the one that comes second gets one line and exit 1, so a reader never
sees a folder mid-rewrite and two writers never interleave.

A reader never creates the lock file (reading is read-only): a folder without one has never had
an oefray writer, and a folder the reader may not write (a read-only copy) has none that can
change it under the reader. ``flock`` locks are released by the kernel when the process ends, so
a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from oefray.errors import OefrayError

LOCK_FILE = ".lock"


def _holder(f) -> str:
    f.seek(0)
    text = " ".join(f.read(200).split())
    return text or "another oefray command"


@contextlib.contextmanager
def writing(folder: str | os.PathLike[str], command: str) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (which must exist) while the block runs.

    Raises
    ------
    OefrayError
        ``another oefray <command> is writing to this folder`` or ``... is being read by
        another oefray command``, without waiting.
    PermissionError
        When the lock file cannot be created (the folder is read-only); the caller decides.
    """
    path = Path(folder) / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(f)
            if holder.startswith("oefray ") and "(pid" in holder:
                message = f"another {holder} is writing to this folder"
            else:
                message = "is being read or written by another oefray command"
            raise OefrayError(folder, f"{message}; try again when it has finished") from None
        f.seek(0)
        f.truncate()
        f.write(f"oefray {command} (pid {os.getpid()})\n")
        f.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                f.truncate(0)


@contextlib.contextmanager
def reading(folder: str | os.PathLike[str]) -> Iterator[None]:
    """Hold a shared lock of ``folder`` while the block runs (none if it has no lock file).

    Raises
    ------
    OefrayError
        ``oefray <command> (pid N) is writing to this folder``, without waiting.
    """
    try:
        f = open(Path(folder) / LOCK_FILE)  # noqa: SIM115 - held for the whole block
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OefrayError(
                folder, f"{_holder(f)} is writing to this folder; try again when it has finished"
            ) from None
        yield


def replacing(folder: str | os.PathLike[str], command: str) -> contextlib.AbstractContextManager:
    """The writer lock of an output folder that a command replaces (``--force``), if it exists
    (a folder that does not exist yet has no reader to protect)."""
    return writing(folder, command) if Path(folder).is_dir() else contextlib.nullcontext()
