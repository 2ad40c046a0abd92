"""Per-region RMSE, mirror regions and lesion contrast (:mod:`oefray.ml.regions`), checked
against direct computation and closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.ml.metrics import oef_percent
from oefray.ml.regions import (
    lesion_contrast,
    mirror_region,
    per_region_rmse,
    scan_mirror,
)


def test_per_region_rmse_is_the_rmse_of_each_region_alone():
    rng = np.random.default_rng(0)
    n = 600
    true = rng.uniform([0.5, 0.01, 5, 0.5, -0.05], [0.8, 0.05, 20, 1.5, 0.05], size=(n, 5))
    pred = true + rng.normal(0, [0.02, 0.005, 1, 0.05, 0.01], size=(n, 5))
    region = rng.choice([3, 4, 6], size=n, p=[0.5, 0.45, 0.05])
    got = per_region_rmse(pred, true, region, {6: "core", 3: "gm", 4: "wm", 9: "absent"})
    assert list(got) == ["core", "gm", "wm"]  # the order asked for; an empty region left out
    for name, code in (("core", 6), ("gm", 3), ("wm", 4)):
        sel = region == code
        expected = np.sqrt(((pred[sel] - true[sel]) ** 2).mean(axis=0))
        for k, p in enumerate(("Y", "v", "R2", "S0", "chi_nb")):
            assert got[name][p] == pytest.approx(expected[k], rel=1e-12)
        oef = np.sqrt(((oef_percent(pred[sel, 0]) - oef_percent(true[sel, 0])) ** 2).mean())
        assert got[name]["OEF"] == pytest.approx(oef, rel=1e-12)
        assert got[name]["voxels"] == sel.sum()
    with pytest.raises(ValueError, match=r"region must be \(n,\)"):
        per_region_rmse(pred, true, region[:-1], {3: "gm"})


def _grid(voxel=(2.0, 1.0, 3.0), shape=(20, 6, 4)):
    affine = np.diag([*voxel, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) * voxel[0] / 2, 7.0, -3.0]  # x = 0 midway across the grid
    return shape, affine


def test_the_mirror_of_a_lesion_block_is_the_block_across_the_midline():
    shape, affine = _grid()
    brain = np.ones(shape, bool)
    lesion = np.zeros(shape, bool)
    lesion[2:5, 1:4, 1:3] = True  # left side: i = 2..4 of 0..19
    mirror = mirror_region(lesion, brain, affine)
    expected = np.zeros(shape, bool)
    expected[15:18, 1:4, 1:3] = True  # i -> 19 - i
    np.testing.assert_array_equal(mirror, expected)
    # an explicit midline one voxel (2 mm) to the right moves the mirror two voxels to the right
    moved = mirror_region(lesion, brain, affine, midline_x=2.0)
    np.testing.assert_array_equal(moved, np.roll(expected, 2, axis=0))
    # only normal tissue: what is not normal (CSF, another lesion) is left out
    normal = brain.copy()
    normal[16] = False
    # (midline given: the brain's mean x, the default, moves when tissue is taken out)
    np.testing.assert_array_equal(mirror_region(lesion, normal, affine, 0.0), expected & normal)
    assert not mirror_region(np.zeros(shape, bool), brain, affine).any()


def test_a_lesion_across_the_midline_has_no_overlap_with_its_mirror():
    shape, affine = _grid()
    lesion = np.zeros(shape, bool)
    lesion[8:12, 2, 2] = True  # straddles the midline (between i = 9 and 10)
    mirror = mirror_region(lesion, np.ones(shape, bool), affine)
    assert not (mirror & lesion).any() and not mirror.any()


def test_lesion_contrast_closed_forms():
    rng = np.random.default_rng(1)
    n = 400
    lesion = np.zeros(n, bool)
    lesion[:40] = True
    mirror = np.zeros(n, bool)
    mirror[40:140] = True
    true = rng.normal(35.0, 2.0, n)
    true[lesion] -= 20.0  # an infarct core: low OEF
    exact = lesion_contrast(true, true, lesion, mirror)
    d = true[lesion].mean() - true[mirror].mean()
    assert exact.difference == exact.difference_true == pytest.approx(d)
    assert exact.cnr == exact.cnr_true == pytest.approx(abs(d) / true[mirror].std(ddof=1))
    assert exact.recovered == pytest.approx(1.0)
    half = lesion_contrast(0.5 * true + 10.0, true, lesion, mirror)
    assert half.recovered == pytest.approx(0.5)
    assert half.cnr == pytest.approx(exact.cnr)  # scaling leaves CNR unchanged: why recovered
    flat = lesion_contrast(np.full(n, 33.0), true, lesion, mirror)
    assert flat.recovered == 0.0 and np.isnan(flat.cnr)  # no spread in the mirror: CNR undefined
    # 27.3 over 40 and 100 voxels: the two means differ by rounding (3.6e-15 with numpy's
    # pairwise sums); a map constant over both regions still has exactly no contrast
    rounding = lesion_contrast(np.full(n, 27.3), true, lesion, mirror)
    assert rounding.difference == 0.0 and rounding.recovered == 0.0
    assert exact.to_dict()["contrast_recovered"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="overlap"):
        lesion_contrast(true, true, lesion, lesion | mirror)
    with pytest.raises(ValueError, match="need lesion and mirror voxels"):
        lesion_contrast(true, true, lesion, np.zeros(n, bool))


def test_evaluate_regions_of_two_scans():
    """Scan A has a lesion (codes 6 core, 7 penumbra around it), scan B none; the prediction is
    the truth pulled halfway to the training mean, so half the contrast is recovered."""
    from oefray.ml.regions import evaluate_regions

    shape, affine = _grid(voxel=(2.0, 2.0, 2.0), shape=(10, 4, 3))
    n = int(np.prod(shape))
    tissue = np.full(shape, 4)  # WM
    tissue[1:3] = 6  # core, left (i = 1, 2)
    tissue[3] = 7  # penumbra
    tissue = tissue.ravel()
    rng = np.random.default_rng(2)
    mean = np.array([0.6, 0.03, 10.0, 1.0, 0.0])
    true = mean + rng.normal(0, [0.01, 0.002, 0.5, 0.02, 0.005], size=(n, 5))
    true[tissue == 6, 0] = 0.9  # the infarct core extracts little oxygen: high Y
    pred = 0.5 * (true + mean)
    lesion = (tissue == 6).astype(np.int16)
    both = lambda a, b: np.concatenate([a, b])  # noqa: E731 - scan A, then scan B (no lesion)
    idx = np.arange(n)
    report = evaluate_regions(
        both(pred, pred),
        both(true, true),
        mean,
        np.array(["A"] * n + ["B"] * n),
        both(idx, idx),
        {"tissue": both(tissue, np.full(n, 4)), "lesion": both(lesion, np.zeros(n, np.int16))},
        {"A": (shape, affine), "B": (shape, affine)},
        {4: "WM", 6: "infarct core", 7: "penumbra"},
    )
    assert list(report.rmse) == ["WM", "infarct core", "penumbra", "lesion"]
    assert report.rmse["infarct core"]["voxels"] == lesion.sum() == report.rmse["lesion"]["voxels"]
    assert report.rmse["WM"]["voxels"] == n + (tissue == 4).sum()
    assert list(report.contrast) == ["A"]  # scan B has no lesion
    c = report.contrast["A"]
    assert c.lesion_voxels == 24 and c.mirror_voxels == 24  # i = 1, 2 mirror to i = 7, 8 (WM)
    assert c.recovered == pytest.approx(0.5, abs=1e-9)
    floor_core = report.floor["infarct core"]["OEF"]
    assert report.rmse["infarct core"]["OEF"] == pytest.approx(0.5 * floor_core, rel=0.02)
    assert report.contrast_summary()["contrast_recovered"] == pytest.approx(0.5)


def test_scan_mirror_is_the_mirror_region_of_the_scan_volume():
    """The voxel-index form gives the volume form's region at the voxels given (only the
    given voxels exist: those left out are neither lesion nor normal tissue)."""
    shape, affine = _grid()
    rng = np.random.default_rng(3)
    idx = np.sort(rng.choice(int(np.prod(shape)), size=300, replace=False))
    ijk = np.column_stack(np.unravel_index(idx, shape))
    lesion = (ijk[:, 0] < 5) & (ijk[:, 1] >= 2)
    abnormal = lesion | ((ijk[:, 0] == 15) & (ijk[:, 2] == 0))  # a penumbra-like strip
    got = scan_mirror(idx, lesion, abnormal, shape, affine)
    les_vol, normal_vol = np.zeros(shape, bool), np.zeros(shape, bool)
    les_vol[tuple(ijk[lesion].T)] = True
    normal_vol[tuple(ijk[~abnormal].T)] = True
    expected = mirror_region(les_vol, normal_vol, affine)[tuple(ijk.T)]
    np.testing.assert_array_equal(got, expected)
    assert got.any() and not (got & abnormal).any()
    # mirrored x of a lesion voxel (i < 5) is 19 - i: the mirror lies at i >= 15
    assert (ijk[got, 0] >= 15).all()
