"""Tests of the measurement simulator (oefray.physics.measurement): qBOLD magnitude with Rician
noise, QSM with Gaussian noise, from parameter maps.

One small phantom subject (44, 52, 40) at 4 mm (~20k brain voxels) supplies the maps; the noise
statistics pool ~1.6e5 brain samples, so sampling errors are ~0.3 % and the tolerances (stated in
each test) are a few times that plus the known Rician bias.
"""

from __future__ import annotations

import numpy as np
import pytest

from oefray.physics.anatomy import Tissue, make_tissue_labels
from oefray.physics.constants import PARAMETERS
from oefray.physics.measurement import (
    add_rician_noise,
    noise_sigma,
    simulate_measurement,
)
from oefray.physics.parameter_maps import simulate_parameter_maps
from oefray.physics.qq import qbold_signal, qsm_susceptibility

TE_S = 4.5e-3 + 5e-3 * np.arange(8)
SMALL = ((44, 52, 40), 4.0)
MODES = ("streams", "grid")


@pytest.fixture(scope="module")
def subject() -> dict:
    gen = np.random.default_rng(21)
    labels = make_tissue_labels(*SMALL, gen, lesion=True)
    maps = simulate_parameter_maps(labels, SMALL[1], gen)
    return {"maps": maps, "mask": labels >= Tissue.CORTICAL_GM, "head": labels != Tissue.BACKGROUND}


def _measure(subject: dict, seed: int = 0, **kwargs):
    kwargs = {"support": subject["head"]} | kwargs
    return simulate_measurement(
        subject["maps"], subject["mask"], TE_S, np.random.default_rng(seed), **kwargs
    )


def _noise_free_signal(subject: dict) -> np.ndarray:
    m = subject["maps"]
    return qbold_signal(m["S0"], m["R2"], m["Y"], m["v"], m["chi_nb"], TE_S)


@pytest.mark.parametrize("mode", MODES)
def test_noise_level_is_the_requested_snr(subject: dict, mode: str) -> None:
    measured = _measure(subject, snr=50.0, noise_draws=mode)
    mask, head = subject["mask"], subject["head"]
    clean = _noise_free_signal(subject)
    # sigma is the median noise-free echo-1 brain signal over the SNR (rtol 1e-6: float32).
    sigma = measured.noise_sigma
    np.testing.assert_allclose(sigma, np.median(clean[mask][:, 0]) / 50.0, rtol=1e-6)
    # At SNR >= 50 the Rician magnitude minus the signal is ~N(0, sigma) (bias sigma^2 / 2S,
    # ~1 % of sigma): the measured noise sd, and so the SNR, within 2 %.
    residual = (measured.magnitude - clean)[mask].astype(np.float64)
    np.testing.assert_allclose(residual.std(), sigma, rtol=0.02)
    np.testing.assert_allclose(np.median(clean[mask][:, 0]) / residual.std(), 50.0, rtol=0.02)
    # Outside the support the magnitude is Rayleigh: mean sigma sqrt(pi/2) (within 2 %).
    background = measured.magnitude[~head].astype(np.float64)
    np.testing.assert_allclose(background.mean(), sigma * np.sqrt(np.pi / 2), rtol=0.02)


@pytest.mark.parametrize("mode", MODES)
def test_rician_magnitude_is_non_negative_float32(subject: dict, mode: str) -> None:
    measured = _measure(subject, snr=2.0, noise_draws=mode)  # noise comparable to the signal
    assert measured.magnitude.dtype == np.float32 and measured.chi.dtype == np.float32
    assert measured.magnitude.shape == (*SMALL[0], TE_S.size)
    assert np.all(measured.magnitude >= 0)


@pytest.mark.parametrize("mode", MODES)
def test_reproducible_with_the_same_rng(subject: dict, mode: str) -> None:
    a, b = _measure(subject, 4, noise_draws=mode), _measure(subject, 4, noise_draws=mode)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.chi, b.chi)
    c = _measure(subject, 5, noise_draws=mode)
    assert not np.array_equal(a.magnitude, c.magnitude)
    assert not np.array_equal(a.chi, c.chi)


@pytest.mark.parametrize("mode", MODES)
def test_noise_free_images_are_the_qq_model_in_the_support(subject: dict, mode: str) -> None:
    measured = _measure(subject, snr=np.inf, qsm_noise_ppm=0.0, noise_draws=mode)
    head, m = subject["head"], subject["maps"]
    assert measured.noise_sigma == 0.0
    np.testing.assert_array_equal(measured.magnitude[head], _noise_free_signal(subject)[head])
    assert np.all(measured.magnitude[~head] == 0)
    chi = qsm_susceptibility(m["Y"], m["v"], m["chi_nb"])
    np.testing.assert_array_equal(measured.chi[head], chi[head])
    assert np.all(measured.chi[~head] == 0)


@pytest.mark.parametrize("mode", MODES)
def test_chi_noise_level(subject: dict, mode: str) -> None:
    measured = _measure(subject, qsm_noise_ppm=0.002, noise_draws=mode)
    head, m = subject["head"], subject["maps"]
    residual = (measured.chi - qsm_susceptibility(m["Y"], m["v"], m["chi_nb"]))[head]
    np.testing.assert_allclose(residual.std(), 0.002, rtol=0.02)  # ~4e4 head voxels
    assert np.all(measured.chi[~head] == 0)


