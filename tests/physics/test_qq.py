"""Tests of the QQ forward model (DESIGN.md section 2)."""

import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import curve_fit

from oefray.physics import constants as c
from oefray.physics import qq
from oefray.physics.fs import f_s
from oefray.physics.qq import characteristic_frequency, oef, qbold_signal, qsm_susceptibility


@pytest.fixture
def te_s() -> np.ndarray:
    """TE = 4.5, 9.5, ..., 39.5 ms (8 echoes), in seconds."""
    return (4.5 + 5.0 * np.arange(8)) * 1e-3


@pytest.fixture
def sanity_params() -> dict[str, float]:
    return {"S0": 1.0, "R2": 13.5, "Y": 0.55, "v": 0.034, "chi_nb": -0.025}


@pytest.fixture
def random_params() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 257
    return {
        "S0": rng.uniform(0.8, 1.3, n),
        "R2": rng.uniform(5.0, 30.0, n),
        "Y": rng.uniform(0.2, 0.95, n),
        "v": rng.uniform(0.005, 0.12, n),
        "chi_nb": rng.uniform(-0.2, 0.2, n),
    }


def test_constants() -> None:
    # Derived constants as tabulated in DESIGN.md section 2 (to the digits given there).
    assert c.DCHI0 == pytest.approx(3.393, abs=5e-4)
    assert c.PSI_HB == pytest.approx(0.0908, abs=5e-5)
    assert c.CHI_BA == pytest.approx(-0.1081, abs=5e-5)
    assert c.PARAMETERS == ("Y", "v", "R2", "S0", "chi_nb")


def test_sanity_values(te_s: np.ndarray, sanity_params: dict[str, float]) -> None:
    p = sanity_params
    # dw to 0.1 rad/s, chi to 5e-4 ppm.
    assert characteristic_frequency(p["Y"], p["chi_nb"]) == pytest.approx(123.5, abs=0.1)
    assert qsm_susceptibility(p["Y"], p["v"], p["chi_nb"]) == pytest.approx(-0.011, abs=5e-4)
    signal = qbold_signal(p["S0"], p["R2"], p["Y"], p["v"], p["chi_nb"], te_s)
    assert signal.shape == (8,)
    (a, b), _ = curve_fit(lambda t, a, b: a * np.exp(-b * t), te_s, signal, p0=(1.0, 15.0))
    rms = np.sqrt(np.mean((signal - a * np.exp(-b * te_s)) ** 2))
    # A to 0.005, B to 0.1 s^-1, RMS residual E to 2e-4.
    assert a == pytest.approx(1.020, abs=0.005)
    assert b == pytest.approx(17.2, abs=0.1)
    assert rms == pytest.approx(3.1e-3, abs=2e-4)


def test_signal_matches_formula(te_s: np.ndarray, random_params: dict[str, np.ndarray]) -> None:
    # Equation of DESIGN.md section 2 evaluated directly: rtol 1e-12.
    p = random_params
    dw = characteristic_frequency(p["Y"], p["chi_nb"], b0_t=7.0)
    expected = (
        p["S0"][:, None]
        * np.exp(-p["R2"][:, None] * te_s)
        * np.exp(-p["v"][:, None] * f_s(dw[:, None] * te_s))
    )
    got = qbold_signal(p["S0"], p["R2"], p["Y"], p["v"], p["chi_nb"], te_s, b0_t=7.0)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0.0)


def test_characteristic_frequency_formula() -> None:
    # Linear in B0 and in (1 - Y) and chi_nb; rtol 1e-14.
    y, chi = np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.0, -0.1])
    expected = c.GAMMA * 3.0 / 3.0 * (c.HCT * c.DCHI0 * (1 - y) + c.CHI_BA - chi)
    np.testing.assert_allclose(characteristic_frequency(y, chi), expected, rtol=1e-14)
    np.testing.assert_allclose(
        characteristic_frequency(y, chi, b0_t=1.5), expected / 2.0, rtol=1e-14
    )


def test_qsm_limits() -> None:
    # v = 0: chi = chi_nb exactly; linear in v; rtol 1e-14.
    chi_nb = np.array([-0.1, 0.0, 0.05])
    np.testing.assert_array_equal(qsm_susceptibility(0.6, 0.0, chi_nb), chi_nb)
    y, v = 0.6, 0.05
    blood = c.CHI_BA / c.ALPHA + c.PSI_HB * c.DCHI_HB * ((1 - (1 - c.ALPHA) * c.YA) / c.ALPHA - y)
    expected = blood * v + (1 - v / c.ALPHA) * chi_nb
    np.testing.assert_allclose(qsm_susceptibility(y, v, chi_nb), expected, rtol=1e-14)


def test_oef() -> None:
    assert oef(0.98) == 0.0
    assert oef(c.YA / 2) == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(oef(np.array([0.49, 0.98])), [0.5, 0.0], atol=1e-15)
    assert oef(np.float32(0.6)).dtype == np.float32


