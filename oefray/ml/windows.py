"""Sequence windows of voxel features, the samples of the LSTM (DESIGN.md section 1.3).

The window rule, per subject:

1. Voxels with ``status != 0`` (failed decay fit) or any non-finite feature (A, B, E, S) are
   dropped first; they are counted in ``n_excluded``.
2. The remaining brain voxels, in C order (increasing ``idx``), form the subject's sequence, as in
   the paper's flattening of the 3-D volume.
3. A window is ``length`` consecutive elements of that sequence, so it may span voxels outside the
   mask (the paper's flattening does the same: neighbours in the sequence may lie apart in the
   grid, with non-brain voxels between them), but it never crosses subjects.
4. The target is the anchor voxel's parameters: the centre element (``anchor="centre"``, odd
   ``length``) or the last element (``anchor="last"``).
5. Every voxel of the sequence except the first/last ``length // 2`` (centre) or the first
   ``length - 1`` (last) gets exactly one window; those near the sequence ends get none and are
   counted in ``n_no_window``. A subject with fewer eligible voxels than ``length`` gives zero
   windows.

Window ``k`` of a subject holds sequence elements ``k, ..., k + length - 1`` and its anchor is
element ``k + length // 2`` (centre) or ``k + length - 1`` (last).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from oefray.ml.patches import gather_patches, ijk_of, patch_columns_needed, patch_side
from oefray.physics.constants import PARAMETERS

if TYPE_CHECKING:  # pyarrow is only needed for the annotation; a Table brings its own methods
    import pyarrow as pa

__all__ = [
    "FEATURES",
    "TARGETS",
    "WindowConfig",
    "Windows",
    "make_windows",
    "make_windows_table",
]

#: Feature columns of one sequence element, in the order of the last axis of ``Windows.x``:
#: decay amplitude A (echo-1-normalised), decay rate B (s^-1), decay-fit RMS residual E, QSM S (ppm).
FEATURES: tuple[str, ...] = ("A", "B", "E", "S")

#: Target columns, in the order of the last axis of ``Windows.y`` (= the network outputs).
TARGETS: tuple[str, ...] = PARAMETERS

#: Label columns carried to each window's anchor when the features have them (not inputs).
LABELS: tuple[str, ...] = ("tissue", "lesion")

_ANCHORS = ("centre", "last")
#: ``line``: the paper's consecutive voxels of the C-order sequence; ``patch``: the cube of
#: voxels around the target (:mod:`oefray.ml.patches`).
SHAPES: tuple[str, ...] = ("line", "patch")


@dataclass(frozen=True)
class WindowConfig:
    """How a subject's voxel sequence is cut into windows.

    Parameters
    ----------
    length : int
        Elements per window, >= 1 (the paper uses 5).
    anchor : {"centre", "last"}
        Which element's parameters are the window's target; "centre" needs an odd `length`.
    shape : {"line", "patch"}
        ``line``: `length` consecutive voxels of the sequence (the paper); ``patch``: the cube
        of `length` = side**3 voxels around the target (side odd; anchor ``centre``).
    """

    length: int = 5
    anchor: str = "centre"
    shape: str = "line"

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int | np.integer):
            raise ValueError(f"window length must be an integer, got {self.length!r}")
        if self.length < 1:
            raise ValueError(f"window length must be >= 1, got {self.length}")
        if self.anchor not in _ANCHORS:
            raise ValueError(f"window anchor must be one of {_ANCHORS}, got {self.anchor!r}")
        if self.anchor == "centre" and self.length % 2 == 0:
            raise ValueError(f"a centre-anchored window needs an odd length, got {self.length}")
        if self.shape not in SHAPES:
            raise ValueError(f"window shape must be one of {SHAPES}, got {self.shape!r}")
        if self.shape == "patch":
            patch_side(self.length)
            if self.anchor != "centre":
                raise ValueError("a patch's target is its centre voxel (anchor 'centre')")

    def to_dict(self) -> dict[str, object]:
        """JSON form (a bundle's ``window``)."""
        return {"length": int(self.length), "anchor": self.anchor, "shape": self.shape}

    @property
    def offset(self) -> int:
        """Position of the anchor inside a window: ``length // 2`` (centre) or ``length - 1``."""
        return self.length // 2 if self.anchor == "centre" else self.length - 1


@dataclass(frozen=True, eq=False)
class Windows:
    """Windows of one or more subjects, in subject order, then in sequence order.

    Attributes
    ----------
    x : ndarray of shape (n, length, 4), float32
        Features ``FEATURES`` of the ``length`` elements of each window, in sequence order.
    y : ndarray of shape (n, 5), float32, or None
        Parameters ``TARGETS`` of each window's anchor voxel (physical units); None when made
        without targets.
    subject : ndarray of shape (n,), str
        Subject label of each window (one label per window, so that subsets and concatenations
        keep it).
    idx : ndarray of shape (n,), int64
        C-order flat index of each window's anchor voxel in its subject's grid.
    n_voxels : int
        Voxels (rows) given, before any exclusion.
    n_excluded : int
        Voxels dropped for a failed fit (``status != 0``) or a non-finite feature.
    n_no_window : int
        Eligible voxels that got no window because they lie within the window's reach of their
        subject's sequence ends. ``n == n_voxels - n_excluded - n_no_window``.
    labels : dict of str to ndarray of shape (n,)
        The anchor voxels' label columns (``tissue``, ``lesion``) where the features have them
        (for per-region evaluation; the network never sees them).
    """

    x: np.ndarray
    y: np.ndarray | None
    subject: np.ndarray
    idx: np.ndarray
    n_voxels: int
    n_excluded: int
    n_no_window: int
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[Windows], length: int) -> Windows:
        """Join windows of several subjects (counts add up).

        Parameters
        ----------
        parts : sequence of Windows
            All with targets or all without.
        length : int
            Window length, for the empty result when `parts` is empty.
        """
        if not parts:
            return _empty(length, with_targets=True, n_voxels=0, n_excluded=0, n_no_window=0)
        with_targets = [p.y is not None for p in parts]
        if any(with_targets) != all(with_targets):
            raise ValueError("cannot concatenate windows with and without targets")
        y = np.concatenate([p.y for p in parts if p.y is not None]) if all(with_targets) else None
        return cls(
            x=np.concatenate([p.x for p in parts]),
            y=y,
            subject=np.concatenate([p.subject for p in parts]),
            idx=np.concatenate([p.idx for p in parts]),
            n_voxels=sum(p.n_voxels for p in parts),
            n_excluded=sum(p.n_excluded for p in parts),
            n_no_window=sum(p.n_no_window for p in parts),
            labels={
                k: np.concatenate([p.labels[k] for p in parts])
                for k in parts[0].labels
                if all(k in p.labels for p in parts)
            },
        )


