"""Tests of the procedural brain phantom and subject simulation (oefray.physics.phantom).

Grids: coarse (16, 20, 12) at 11 mm, small (44, 52, 40) at 4 mm, medium (88, 104, 80) at 2 mm
(all about the typical (176, 208, 160) mm field of view); the full 1 mm grid only in the one
``slow`` test. Tolerances are stated in each test.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from oefray.physics.constants import PARAMETERS
from oefray.physics.phantom import (
    BRAIN_TISSUES,
    PARAMETER_BOUNDS,
    TISSUE_DISTRIBUTIONS,
    SubjectSimulation,
    Tissue,
    make_tissue_labels,
    simulate_parameter_maps,
    simulate_subject,
)
from oefray.physics.qq import qbold_signal, qsm_susceptibility

TE_S = 4.5e-3 + 5e-3 * np.arange(8)  # Cornell protocol: 8 echoes, TE1 4.5 ms, dTE 5 ms
COARSE = ((16, 20, 12), 11.0)
SMALL = ((44, 52, 40), 4.0)
MEDIUM = ((88, 104, 80), 2.0)
REGULAR = (Tissue.CORTICAL_GM, Tissue.WM, Tissue.DEEP_GM)


def _count(labels: np.ndarray, tissue: Tissue) -> int:
    return int(np.count_nonzero(labels == tissue))


@pytest.fixture(scope="module")
def small_noisy() -> SubjectSimulation:
    return simulate_subject(*SMALL, TE_S, 7, snr=50.0, lesion=True)


@pytest.fixture(scope="module")
def small_clean() -> SubjectSimulation:
    return simulate_subject(*SMALL, TE_S, 7, snr=np.inf, qsm_noise_ppm=0.0, lesion=True)


@pytest.fixture(scope="module")
def medium_subjects() -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Three medium-grid subjects with lesions, y_offset = 0 (no subject-level Y shift)."""
    out = []
    for seed in (0, 1, 2):
        gen = np.random.default_rng(seed)
        labels = make_tissue_labels(*MEDIUM, gen, lesion=True)
        out.append((labels, simulate_parameter_maps(labels, MEDIUM[1], gen, y_offset=0.0)))
    return out


# --- layering -----------------------------------------------------------------------------------


def test_phantom_imports_no_heavy_layers() -> None:
    code = (
        "import sys, oefray.physics.phantom\n"
        "heavy = ('ray', 'mlflow', 'nibabel', 'keras', 'tensorflow')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- determinism --------------------------------------------------------------------------------


def _assert_same(a: SubjectSimulation, b: SubjectSimulation) -> None:
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.mask, b.mask)
    for p in PARAMETERS:
        np.testing.assert_array_equal(a.truth[p], b.truth[p])
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.chi, b.chi)


def test_same_seed_same_subject_int_or_generator() -> None:
    a = simulate_subject(*COARSE, TE_S, 3, lesion=True)
    b = simulate_subject(*COARSE, TE_S, 3, lesion=True)
    c = simulate_subject(*COARSE, TE_S, np.random.default_rng(3), lesion=True)
    _assert_same(a, b)
    _assert_same(a, c)


def test_different_seed_different_subject() -> None:
    a = simulate_subject(*COARSE, TE_S, 3)
    b = simulate_subject(*COARSE, TE_S, 4)
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.truth["Y"], b.truth["Y"])
    assert not np.array_equal(a.magnitude, b.magnitude)


def test_labels_seed_gives_same_anatomy_at_any_resolution() -> None:
    # Same 180 x 210 x 162 mm field of view; 6 mm voxel centres coincide with every third 2 mm
    # voxel centre, so the labels there must agree (>= 99.9 %, float rounding at boundaries).
    coarse = make_tissue_labels((30, 35, 27), 6.0, 11, lesion=True)
    fine = make_tissue_labels((90, 105, 81), 2.0, 11, lesion=True)
    assert np.mean(coarse == fine[1::3, 1::3, 1::3]) >= 0.999


# --- labels -------------------------------------------------------------------------------------


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


# --- parameter maps -----------------------------------------------------------------------------


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


# --- subject simulation -------------------------------------------------------------------------


def test_subject_dtypes_and_shapes(small_noisy: SubjectSimulation) -> None:
    s = small_noisy
    shape = SMALL[0]
    assert s.labels.dtype == np.int8 and s.labels.shape == shape
    assert s.mask.dtype == np.bool_
    np.testing.assert_array_equal(s.mask, np.isin(s.labels, BRAIN_TISSUES))
    assert tuple(s.truth) == PARAMETERS
    assert all(v.dtype == np.float32 and v.shape == shape for v in s.truth.values())
    assert s.magnitude.dtype == np.float32 and s.magnitude.shape == (*shape, TE_S.size)
    assert s.chi.dtype == np.float32 and s.chi.shape == shape
    assert s.te_s == tuple(TE_S) and s.voxel_mm == (4.0, 4.0, 4.0)
    assert np.all(s.magnitude >= 0)