def test_signal_at_te_zero_is_s0(random_params: dict[str, np.ndarray]) -> None:
    p = random_params
    signal = qbold_signal(p["S0"], p["R2"], p["Y"], p["v"], p["chi_nb"], [0.0, 0.01])
    np.testing.assert_array_equal(signal[:, 0], p["S0"])
    assert np.all(signal[:, 1] < p["S0"])


def test_broadcasting_shapes(te_s: np.ndarray) -> None:
    s0 = np.linspace(0.9, 1.1, 3).reshape(3, 1, 1)
    y = np.linspace(0.4, 0.8, 4).reshape(1, 4, 1)
    v = np.linspace(0.01, 0.05, 5)
    signal = qbold_signal(s0, 13.5, y, v, -0.025, te_s)
    assert signal.shape == (3, 4, 5, 8)
    # Each element equals the scalar call (rtol 1e-15: identical float64 arithmetic).
    for i, j, k in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        scalar = qbold_signal(s0[i, 0, 0], 13.5, y[0, j, 0], v[k], -0.025, te_s)
        np.testing.assert_allclose(signal[i, j, k], scalar, rtol=1e-15)
    assert qbold_signal(1.0, 13.5, 0.55, 0.034, -0.025, te_s).shape == (8,)
    assert qbold_signal(np.ones((0, 2)), 13.5, 0.55, 0.034, -0.025, te_s).shape == (0, 2, 8)
    assert characteristic_frequency(y, np.zeros((2, 1, 1, 1))).shape == (2, 1, 4, 1)
    assert qsm_susceptibility(y, v, 0.0).shape == (1, 4, 5)


def test_float32_preserved(te_s: np.ndarray, random_params: dict[str, np.ndarray]) -> None:
    p = random_params
    p32 = {k: a.astype(np.float32) for k, a in p.items()}
    s32 = qbold_signal(**p32, te_s=te_s)
    assert s32.dtype == np.float32
    # float32 against the float64 reference on the same float32 inputs: rtol 1e-6.
    s64 = qbold_signal(**{k: a.astype(np.float64) for k, a in p32.items()}, te_s=te_s)
    assert s64.dtype == np.float64
    np.testing.assert_allclose(s32, s64, rtol=1e-6)
    # Python scalars do not promote; float64 arrays and integers give float64.
    assert qbold_signal(p32["S0"], 13.5, p32["Y"], 0.03, 0.0, te_s).dtype == np.float32
    assert qbold_signal(p32["S0"], p["R2"], p32["Y"], 0.03, 0.0, te_s).dtype == np.float64
    assert qbold_signal(1, 13, 0.5, 0.03, 0, te_s).dtype == np.float64
    assert characteristic_frequency(p32["Y"], 0.0).dtype == np.float32
    assert qsm_susceptibility(p32["Y"], p32["v"], p32["chi_nb"]).dtype == np.float32
    assert qsm_susceptibility(0.5, 0.03, 0.0).dtype == np.float64


@pytest.mark.parametrize("chunk", [1, 7, 256, 10_000])
def test_chunking_does_not_change_result(
    monkeypatch: pytest.MonkeyPatch,
    te_s: np.ndarray,
    random_params: dict[str, np.ndarray],
    chunk: int,
) -> None:
    # Chunk sizes of 1, fewer than and more than the 257 voxels: identical results.
    p = random_params
    reference = qbold_signal(**p, te_s=te_s)
    monkeypatch.setattr(qq, "CHUNK_VOXELS", chunk)
    np.testing.assert_array_equal(qbold_signal(**p, te_s=te_s), reference)


def test_negative_frequency_uses_even_f_s(te_s: np.ndarray) -> None:
    # chi_nb large enough that dw < 0: the dephasing depends on |dw| only.
    y, chi_nb = 0.9, 0.5
    assert characteristic_frequency(y, chi_nb) < 0
    dw = abs(float(characteristic_frequency(y, chi_nb)))
    expected = np.exp(-10.0 * te_s - 0.05 * f_s(dw * te_s))
    np.testing.assert_allclose(qbold_signal(1.0, 10.0, y, 0.05, chi_nb, te_s), expected, rtol=1e-14)


def test_nan_parameters_propagate(te_s: np.ndarray) -> None:
    signal = qbold_signal(np.array([1.0, np.nan]), 13.5, 0.55, 0.034, -0.025, te_s)
    assert np.all(np.isfinite(signal[0])) and np.all(np.isnan(signal[1]))


@pytest.mark.parametrize("bad_te", [np.zeros((2, 3)), [-0.001, 0.01], [0.01, np.nan], 0.01])
def test_bad_echo_times_raise(bad_te: object) -> None:
    with pytest.raises(ValueError):
        qbold_signal(1.0, 13.5, 0.55, 0.034, -0.025, bad_te)  # type: ignore[arg-type]


def test_physics_imports_no_heavy_frameworks() -> None:
    code = (
        "import sys\n"
        "import oefray.physics.qq, oefray.physics.fs, oefray.physics.constants\n"
        "bad = [m for m in ('ray', 'mlflow', 'nibabel', 'keras', 'tensorflow', 'mpmath')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
