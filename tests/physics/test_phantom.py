"""Tests of one simulated subject (oefray.physics.phantom.simulate_subject): the composition of
anatomy, parameter maps and measurement, and what it promises on top of them.

Grids: coarse (16, 20, 12) at 11 mm, small (44, 52, 40) at 4 mm (both about the typical
(176, 208, 160) mm field of view); the full 1 mm grid only in the one ``slow`` test. Tolerances
are stated in each test. The parts are tested in test_anatomy.py, test_parameter_maps.py and
test_measurement.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from oefray.physics.anatomy import BRAIN_TISSUES, Tissue
from oefray.physics.constants import PARAMETERS
from oefray.physics.phantom import SubjectSimulation, simulate_subject
from oefray.physics.qq import qbold_signal, qsm_susceptibility

TE_S = 4.5e-3 + 5e-3 * np.arange(8)  # Cornell protocol: 8 echoes, TE1 4.5 ms, dTE 5 ms
COARSE = ((16, 20, 12), 11.0)
SMALL = ((44, 52, 40), 4.0)


def _count(labels: np.ndarray, tissue: Tissue) -> int:
    return int(np.count_nonzero(labels == tissue))


@pytest.fixture(scope="module")
def small_noisy() -> SubjectSimulation:
    return simulate_subject(*SMALL, TE_S, 7, snr=50.0, lesion=True)


@pytest.fixture(scope="module")
def small_clean() -> SubjectSimulation:
    return simulate_subject(*SMALL, TE_S, 7, snr=np.inf, qsm_noise_ppm=0.0, lesion=True)


# --- layering -----------------------------------------------------------------------------------


def test_phantom_imports_no_heavy_layers() -> None:
    modules = "echoes, grid, anatomy, parameter_maps, measurement, phantom"
    code = (
        f"import sys\nfrom oefray.physics import {modules}\n"
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
        ({"te_s": [0.004, 0.004]}, "te_s must be distinct"),
        ({"snr": 0.0}, "snr"),
        ({"qsm_noise_ppm": -0.1}, "qsm_noise_ppm"),
    ],
)
def test_simulate_subject_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"shape": COARSE[0], "voxel_mm": COARSE[1], "te_s": TE_S, "rng": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate_subject(**args)


def test_bad_noise_levels_raise_before_anything_is_drawn() -> None:
    gen = np.random.default_rng(0)
    state = gen.bit_generator.state
    with pytest.raises(ValueError, match="snr"):
        simulate_subject(*COARSE, TE_S, gen, snr=-1.0)
    assert gen.bit_generator.state == state


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
