"""Tests of the phantom's ground-truth parameter maps (oefray.physics.parameter_maps).

Grids: small (44, 52, 40) at 4 mm, medium (88, 104, 80) at 2 mm. Tolerances are stated in each
test.
"""

from __future__ import annotations

import numpy as np
import pytest

from oefray.physics.anatomy import BRAIN_TISSUES, Tissue, make_tissue_labels
from oefray.physics.constants import PARAMETERS
from oefray.physics.parameter_maps import (
    PARAMETER_BOUNDS,
    TISSUE_DISTRIBUTIONS,
    simulate_parameter_maps,
)

SMALL = ((44, 52, 40), 4.0)
MEDIUM = ((88, 104, 80), 2.0)
REGULAR = (Tissue.CORTICAL_GM, Tissue.WM, Tissue.DEEP_GM)


@pytest.fixture(scope="module")
def medium_subjects() -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Three medium-grid subjects with lesions, y_offset = 0 (no subject-level Y shift)."""
    out = []
    for seed in (0, 1, 2):
        gen = np.random.default_rng(seed)
        labels = make_tissue_labels(*MEDIUM, gen, lesion=True)
        out.append((labels, simulate_parameter_maps(labels, MEDIUM[1], gen, y_offset=0.0)))
    return out


def test_distribution_table_covers_every_tissue_and_parameter() -> None:
    assert tuple(TISSUE_DISTRIBUTIONS) == tuple(Tissue)
    for tissue, row in TISSUE_DISTRIBUTIONS.items():
        assert tuple(row) == PARAMETERS, tissue
        assert all(sd >= 0 for _, sd in row.values()), tissue
    assert TISSUE_DISTRIBUTIONS[Tissue.WM]["R2"] == (19.0, 3.0)  # DESIGN.md section 3
    assert TISSUE_DISTRIBUTIONS[Tissue.CORTICAL_GM]["Y"] == (0.62, 0.05)


def test_same_seed_same_maps() -> None:
    labels = make_tissue_labels(*SMALL, 2)
    a = simulate_parameter_maps(labels, SMALL[1], 9)
    b = simulate_parameter_maps(labels, SMALL[1], np.random.default_rng(9))
    for p in PARAMETERS:
        np.testing.assert_array_equal(a[p], b[p])


def test_parameter_maps_keys_dtypes_bounds(medium_subjects) -> None:
    for labels, maps in medium_subjects:
        assert tuple(maps) == PARAMETERS
        brain = np.isin(labels, BRAIN_TISSUES)
        for p, values in maps.items():
            assert values.dtype == np.float32 and values.shape == labels.shape
            assert np.all(np.isfinite(values))
            lo, hi = PARAMETER_BOUNDS[p]
            assert values[brain].min() >= np.float32(lo) and values[brain].max() <= np.float32(hi)
        assert np.all(maps["S0"][labels == Tissue.BACKGROUND] == 0)
        assert np.all(maps["v"][labels == Tissue.CSF] == 0)


@pytest.mark.parametrize("tissue", REGULAR, ids=lambda t: t.name)
def test_parameter_statistics_per_tissue(medium_subjects, tissue: Tissue) -> None:
    # With y_offset = 0 the only subject shift is 0.1 sd * N(0, 1) per parameter, so each
    # subject's tissue mean is within 0.3 sd of the table mean and its sd within +-30 %.
    for labels, maps in medium_subjects:
        sel = labels == tissue
        for p in PARAMETERS:
            mean, sd = TISSUE_DISTRIBUTIONS[tissue][p]
            values = maps[p][sel].astype(np.float64)
            assert abs(values.mean() - mean) <= 0.3 * sd, (p, values.mean(), mean)
            assert 0.7 * sd <= values.std() <= 1.3 * sd, (p, values.std(), sd)


def test_parameter_maps_spatially_smooth(medium_subjects) -> None:
    # Smooth field (weight 0.9, correlation length 7 mm) + white noise: neighbour correlation
    # at 2 mm ~ 0.81 exp(-4/98) = 0.78; require > 0.5, and < 0.95 (white noise is there).
    for labels, maps in medium_subjects:
        wm = labels == Tissue.WM
        pair = wm[:-1] & wm[1:]
        y = maps["Y"]
        r = np.corrcoef(y[:-1][pair], y[1:][pair])[0, 1]
        assert 0.5 < r < 0.95


def test_lesion_parameters(medium_subjects) -> None:
    for labels, maps in medium_subjects:
        core = labels == Tissue.INFARCT_CORE
        penumbra = labels == Tissue.PENUMBRA
        assert maps["Y"][core].mean() > 0.78  # 0.85 +- 0.05
        assert maps["v"][core].mean() < 0.015  # 0.010 +- 0.004
        assert maps["Y"][penumbra].mean() < 0.52  # 0.45 +- 0.05
        assert maps["Y"][penumbra].mean() < maps["Y"][labels == Tissue.WM].mean() - 0.1


def test_y_offset_changes_only_y() -> None:
    labels = make_tissue_labels(*SMALL, 2, lesion=True)
    a = simulate_parameter_maps(labels, SMALL[1], 9, y_offset=0.0)
    b = simulate_parameter_maps(labels, SMALL[1], 9, y_offset=0.05)
    for p in ("v", "R2", "S0", "chi_nb"):
        np.testing.assert_array_equal(a[p], b[p])
    shifted = np.isin(labels, REGULAR + (Tissue.PENUMBRA,)) & (a["Y"] < 0.92)
    np.testing.assert_allclose(b["Y"][shifted] - a["Y"][shifted], 0.05, atol=1e-6)
    for t in (Tissue.INFARCT_CORE, Tissue.CSF, Tissue.BACKGROUND):
        np.testing.assert_array_equal(a["Y"][labels == t], b["Y"][labels == t])


def test_parameter_maps_reject_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.zeros((4, 4)), 1.0, 0)
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.zeros((4, 4, 4)), 1.0, 0)  # float, not integer
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.full((4, 4, 4), 9, dtype=np.int8), 1.0, 0)
