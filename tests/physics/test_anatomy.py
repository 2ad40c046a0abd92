"""Tests of the phantom's anatomy (oefray.physics.anatomy): tissue codes and label volumes.

Grids: coarse (16, 20, 12) at 11 mm, medium (88, 104, 80) at 2 mm (both about the typical
(176, 208, 160) mm field of view). Tolerances are stated in each test.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from oefray.physics.anatomy import BRAIN_TISSUES, Tissue, make_tissue_labels

COARSE = ((16, 20, 12), 11.0)
MEDIUM = ((88, 104, 80), 2.0)
REGULAR = (Tissue.CORTICAL_GM, Tissue.WM, Tissue.DEEP_GM)


def _count(labels: np.ndarray, tissue: Tissue) -> int:
    return int(np.count_nonzero(labels == tissue))


def test_same_seed_same_labels_int_or_generator() -> None:
    a = make_tissue_labels(*COARSE, 3, lesion=True)
    b = make_tissue_labels(*COARSE, np.random.default_rng(3), lesion=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, make_tissue_labels(*COARSE, 4, lesion=True))


def test_labels_seed_gives_same_anatomy_at_any_resolution() -> None:
    # Same 180 x 210 x 162 mm field of view; 6 mm voxel centres coincide with every third 2 mm
    # voxel centre, so the labels there must agree (>= 99.9 %, float rounding at boundaries).
    coarse = make_tissue_labels((30, 35, 27), 6.0, 11, lesion=True)
    fine = make_tissue_labels((90, 105, 81), 2.0, 11, lesion=True)
    assert np.mean(coarse == fine[1::3, 1::3, 1::3]) >= 0.999


def test_tissue_codes() -> None:
    assert [int(t) for t in Tissue] == list(range(8))
    assert BRAIN_TISSUES == (
        Tissue.CORTICAL_GM,
        Tissue.WM,
        Tissue.DEEP_GM,
        Tissue.INFARCT_CORE,
        Tissue.PENUMBRA,
    )


@pytest.mark.parametrize("seed", range(5))
def test_coarse_labels_have_every_tissue(seed: int) -> None:
    labels = make_tissue_labels(*COARSE, seed, lesion=True)
    assert labels.dtype == np.int8 and labels.shape == COARSE[0]
    for tissue in Tissue:
        assert _count(labels, tissue) > 0, tissue.name


def test_labels_anisotropic_voxels() -> None:
    labels = make_tissue_labels((22, 26, 10), (8.0, 8.0, 16.0), 0)
    brain = np.isin(labels, BRAIN_TISSUES).sum() * 8.0 * 8.0 * 16.0
    assert 0.9e6 <= brain <= 1.6e6


@pytest.mark.parametrize("seed", range(3))
def test_medium_labels_brain_like(seed: int) -> None:
    labels = make_tissue_labels(*MEDIUM, seed)
    voxel_mm3 = MEDIUM[1] ** 3
    brain = np.isin(labels, BRAIN_TISSUES)
    # Brain volume: ellipsoid (67, 82, 58) mm minus sulcal CSF and ventricles -> ~1.2e6 mm^3.
    assert 0.9e6 <= brain.sum() * voxel_mm3 <= 1.6e6
    gm_fraction = _count(labels, Tissue.CORTICAL_GM) / brain.sum()
    assert 0.25 <= gm_fraction <= 0.6
    deep_volume = _count(labels, Tissue.DEEP_GM) * voxel_mm3
    assert 8e3 <= deep_volume <= 6e4  # bilateral nuclei, ~10-60 mL in all
    # Bilateral deep nuclei, and ventricles near the midline (CSF within 20 mm, deep inside).
    half = labels.shape[0] // 2
    assert _count(labels[:half], Tissue.DEEP_GM) > 0 and _count(labels[half:], Tissue.DEEP_GM) > 0
    centre = labels[half - 10 : half + 10, 30:-30, 30:-30]
    assert _count(centre, Tissue.CSF) * voxel_mm3 > 3e3
    # The brain is wrapped: CSF and extracerebral tissue separate it from the background.
    near_background = ndimage.binary_dilation(labels == Tissue.BACKGROUND, iterations=2)
    assert not np.any(near_background & brain)
    assert _count(labels, Tissue.EXTRACEREBRAL) > 0
    assert not np.isin(labels, (Tissue.INFARCT_CORE, Tissue.PENUMBRA)).any()


def test_lesion_only_replaces_brain_tissue_in_one_hemisphere() -> None:
    without = make_tissue_labels(*MEDIUM, 5)
    with_lesion = make_tissue_labels(*MEDIUM, 5, lesion=True)
    changed = without != with_lesion
    lesion = np.isin(with_lesion, (Tissue.INFARCT_CORE, Tissue.PENUMBRA))
    np.testing.assert_array_equal(changed, lesion)  # anatomy otherwise identical
    assert np.isin(without[lesion], REGULAR).all()  # inside the brain
    core = with_lesion == Tissue.INFARCT_CORE
    penumbra = with_lesion == Tissue.PENUMBRA
    voxel_mm3 = MEDIUM[1] ** 3
    # Core radius 8-20 mm: 2.1e3 to 3.4e4 mm^3 if whole (may be cut by the brain surface).
    assert 5e2 <= core.sum() * voxel_mm3 <= 4.5e4
    assert penumbra.sum() > 0
    assert np.any(ndimage.binary_dilation(core) & penumbra)  # the shell touches the core
    x = np.nonzero(lesion)[0]
    side = np.mean(x >= lesion.shape[0] / 2)
    assert side <= 0.01 or side >= 0.99


@pytest.mark.parametrize(
    ("shape", "voxel_mm", "match"),
    [((16, 20), 11.0, "shape"), ((16, 0, 12), 11.0, "shape"), ((16, 20, 12), -1.0, "voxel_mm")],
)
def test_labels_reject_bad_grids(shape: tuple, voxel_mm: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_tissue_labels(shape, voxel_mm, 0)
