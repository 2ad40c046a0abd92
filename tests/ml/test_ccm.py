"""Tests of the CCM baseline (oefray.ml.ccm) on noise-free simulated voxels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oefray.ml.ccm import CCMConfig, CCMLibrary, build_library, estimate_snr, predict
from oefray.physics.decay import FitStatus, fit_decay
from oefray.physics.measurement import add_rician_noise
from oefray.physics.qq import qbold_signal, qsm_susceptibility

TE_DEFAULT = 0.0045 + 0.005 * np.arange(8)  # the Cornell scheme, s
TE_OTHER = np.array([0.002, 0.005, 0.009, 0.014, 0.020, 0.027])  # unequal spacing, 6 echoes
N_REF = 20_000
N_TEST = 4_000


def draw_params(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5) parameters in PARAMETERS order, from realistic uniform ranges."""
    return np.column_stack(
        [
            rng.uniform(0.45, 0.8, n),  # Y
            rng.uniform(0.01, 0.05, n),  # v
            rng.uniform(10.0, 30.0, n),  # R2, s^-1
            rng.uniform(1.0, 1.2, n),  # S0
            rng.uniform(-0.06, 0.08, n),  # chi_nb, ppm
        ]
    )


def features_of(params: np.ndarray, te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free [A, B, E, S] the same way as the library, and the OK mask."""
    y, v, r2, s0, chi_nb = params.T
    fit = fit_decay(qbold_signal(s0, r2, y, v, chi_nb, te), te)
    feats = np.column_stack([fit.A, fit.B, fit.E, qsm_susceptibility(y, v, chi_nb)])
    return feats, fit.status == FitStatus.OK


def rmse(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean((pred - true) ** 2, axis=0))


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return draw_params(N_REF, np.random.default_rng(11))


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return draw_params(N_TEST, np.random.default_rng(12))


@pytest.fixture(scope="module")
def library(reference: np.ndarray) -> CCMLibrary:
    return build_library(reference, TE_DEFAULT, CCMConfig(clusters=256, seed=0))


def test_library_shapes_and_units(library: CCMLibrary, reference: np.ndarray) -> None:
    assert library.centroid_params.shape == (256, 5)
    assert library.centroid_features.shape == (256, 4)
    assert library.feature_mean.shape == library.feature_std.shape == (4,)
    np.testing.assert_array_equal(library.te_s, TE_DEFAULT)
    # Centroids are in physical units, inside the range of the reference parameters.
    assert np.all(library.centroid_params >= reference.min(axis=0) - 1e-12)
    assert np.all(library.centroid_params <= reference.max(axis=0) + 1e-12)
    # B (s^-1) of the centroids lies around R2 + the BOLD part: 10..30 s^-1 plus a few s^-1.
    assert 8.0 < library.centroid_features[:, 1].min() < library.centroid_features[:, 1].max() < 60


def test_predicts_held_out_voxels(library: CCMLibrary, held_out: np.ndarray) -> None:
    feats, ok = features_of(held_out, TE_DEFAULT)
    assert ok.all()
    pred = predict(library, feats)
    err = rmse(pred, held_out)
    std = held_out.std(axis=0)
    # Well determined by (A, B, E, chi): R2, S0, chi_nb within 30 % of their spread
    # (measured ~0.22, 0.20, 0.20 of std with K = 256).
    assert err[2] < 0.3 * std[2]
    assert err[3] < 0.3 * std[3]
    assert err[4] < 0.3 * std[4]
    # Y and v are weakly identifiable from noise-free (A, B, E, chi) (measured ~0.85 and ~0.65 of
    # std): assert only that the lookup beats predicting the mean, with some margin for v.
    assert err[0] < 1.0 * std[0]
    assert err[1] < 0.8 * std[1]


def test_exact_hit_returns_centroid(library: CCMLibrary) -> None:
    pred = predict(library, library.centroid_features)
    np.testing.assert_allclose(pred, library.centroid_params, rtol=0, atol=1e-9)


def test_more_clusters_lower_error(reference: np.ndarray, held_out: np.ndarray) -> None:
    feats, _ = features_of(held_out, TE_DEFAULT)
    std = held_out.std(axis=0)
    errors = []
    for k in (8, 32, 128):
        lib = build_library(reference, TE_DEFAULT, CCMConfig(clusters=k, seed=3))
        # Mean over parameters of RMSE relative to each parameter's spread.
        errors.append(float(np.mean(rmse(predict(lib, feats), held_out) / std)))
    assert errors[0] > errors[1] > errors[2], errors


def test_te_robust_by_resimulation(reference: np.ndarray, held_out: np.ndarray) -> None:
    lib = build_library(reference, TE_OTHER, CCMConfig(clusters=256, seed=0))
    np.testing.assert_array_equal(lib.te_s, TE_OTHER)
    feats, ok = features_of(held_out, TE_OTHER)
    assert ok.all()
    err = rmse(predict(lib, feats), held_out)
    std = held_out.std(axis=0)
    assert err[2] < 0.3 * std[2]  # R2
    assert err[3] < 0.3 * std[3]  # S0
    assert err[4] < 0.3 * std[4]  # chi_nb
    assert err[0] < 1.0 * std[0]  # Y (measured ~0.70 of std)
    assert err[1] < 1.0 * std[1]  # v (measured ~0.82 of std)
    # A library simulated at the default scheme is the wrong one for these features. The qBOLD
    # decay is close to mono-exponential, so the penalty is modest (measured: mean relative RMSE
    # ~0.46 vs ~0.49, R2 ~0.20 vs ~0.24 of std), but matching the echo times must not be worse.
    lib_default = build_library(reference, TE_DEFAULT, CCMConfig(clusters=256, seed=0))
    err_mismatched = rmse(predict(lib_default, feats), held_out)
    assert np.mean(err / std) < np.mean(err_mismatched / std)
    assert err[2] < err_mismatched[2]


def test_nan_rows_give_nan(library: CCMLibrary, held_out: np.ndarray) -> None:
    feats, _ = features_of(held_out[:10], TE_DEFAULT)
    feats[3, 1] = np.nan
    feats[7, :] = np.nan
    feats[8, 0] = np.inf
    pred = predict(library, feats)
    assert pred.shape == (10, 5)
    bad = np.zeros(10, dtype=bool)
    bad[[3, 7, 8]] = True
    assert np.all(np.isnan(pred[bad]))
    assert np.all(np.isfinite(pred[~bad]))
    assert np.all(np.isnan(predict(library, np.full((2, 4), np.nan))))
    assert predict(library, np.empty((0, 4))).shape == (0, 5)


def test_prediction_is_convex_combination(library: CCMLibrary, held_out: np.ndarray) -> None:
    feats, _ = features_of(held_out[:500], TE_DEFAULT)
    pred = predict(library, feats)
    lo, hi = library.centroid_params.min(axis=0), library.centroid_params.max(axis=0)
    assert np.all(pred >= lo - 1e-12) and np.all(pred <= hi + 1e-12)
    # neighbours=1 is plain nearest-centroid lookup: every row is some centroid's parameters.
    lib1 = CCMLibrary.from_dict({**library.to_dict(), "config": {"clusters": 256, "neighbours": 1}})
    pred1 = predict(lib1, feats)
    matches = (pred1[:, None, :] == lib1.centroid_params[None, :, :]).all(axis=2)
    assert np.all(matches.any(axis=1))


def test_to_dict_round_trip(library: CCMLibrary, held_out: np.ndarray) -> None:
    data = json.loads(json.dumps(library.to_dict()))
    again = CCMLibrary.from_dict(data)
    for name in ("centroid_params", "centroid_features", "feature_mean", "feature_std", "te_s"):
        np.testing.assert_array_equal(getattr(again, name), getattr(library, name))
    assert again.config == library.config
    feats, _ = features_of(held_out[:100], TE_DEFAULT)
    np.testing.assert_array_equal(predict(again, feats), predict(library, feats))


def test_build_is_seeded(reference: np.ndarray) -> None:
    cfg = CCMConfig(clusters=16, library_size=5_000, seed=7)
    a = build_library(reference, TE_DEFAULT, cfg)
    b = build_library(reference, TE_DEFAULT, cfg)
    np.testing.assert_array_equal(a.centroid_params, b.centroid_params)
    c = build_library(reference, TE_DEFAULT, CCMConfig(clusters=16, library_size=5_000, seed=8))
    assert not np.array_equal(a.centroid_params, c.centroid_params)


def test_noisy_library_still_works(reference: np.ndarray, held_out: np.ndarray) -> None:
    lib = build_library(reference, TE_DEFAULT, CCMConfig(clusters=64, snr=100.0))
    assert np.all(np.isfinite(lib.centroid_features))
    feats, _ = features_of(held_out, TE_DEFAULT)
    err = rmse(predict(lib, feats), held_out)
    std = held_out.std(axis=0)
    # Noise blurs E (the BOLD signature), but R2 and S0 remain well determined.
    assert err[2] < 0.5 * std[2]
    assert err[3] < 0.5 * std[3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clusters": 0},
        {"clusters": 2.5},
        {"neighbours": 0},
        {"power": -1.0},
        {"power": float("nan")},
        {"library_size": 0},
        {"seed": -1},
        {"snr": 0.0},
        {"snr": float("inf")},
        {"clusters": True},
    ],
)
def test_invalid_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CCMConfig(**kwargs)


def test_invalid_inputs_raise(library: CCMLibrary, reference: np.ndarray) -> None:
    with pytest.raises(ValueError):
        build_library(reference[:, :4], TE_DEFAULT)
    with pytest.raises(ValueError):
        build_library(np.where(np.arange(5) == 0, np.nan, reference[:10]), TE_DEFAULT)
    with pytest.raises(ValueError):
        build_library(reference, TE_DEFAULT[:1])
    with pytest.raises(ValueError):  # fewer voxels than clusters
        build_library(reference[:10], TE_DEFAULT, CCMConfig(clusters=16))
    with pytest.raises(ValueError):
        predict(library, np.zeros((3, 5)))
    with pytest.raises(ValueError):
        CCMLibrary.from_dict({**library.to_dict(), "feature_std": [1.0, 0.0, 1.0, 1.0]})


def test_estimate_snr_closed_form() -> None:
    # median(E) = 0.01 over K = 8 echoes: sigma = 0.01 sqrt(8 / 6); the median fitted echo-1
    # signal A exp(-B TE_min) is 2 exp(-20 * 0.0045) (the middle voxel).
    a = np.array([1.0, 2.0, 3.0])
    b = np.full(3, 20.0)
    e = np.array([0.005, 0.01, 0.02])
    expected = 2.0 * np.exp(-20.0 * TE_DEFAULT[0]) / (0.01 * np.sqrt(8 / 6))
    assert estimate_snr(a, b, e, TE_DEFAULT) == pytest.approx(expected, rel=1e-12)
    assert estimate_snr(a, b, np.zeros(3), TE_DEFAULT) is None  # noise-free residuals
    assert estimate_snr(a, b, e, TE_DEFAULT[::-1]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="te_s"):
        estimate_snr(a, b, e, TE_DEFAULT[:1])


@pytest.mark.parametrize("snr", [50.0, 200.0])
def test_estimate_snr_recovers_the_simulated_snr(snr: float) -> None:
    # Mono-exponential voxels with Rician noise at a known echo-1 SNR, fitted exactly. The
    # residual E of pure noise is sigma sqrt(chi2_6 / 8); its median sits below the RMS by
    # sqrt(median(chi2_6) / 6) = 0.944, so the estimate is 1/0.944 = 1.059 times the truth:
    # within 2 % of that (2e4 voxels), and within 10 % of the truth.
    rng = np.random.default_rng(11)
    n = 20_000
    a_true, b_true = rng.uniform(0.9, 1.2, n), rng.uniform(10.0, 40.0, n)
    signal = a_true[:, None] * np.exp(-b_true[:, None] * TE_DEFAULT)
    sigma = float(np.median(signal[:, 0])) / snr
    add_rician_noise(signal, sigma, rng)
    fit = fit_decay(signal, TE_DEFAULT)
    ok = fit.status == FitStatus.OK
    got = estimate_snr(fit.A[ok], fit.B[ok], fit.E[ok], TE_DEFAULT)
    assert got is not None
    np.testing.assert_allclose(got, snr / np.sqrt(5.348 / 6.0), rtol=0.02)
    np.testing.assert_allclose(got, snr, rtol=0.10)


def test_import_is_pure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, oefray.ml.ccm; "
        "bad = [m for m in ('tensorflow', 'keras', 'ray', 'mlflow') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