def test_support_defaults_to_the_mask(subject: dict) -> None:
    measured = _measure(subject, support=None, snr=np.inf, qsm_noise_ppm=0.0)
    mask = subject["mask"]
    assert np.all(measured.magnitude[~mask] == 0) and np.all(measured.chi[~mask] == 0)
    np.testing.assert_array_equal(measured.magnitude[mask], _noise_free_signal(subject)[mask])


def test_streams_keep_the_chi_noise_whatever_the_magnitude_noise(subject: dict) -> None:
    noisy = _measure(subject, 3, snr=30.0)
    clean = _measure(subject, 3, snr=np.inf)
    np.testing.assert_array_equal(noisy.chi, clean.chi)


def test_grid_draws_advance_the_generator_by_a_fixed_amount(subject: dict) -> None:
    states = []
    for snr, ppm in ((50.0, 0.002), (np.inf, 0.0)):
        gen = np.random.default_rng(8)
        maps, mask = subject["maps"], subject["mask"]
        simulate_measurement(maps, mask, TE_S, gen, snr=snr, qsm_noise_ppm=ppm, noise_draws="grid")
        states.append(gen.bit_generator.state)
    assert states[0] == states[1]


def test_grid_draws_are_the_te_shift_studys_formula(subject: dict) -> None:
    """White box: the "grid" convention is, bit for bit, the formula the te-shift study used."""
    maps, mask = subject["maps"], subject["mask"]
    got = simulate_measurement(maps, mask, TE_S, np.random.default_rng(2), noise_draws="grid")
    rng = np.random.default_rng(2)
    t = maps
    signal = qbold_signal(t["S0"], t["R2"], t["Y"], t["v"], t["chi_nb"], TE_S)
    signal = np.where(mask[..., None], signal, 0.0).astype(np.float32)
    sigma = float(np.median(signal[mask][:, 0])) / 100.0
    noisy = np.abs(
        signal + rng.normal(0, sigma, signal.shape) + 1j * rng.normal(0, sigma, signal.shape)
    )
    chi = qsm_susceptibility(t["Y"], t["v"], t["chi_nb"]) + rng.normal(0, 0.002, mask.shape)
    np.testing.assert_array_equal(got.magnitude, noisy.astype(np.float32))
    np.testing.assert_array_equal(got.chi, np.where(mask, chi, 0.0).astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"te_s": []}, "te_s"),
        ({"te_s": [0.004, 0.004]}, "te_s must be distinct"),
        ({"snr": 0.0}, "snr"),
        ({"qsm_noise_ppm": -0.1}, "qsm_noise_ppm"),
        ({"qsm_noise_ppm": np.nan}, "qsm_noise_ppm"),
        ({"noise_draws": "slabs"}, "noise_draws"),
        ({"mask": np.ones((2, 2, 2), dtype=bool)}, "one 3-D shape"),
        ({"support": np.ones((2, 2, 2), dtype=bool)}, "one 3-D shape"),
    ],
)
def test_bad_arguments_raise(subject: dict, kwargs: dict, match: str) -> None:
    args = {"maps": subject["maps"], "mask": subject["mask"], "te_s": TE_S} | kwargs
    with pytest.raises(ValueError, match=match):
        simulate_measurement(rng=np.random.default_rng(0), **args)


def test_missing_parameter_map_raises(subject: dict) -> None:
    maps = {p: v for p, v in subject["maps"].items() if p != "chi_nb"}
    with pytest.raises(ValueError, match="chi_nb"):
        simulate_measurement(maps, subject["mask"], TE_S, np.random.default_rng(0))
    assert tuple(subject["maps"]) == PARAMETERS


# --- the noise step alone -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rician_noise_second_moment(dtype: type) -> None:
    # Closed form: E[M^2] = S^2 + 2 sigma^2 for M = |S + sigma (n1 + i n2)|. With S = 1,
    # sigma = 0.5 and 8e4 samples (sd of M^2 ~1.2 / sqrt(8e4)): within 1.5 %.
    signal = np.ones((10_000, 8), dtype=dtype)
    add_rician_noise(signal, 0.5, np.random.default_rng(1), block_elements=8_000)
    assert signal.dtype == dtype and np.all(signal >= 0)
    np.testing.assert_allclose(np.mean(signal.astype(np.float64) ** 2), 1.5, rtol=0.015)


def test_rician_noise_blocks_and_zero_sigma() -> None:
    base = np.linspace(0.1, 1.0, 64, dtype=np.float32).reshape(2, 4, 8)
    one, many = base.copy(), base.copy()
    add_rician_noise(one, 0.1, np.random.default_rng(3), block_elements=None)
    add_rician_noise(many, 0.1, np.random.default_rng(3))  # one block: smaller than the default
    np.testing.assert_array_equal(one, many)
    assert not np.array_equal(one, base)
    still = base.copy()
    add_rician_noise(still, 0.0, np.random.default_rng(3))
    np.testing.assert_array_equal(still, base)


def test_noise_sigma() -> None:
    assert noise_sigma([1.0, 2.0, 4.0], 20.0) == pytest.approx(0.1)
    assert noise_sigma([1.0, 2.0], np.inf) == 0.0
    assert noise_sigma([], 50.0) == 0.0
