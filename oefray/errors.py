"""The one exception type users see: a file (or folder) and what is wrong with it."""

from __future__ import annotations

from os import PathLike


class OefrayError(Exception):
    """An error a user can act on, printed as one line: ``<path>: <problem>``.

    Parameters
    ----------
    path : str or path-like or None
        The file or folder at fault (None when no single file is).
    problem : str
        What is wrong, in words a user understands; no trailing period needed.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"

    def __reduce__(self):  # survive pickling across Ray workers
        return (type(self), (self.path, self.problem))


class DatasetError(OefrayError):
    """A BIDS dataset (or one subject of it) breaks the data contract (DESIGN.md section 4)."""


class FeaturesError(OefrayError):
    """A features folder is missing, foreign, or inconsistent with the requested options."""


class Interrupted(OefrayError):
    """Work was stopped on request (Ctrl-C) after saving what it had; it can be resumed."""
