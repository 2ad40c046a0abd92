"""Scan keys: how oefray names a scan in manifests, tables, results and folder paths.

A *scan* is one subject's mGRE acquisition in one session (BIDS ``sub-<L>[/ses-<S>]``, with the
``acq``/``run`` the user chose where there are several). Its key is the subject label, followed
by ``_ses-<S>`` when the dataset has sessions::

    P3            sub-P3/anat/...              features: subject=P3/
    P3_ses-01     sub-P3/ses-01/anat/...       features: subject=P3/session=01/

Labels are BIDS labels (letters and digits), so a key splits back into subject and session
without ambiguity, and a key read from a file becomes a path only through :func:`parse_key`,
which accepts nothing else. ``sub-`` + key is the scan's BIDS prefix (``sub-P3_ses-01``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A BIDS label: letters and digits (what ``sub-<label>`` and ``subject=<label>`` hold).
LABEL = re.compile(r"[A-Za-z0-9]+")

#: A scan key: ``<subject>`` or ``<subject>_ses-<session>``.
SCAN_KEY = re.compile(r"(?P<subject>[A-Za-z0-9]+)(?:_ses-(?P<session>[A-Za-z0-9]+))?")


@dataclass(frozen=True, order=True)
class ScanKey:
    """A scan's subject label and session label (``""``: the dataset has no sessions)."""

    subject: str
    session: str = ""

    def __post_init__(self) -> None:
        if not LABEL.fullmatch(self.subject):
            raise ValueError(f"subject label {self.subject!r} is not a BIDS label")
        if self.session and not LABEL.fullmatch(self.session):
            raise ValueError(f"session label {self.session!r} is not a BIDS label")

    @property
    def key(self) -> str:
        """``P3`` or ``P3_ses-01``."""
        return self.subject + (f"_ses-{self.session}" if self.session else "")

    @property
    def name(self) -> str:
        """The BIDS prefix: ``sub-P3`` or ``sub-P3_ses-01``."""
        return f"sub-{self.key}"

    @property
    def partition(self) -> str:
        """The relative features folder: ``subject=P3`` or ``subject=P3/session=01``."""
        return f"subject={self.subject}" + (f"/session={self.session}" if self.session else "")

    @property
    def bids_dir(self) -> str:
        """The relative BIDS folder of the scan's images: ``sub-P3/anat`` or ``sub-P3/ses-01/anat``."""
        return f"sub-{self.subject}" + (f"/ses-{self.session}" if self.session else "") + "/anat"


def parse_key(key: object) -> ScanKey:
    """The scan key of ``P3`` / ``P3_ses-01``.

    Raises
    ------
    ValueError
        For anything else (the message quotes what was found).
    """
    m = SCAN_KEY.fullmatch(key) if isinstance(key, str) else None
    if m is None:
        raise ValueError(
            f"scan {key!r} is not a BIDS subject label or <subject>_ses-<session> "
            "(letters and digits only)"
        )
    return ScanKey(m["subject"], m["session"] or "")


def natural_key(label: str) -> list[object]:
    """Sort key that puts ``P10`` after ``P9`` (and ``P3_ses-02`` after ``P3_ses-01``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]