def test_noise_free_magnitude_is_the_qq_model(small_clean: SubjectSimulation) -> None:
    s = small_clean
    assert s.noise_sigma == 0.0
    t = s.truth
    expected = qbold_signal(t["S0"], t["R2"], t["Y"], t["v"], t["chi_nb"], TE_S)
    np.testing.assert_array_equal(s.magnitude, expected)
    assert np.all(s.magnitude[s.labels == Tissue.BACKGROUND] == 0)
    # One brain voxel against the float64 model (float32 storage: rtol 1e-6).
    i = tuple(np.argwhere(s.labels == Tissue.WM)[0])
    p = {k: float(v[i]) for k, v in t.items()}
    ref = qbold_signal(p["S0"], p["R2"], p["Y"], p["v"], p["chi_nb"], TE_S)
    np.testing.assert_allclose(s.magnitude[i], ref, rtol=1e-6)
    head = s.labels != Tissue.BACKGROUND
    chi = qsm_susceptibility(t["Y"], t["v"], t["chi_nb"])
    np.testing.assert_array_equal(s.chi[head], chi[head])
    assert np.all(s.chi[~head] == 0)


def test_noise_does_not_change_truth_or_chi_noise(
    small_noisy: SubjectSimulation, small_clean: SubjectSimulation
) -> None:
    np.testing.assert_array_equal(small_noisy.labels, small_clean.labels)
    for p in PARAMETERS:
        np.testing.assert_array_equal(small_noisy.truth[p], small_clean.truth[p])
    again = simulate_subject(*SMALL, TE_S, 7, snr=np.inf, lesion=True)  # chi noise on
    np.testing.assert_array_equal(again.chi, small_noisy.chi)


def test_rician_background_and_snr(small_noisy: SubjectSimulation) -> None:
    s = small_noisy
    sigma = s.noise_sigma
    background = s.magnitude[s.labels == Tissue.BACKGROUND].astype(np.float64)
    # Rayleigh background: mean sigma sqrt(pi/2) and second moment 2 sigma^2 (within 5 %).
    np.testing.assert_allclose(background.mean(), sigma * np.sqrt(np.pi / 2), rtol=0.05)
    np.testing.assert_allclose(np.mean(background**2), 2 * sigma**2, rtol=0.05)
    # Measured SNR of echo 1 in WM (noise sd estimated from the background) ~ 50 within 15 %.
    sigma_est = background.mean() / np.sqrt(np.pi / 2)
    snr = s.magnitude[s.labels == Tissue.WM, 0].mean() / sigma_est
    np.testing.assert_allclose(snr, 50.0, rtol=0.15)
    # sigma is the median noise-free first-echo brain signal over the requested SNR.
    t = {p: v[s.mask] for p, v in s.truth.items()}
    first = qbold_signal(t["S0"], t["R2"], t["Y"], t["v"], t["chi_nb"], TE_S[:1])[:, 0]
    np.testing.assert_allclose(sigma, np.median(first) / 50.0, rtol=1e-6)


def test_chi_noise_level(small_noisy: SubjectSimulation) -> None:
    s = small_noisy
    head = s.labels != Tissue.BACKGROUND
    t = s.truth
    residual = (s.chi - qsm_susceptibility(t["Y"], t["v"], t["chi_nb"]))[head]
    np.testing.assert_allclose(residual.std(), 0.002, rtol=0.10)
    assert abs(residual.mean()) < 0.002 * 5 / np.sqrt(residual.size)
    assert np.all(s.chi[~head] == 0)


def test_unequal_echo_spacing() -> None:
    te = np.array([2.0e-3, 3.1e-3, 7.0e-3, 20.0e-3])
    s = simulate_subject(*COARSE, te, 0, snr=np.inf)
    t = s.truth
    np.testing.assert_array_equal(
        s.magnitude, qbold_signal(t["S0"], t["R2"], t["Y"], t["v"], t["chi_nb"], te)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (16, 20)}, "shape"),
        ({"shape": (16, 0, 12)}, "shape"),
        ({"voxel_mm": -1.0}, "voxel_mm"),
        ({"voxel_mm": (1.0, 2.0)}, "voxel_mm"),
        ({"te_s": []}, "te_s"),
        ({"te_s": [[0.004, 0.009]]}, "te_s"),
        ({"te_s": [-0.001, 0.004]}, "te_s"),
        ({"snr": 0.0}, "snr"),
        ({"qsm_noise_ppm": -0.1}, "qsm_noise_ppm"),
    ],
)
def test_simulate_subject_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"shape": COARSE[0], "voxel_mm": COARSE[1], "te_s": TE_S, "rng": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate_subject(**args)


def test_parameter_maps_reject_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.zeros((4, 4)), 1.0, 0)
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.zeros((4, 4, 4)), 1.0, 0)  # float, not integer
    with pytest.raises(ValueError, match="labels"):
        simulate_parameter_maps(np.full((4, 4, 4), 9, dtype=np.int8), 1.0, 0)


# --- full size ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_subject() -> None:
    # The realistic preset grid: 176 x 208 x 160 at 1 mm, 8 echoes (~5 s on one core).
    s = simulate_subject((176, 208, 160), 1.0, TE_S, 0, lesion=True)
    n_brain = int(s.mask.sum())
    assert 0.9e6 <= n_brain <= 1.6e6
    assert 0.25 <= _count(s.labels, Tissue.CORTICAL_GM) / n_brain <= 0.6
    assert s.magnitude.shape == (176, 208, 160, 8) and s.magnitude.dtype == np.float32
    for tissue in Tissue:
        assert _count(s.labels, tissue) > 0, tissue.name
