"""A method's reference voxels from the training scans, streamed: their exact mean, their count,
and a bounded sample, on Ray Data, scan by scan.

CCM's library (:mod:`oefray.orchestration.baseline`, and its rows in ``study te-shift``) is built
from the training scans' ground truth, and the floor predicts the training mean. Neither may
gather the cohort on the driver, so :func:`reference_sample` makes two passes over the training
scans, one Ray Data task per scan, each reading its scan with a ``read`` function given by the
caller (``read(key) -> (idx, columns)``: the voxels' C-order indices and their columns):

1. **statistics** — each scan's voxel count and column sums (float64): the exact mean;
2. **sample** — each scan's voxels whose hash of ``(scan, idx, seed)``
   (:func:`oefray.ml.split.window_hash`, salt :data:`REFERENCE_SALT`) falls below
   ``size / count``: a Bernoulli sample of expected size ``size``, the same on any cluster and in
   any order; every voxel when the scans hold fewer than ``size``. The driver receives the
   sample (at most about ``size`` rows whatever the cohort) and orders it as the scans were
   given, each in ``idx`` order: the rows a gathered read of the same scans would give, for a
   cohort of at most ``size`` voxels.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from oefray.errors import OefrayError

#: Salt of the reference sample's hash stream (independent of the training split's streams,
#: :data:`oefray.ml.split.SPLIT_SALT` and the others).
REFERENCE_SALT: int = 3

#: ``read(key) -> (idx (n,) int64, {column: (n,) array})``: one scan's reference voxels.
ReadFn = Callable[[str], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True, eq=False)
class Reference:
    """The training scans' reference voxels, summarised.

    Attributes
    ----------
    columns : tuple of str
        Column names of ``mean`` and ``sample``.
    mean : ndarray of shape (C,), float64
        Exact mean of every reference voxel.
    count : int
        Reference voxels of all the scans.
    sample : ndarray of shape (m, C), float64
        The hash sample (every voxel when ``count`` is at most the size asked for).
    """

    columns: tuple[str, ...]
    mean: np.ndarray
    count: int
    sample: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.sample[:, self.columns.index(name)]


def scan_stats(batch: dict[str, np.ndarray], *, read: ReadFn, columns: Sequence[str]):
    """Count and column sums of each scan of ``batch``; a scan that cannot be read gives its
    one-line :class:`~oefray.errors.OefrayError` in ``error``."""
    out: dict[str, list] = {"scan": [], "count": [], "sums": [], "error": []}
    for key in map(str, batch["scan"]):
        count, sums, error = 0, [0.0] * len(columns), ""
        try:
            idx, values = read(key)
        except OefrayError as exc:
            error = str(exc)
        else:
            count = len(idx)
            sums = [float(np.sum(values[c], dtype=np.float64)) for c in columns]
        out["scan"].append(key)
        out["count"].append(count)
        out["sums"].append(json.dumps(sums))
        out["error"].append(error)
    return out


def scan_sample(
    batch: dict[str, np.ndarray], *, read: ReadFn, columns: Sequence[str], keep: float, seed: int
) -> dict[str, np.ndarray]:
    """The sampled voxels of each scan of ``batch``: columns ``scan``, ``idx`` and ``columns``
    (float64)."""
    from oefray.ml.split import unit_interval, window_hash

    parts: dict[str, list[np.ndarray]] = {c: [] for c in ("scan", "idx", *columns)}
    for key in map(str, batch["scan"]):
        idx, values = read(key)
        sel = np.ones(len(idx), bool)
        if keep < 1.0:
            sel = unit_interval(window_hash(key, idx, seed, REFERENCE_SALT)) < keep
        for c in columns:
            parts[c].append(np.asarray(values[c], np.float64)[sel])
        parts["idx"].append(np.asarray(idx, np.int64)[sel])
        parts["scan"].append(np.full(int(sel.sum()), key))
    return {c: np.concatenate(v) for c, v in parts.items()}


def reference_sample(
    scans: Sequence[str], read: ReadFn, columns: Sequence[str], size: int | None, seed: int
) -> Reference:
    """The two passes of the module's docstring over ``scans`` on the running Ray cluster.

    Parameters
    ----------
    scans : sequence of str
        The training scans, in the order their rows are wanted.
    read : callable
        ``read(key) -> (idx, {column: values})``, run in Ray Data tasks (picklable: a top-level
        function, or a ``functools.partial`` of one).
    columns : sequence of str
        The columns kept.
    size : int or None
        Expected sample size (None: every voxel).
    seed : int
        Seed of the sample's hash.

    Raises
    ------
    OefrayError
        A scan that cannot be read (its one line), or no reference voxel at all.
    """
    from oefray.orchestration.data import scan_keys_dataset

    columns = tuple(columns)
    kwargs = {"read": read, "columns": columns}
    rows = scan_keys_dataset([{"scan": k} for k in scans]).map_batches(
        scan_stats, batch_size=1, fn_kwargs=kwargs
    )
    stats = {r["scan"]: r for r in rows.take_all()}
    for key in scans:
        if stats[key]["error"]:
            raise OefrayError(None, stats[key]["error"])
    count = sum(int(r["count"]) for r in stats.values())
    if count == 0:
        raise OefrayError(None, f"no reference voxel in the training scans ({', '.join(scans)})")
    mean = np.sum([json.loads(stats[k]["sums"]) for k in scans], axis=0) / count
    keep = 1.0 if size is None else min(1.0, size / count)
    sample = scan_keys_dataset([{"scan": k} for k in scans]).map_batches(
        scan_sample, batch_size=1, fn_kwargs={**kwargs, "keep": keep, "seed": seed}
    )
    by_scan: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {k: [] for k in scans}
    for batch in sample.iter_batches(batch_size=None, batch_format="numpy"):
        block = np.column_stack([batch[c] for c in columns])
        for key in dict.fromkeys(map(str, batch["scan"])):
            sel = batch["scan"] == key
            by_scan[key].append((batch["idx"][sel], block[sel]))
    parts = []
    for key in scans:
        if by_scan[key]:
            idx = np.concatenate([i for i, _ in by_scan[key]])
            block = np.concatenate([b for _, b in by_scan[key]])
            parts.append(block[np.argsort(idx, kind="stable")])
    values = np.concatenate(parts) if parts else np.zeros((0, len(columns)))
    return Reference(columns=columns, mean=mean, count=count, sample=values)
