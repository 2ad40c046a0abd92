"""Mean and median of a per-voxel quantity within each region, from additive per-scan parts.

The ensemble spread of the seed repeats' OEF (``tune --repeats``) is summarised per region over
every test scan; the scans are read where they are (a Ray worker each), so what comes back must
add up: per region, the count, the sum (the exact mean) and a histogram on fixed bin edges (the
median, to one bin's width). A part is plain JSON-able data; :func:`merge_parts` adds parts as
they arrive, so the reducer holds one histogram per region whatever the number of scans.

Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SPREAD_EDGES", "merge_parts", "region_parts", "summarize_parts"]

#: Bin edges of the ensemble spread of OEF (percentage points): 0.01 pp wide from 0 to 50 pp
#: (a standard deviation of a percentage cannot exceed 50); values beyond the edges fall in the
#: first or last bin.
SPREAD_EDGES: np.ndarray = np.linspace(0.0, 50.0, 5001)

#: One region's part: ``{"n": int, "sum": float, "bins": {bin index (str): count}}``.
Part = dict[str, Any]


def region_parts(
    values: npt.ArrayLike,
    region: npt.ArrayLike,
    names: Mapping[int, str],
    edges: npt.ArrayLike = SPREAD_EDGES,
) -> dict[str, Part]:
    """The part of each region of ``names`` (by code) among voxels with finite ``values``.

    Parameters
    ----------
    values : array_like of shape (n,)
    region : array_like of shape (n,), int
        Each voxel's region code.
    names : mapping of int to str
        The regions, by code, in the order wanted; a region without a finite value is left out.
    edges : array_like of shape (m + 1,)
        Increasing bin edges of the histogram.

    Returns
    -------
    dict of str to dict
        ``{region name: {"n", "sum", "bins"}}``; ``bins`` holds the non-empty bins only.
    """
    v = np.asarray(values, dtype=np.float64)
    codes = np.asarray(region)
    if v.ndim != 1 or codes.shape != v.shape:
        raise ValueError(f"values and region must be (n,) of one n, got {v.shape}, {codes.shape}")
    e = np.asarray(edges, dtype=np.float64)
    out: dict[str, Part] = {}
    for code, name in names.items():
        sel = (codes == code) & np.isfinite(v)
        if not sel.any():
            continue
        k = np.clip(np.searchsorted(e, v[sel], side="right") - 1, 0, len(e) - 2)
        bins, counts = np.unique(k, return_counts=True)
        out[name] = {
            "n": int(sel.sum()),
            "sum": float(v[sel].sum()),
            "bins": {str(int(b)): int(c) for b, c in zip(bins, counts, strict=True)},
        }
    return out


def merge_parts(total: dict[str, Part], part: Mapping[str, Part]) -> dict[str, Part]:
    """Add ``part`` (one scan's :func:`region_parts`) into ``total``, region by region; a region
    new to ``total`` goes after the others. Returns ``total``."""
    for name, p in part.items():
        acc = total.setdefault(name, {"n": 0, "sum": 0.0, "bins": {}})
        acc["n"] += int(p["n"])
        acc["sum"] += float(p["sum"])
        for b, c in p["bins"].items():
            acc["bins"][b] = acc["bins"].get(b, 0) + int(c)
    return total


def summarize_parts(
    parts: Mapping[str, Part], edges: npt.ArrayLike = SPREAD_EDGES
) -> dict[str, dict[str, float]]:
    """``{region: {"mean", "median", "voxels"}}`` of merged parts: the mean exact (from the
    sum), the median interpolated linearly within its bin (exact to one bin's width for values
    within the edges)."""
    e = np.asarray(edges, dtype=np.float64)
    out = {}
    for name, p in parts.items():
        n = int(p["n"])
        order = sorted((int(b), int(c)) for b, c in p["bins"].items())
        cum, half, median = 0, n / 2.0, float("nan")
        for b, c in order:
            if cum + c >= half:
                median = float(e[b] + (half - cum) / c * (e[b + 1] - e[b]))
                break
            cum += c
        out[name] = {"mean": float(p["sum"]) / n, "median": median, "voxels": n}
    return out