def _empty(
    length: int, *, with_targets: bool, n_voxels: int, n_excluded: int, n_no_window: int
) -> Windows:
    return Windows(
        x=np.zeros((0, length, len(FEATURES)), dtype=np.float32),
        y=np.zeros((0, len(TARGETS)), dtype=np.float32) if with_targets else None,
        subject=np.zeros(0, dtype=str),
        idx=np.zeros(0, dtype=np.int64),
        n_voxels=n_voxels,
        n_excluded=n_excluded,
        n_no_window=n_no_window,
    )


def make_windows(
    columns: Mapping[str, np.ndarray],
    config: WindowConfig,
    *,
    with_targets: bool = True,
    subject: str | None = None,
) -> Windows:
    """Cut one subject's voxels into windows (rule in the module docstring).

    Parameters
    ----------
    columns : mapping of str to ndarray of shape (m,)
        One subject's columns, rows sorted by strictly increasing ``idx``: ``idx``, ``status``,
        the ``FEATURES`` and, when `with_targets`, the ``TARGETS``. An optional ``subject``
        column (one label throughout) names the subject.
    config : WindowConfig
        Window length and anchor.
    with_targets : bool
        Also gather the anchor voxels' parameters into ``y``.
    subject : str, optional
        The subject's label; defaults to the ``subject`` column, or "" without one.

    Returns
    -------
    Windows
        ``n = m - n_excluded - n_no_window`` windows, in sequence order.

    Raises
    ------
    ValueError
        If a needed column is missing, the columns differ in length, ``idx`` is not strictly
        increasing, or the ``subject`` column holds more than one label.
    """
    needed = ("idx", "status") + FEATURES + (TARGETS if with_targets else ())
    if config.shape == "patch":
        needed += patch_columns_needed()
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    idx = np.asarray(columns["idx"], dtype=np.int64)
    m = idx.shape[0] if idx.ndim == 1 else -1
    if m < 0 or any(np.shape(columns[c]) != (m,) for c in needed):
        raise ValueError("all columns must be one-dimensional and of the same length")
    if m > 1 and not bool(np.all(idx[1:] > idx[:-1])):
        raise ValueError("rows must be sorted by strictly increasing idx (one subject per call)")
    label = _subject_label(columns, subject)

    with np.errstate(over="ignore"):  # beyond float32 becomes inf, and is dropped below
        features = np.stack([np.asarray(columns[c], dtype=np.float32) for c in FEATURES], axis=1)
    keep = (np.asarray(columns["status"]) == 0) & np.all(np.isfinite(features), axis=1)
    n_kept = int(np.count_nonzero(keep))
    n_excluded = m - n_kept
    length, offset = config.length, config.offset
    n = max(n_kept - length + 1, 0)
    if n == 0:
        return _empty(
            length,
            with_targets=with_targets,
            n_voxels=m,
            n_excluded=n_excluded,
            n_no_window=n_kept,
        )

    if config.shape == "patch":
        return _patch_windows(columns, config, features, keep, idx, label, with_targets)
    features = features[keep]
    # (n, 4, length) view of all runs of `length` consecutive elements -> (n, length, 4) copy.
    x = np.ascontiguousarray(sliding_window_view(features, length, axis=0).transpose(0, 2, 1))
    anchors = slice(offset, offset + n)  # window k's anchor is sequence element k + offset
    y = None
    if with_targets:
        with np.errstate(over="ignore"):
            truth = np.stack([np.asarray(columns[c], dtype=np.float32) for c in TARGETS], axis=1)
        y = np.ascontiguousarray(truth[keep][anchors])
    return Windows(
        x=x,
        y=y,
        subject=np.full(n, label),
        idx=np.ascontiguousarray(idx[keep][anchors]),
        n_voxels=m,
        n_excluded=n_excluded,
        n_no_window=n_kept - n,
        labels={
            c: np.ascontiguousarray(np.asarray(columns[c])[keep][anchors])
            for c in LABELS
            if c in columns
        },
    )


