"""Per-region mean and median from additive parts (:mod:`oefray.ml.region_stats`), against NumPy
on the voxels gathered: the mean to rtol 1e-12, the median to one bin's width."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.ml.region_stats import SPREAD_EDGES, merge_parts, region_parts, summarize_parts

WIDTH = SPREAD_EDGES[1] - SPREAD_EDGES[0]


def test_parts_of_scans_merged_give_the_gathered_mean_and_median():
    rng = np.random.default_rng(0)
    names = {4: "WM", 3: "cortical GM", 6: "infarct core", 9: "absent"}
    scans = []
    for n in (500, 1200, 80):
        values = rng.gamma(2.0, 0.4, size=n)  # a skewed spread, percentage points
        values[rng.random(n) < 0.05] = np.nan  # voxels without a value are left out
        scans.append((values, rng.choice([3, 4, 6], size=n, p=[0.5, 0.45, 0.05])))
    total: dict = {}
    for values, region in scans:
        merge_parts(total, region_parts(values, region, names))
    got = summarize_parts(total)
    values = np.concatenate([v for v, _ in scans])
    region = np.concatenate([r for _, r in scans])
    assert list(got) == ["WM", "cortical GM", "infarct core"]  # the order asked; absent left out
    for code, name in ((4, "WM"), (3, "cortical GM"), (6, "infarct core")):
        sel = (region == code) & np.isfinite(values)
        assert got[name]["voxels"] == sel.sum()
        assert got[name]["mean"] == pytest.approx(values[sel].mean(), rel=1e-12)
        assert abs(got[name]["median"] - np.median(values[sel])) <= WIDTH


def test_values_beyond_the_edges_fall_in_the_end_bins_and_bad_shapes_are_refused():
    got = summarize_parts(region_parts(np.array([-1.0, 60.0, 70.0]), np.ones(3, int), {1: "a"}))
    assert got["a"]["mean"] == pytest.approx(43.0)
    assert SPREAD_EDGES[-2] <= got["a"]["median"] <= SPREAD_EDGES[-1]
    with pytest.raises(ValueError, match="values and region"):
        region_parts(np.zeros(3), np.zeros(2, int), {0: "a"})