def _patch_windows(columns, config, features, keep, idx, label, with_targets) -> Windows:
    """One patch sample per kept voxel (:mod:`oefray.ml.patches`)."""
    x, rows = gather_patches(ijk_of(columns), features, keep, patch_side(config.length))
    y = None
    if with_targets:
        with np.errstate(over="ignore"):
            y = np.stack([np.asarray(columns[c], dtype=np.float32)[rows] for c in TARGETS], axis=1)
    return Windows(
        x=x,
        y=y,
        subject=np.full(len(rows), label),
        idx=np.ascontiguousarray(idx[rows]),
        n_voxels=len(idx),
        n_excluded=len(idx) - len(rows),
        n_no_window=0,
        labels={c: np.asarray(columns[c])[rows] for c in LABELS if c in columns},
    )


def _subject_label(columns: Mapping[str, np.ndarray], subject: str | None) -> str:
    if subject is not None:
        return str(subject)
    if "subject" not in columns:
        return ""
    labels = np.unique(np.asarray(columns["subject"]).astype(str))
    if labels.size > 1:
        raise ValueError(
            f"make_windows takes one subject, got {labels.size}: use make_windows_table"
        )
    return str(labels[0]) if labels.size else ""


def make_windows_table(
    table: pa.Table,
    config: WindowConfig,
    subjects: Sequence[str] | None = None,
    *,
    with_targets: bool = True,
) -> Windows:
    """Windows of every subject of a features table, concatenated in subject order.

    Parameters
    ----------
    table : pyarrow.Table
        Features as read by :func:`oefray.io.features.read_features`: a ``subject`` column plus
        the columns :func:`make_windows` needs; rows of each subject sorted by ``idx``.
    config : WindowConfig
        Window length and anchor.
    subjects : sequence of str, optional
        Subjects to use, in this order; default all, in order of first appearance.
    with_targets : bool
        Also gather the anchor voxels' parameters (the table must carry them).

    Returns
    -------
    Windows
        Per-subject windows concatenated; the counts are summed over subjects.

    Raises
    ------
    ValueError
        If a requested subject is not in the table, or as :func:`make_windows`.
    """
    if "subject" not in table.column_names:
        raise ValueError("the table has no 'subject' column")
    labels = table["subject"].combine_chunks()
    # A hive-partitioned read may already give a dictionary column; otherwise encode it once.
    encoded = labels if hasattr(labels, "indices") else labels.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    dictionary = [str(s) for s in encoded.dictionary.to_pylist()]
    present = [dictionary[c] for c in _first_appearance(codes)]
    wanted = present if subjects is None else [str(s) for s in subjects]
    absent = [s for s in wanted if s not in dictionary]
    if absent:
        raise ValueError(f"subject(s) not in the table: {', '.join(absent)}")

    needed = ("idx", "status") + FEATURES + (TARGETS if with_targets else ())
    if config.shape == "patch":
        needed += patch_columns_needed()
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"the table lacks column(s): {', '.join(missing)}")
    carried = tuple(c for c in LABELS if c in table.column_names)
    arrays = {c: table[c].combine_chunks().to_numpy(zero_copy_only=False) for c in needed + carried}
    parts = []
    for label in wanted:
        rows = np.flatnonzero(codes == dictionary.index(label))
        select: slice | np.ndarray = rows
        if rows.size and rows[-1] - rows[0] + 1 == rows.size:  # contiguous: slice, no copy
            select = slice(int(rows[0]), int(rows[-1]) + 1)
        cols = {c: a[select] for c, a in arrays.items()}
        parts.append(make_windows(cols, config, with_targets=with_targets, subject=label))
    if not parts:
        return _empty(
            config.length, with_targets=with_targets, n_voxels=0, n_excluded=0, n_no_window=0
        )
    return Windows.concatenate(parts, config.length)


def _first_appearance(codes: np.ndarray) -> np.ndarray:
    """Distinct values of `codes` in the order they first appear."""
    values, first = np.unique(codes, return_index=True)
    return values[np.argsort(first)]
