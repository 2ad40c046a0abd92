"""Tests for oefray.physics.decay: exactness against curve_fit, dtype policy, degenerate voxels.

Every tolerance is stated where it is used. Data are synthesised here (no files, no network).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq, curve_fit
from scipy.special import j0

from oefray.physics import decay_kernel
from oefray.physics.decay import (
    B_MAX_EXPONENT,
    DecayFit,
    DecayModel,
    FitStatus,
    fit_decay,
    fit_decay_loglinear,
)

TE_EVEN = 0.0045 + 0.005 * np.arange(8)  # the Cornell scheme, s
TE_UNEVEN = np.array([3.0, 5.0, 8.5, 12.0, 17.0, 23.5, 30.0, 38.0]) * 1e-3  # s
SCHEMES = {"even": TE_EVEN, "uneven": TE_UNEVEN}


def simulate(
    rng: np.random.Generator, n: int, te_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy magnitudes (n, K) float64 with a mild qBOLD-like non-exponential component.

    s(t) = A·exp(-B t)·exp(-v·0.3·(dw t)²), A~U(0.8,1.3), B~U(8,60) s⁻¹, v~U(0.01,0.04),
    dw~U(30,120) rad/s; Rician noise |s + n1 + i·n2| with SNR~U(50,200) at echo 1.
    """
    a = rng.uniform(0.8, 1.3, n)
    b = rng.uniform(8.0, 60.0, n)
    v = rng.uniform(0.01, 0.04, n)
    dw = rng.uniform(30.0, 120.0, n)
    t = te_s[None, :]
    s = a[:, None] * np.exp(-b[:, None] * t) * np.exp(-v[:, None] * 0.3 * (dw[:, None] * t) ** 2)
    sigma = s[:, np.argmin(te_s)] / rng.uniform(50.0, 200.0, n)
    noise = sigma[:, None] * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
    return np.abs(s + noise), a, b


def ssr(m: np.ndarray, a: np.ndarray, b: np.ndarray, te_s: np.ndarray) -> np.ndarray:
    return ((m - a[:, None] * np.exp(-b[:, None] * te_s[None, :])) ** 2).sum(axis=1)


def _model(t: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * np.exp(-b * t)


def _jac(t: np.ndarray, a: float, b: float) -> np.ndarray:
    e = np.exp(-b * t)
    return np.stack([e, -a * t * e], axis=1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


# ------------------------------------------------------------------------------------------
# exactness
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_matches_curve_fit_optimum(rng: np.random.Generator, scheme: str) -> None:
    te = SCHEMES[scheme]
    n = 1000
    m, a_true, b_true = simulate(rng, n, te)
    fit = fit_decay(m, te)
    assert np.all(fit.status == FitStatus.OK)

    ref = np.full((n, 2), np.nan)
    for i in range(n):
        try:
            ref[i], _ = curve_fit(
                _model,
                te,
                m[i],
                p0=(a_true[i], b_true[i]),
                jac=_jac,
                ftol=1e-14,
                xtol=1e-14,
                gtol=1e-14,
                maxfev=100_000,
            )
        except RuntimeError:  # curve_fit did not converge: excluded, and must be rare
            pass
    conv = np.isfinite(ref).all(axis=1)
    assert conv.mean() >= 0.99
    a_ref, b_ref = ref[conv, 0], ref[conv, 1]
    ssr_ref = ssr(m[conv], a_ref, b_ref, te)

    # A, B within 1e-4 relative of curve_fit's optimum (observed ~1e-8: curve_fit's own limit).
    np.testing.assert_allclose(fit.A[conv], a_ref, rtol=1e-4, atol=0)
    np.testing.assert_allclose(fit.B[conv], b_ref, rtol=1e-4, atol=0)
    # E equals the RMS residual at curve_fit's optimum to 1e-6 relative.
    np.testing.assert_allclose(fit.E[conv], np.sqrt(ssr_ref / te.size), rtol=1e-6, atol=0)
    # Exactness: our SSR is never above curve_fit's by more than 1e-10 relative.
    ssr_ours = ssr(m[conv], fit.A[conv], fit.B[conv], te)
    assert np.all(ssr_ours <= ssr_ref * (1 + 1e-10))
    # E is the RMS residual at the reported (A, B) itself (1e-9 relative).
    np.testing.assert_allclose(fit.E, np.sqrt(ssr(m, fit.A, fit.B, te) / te.size), rtol=1e-9)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_rate_is_stationary_point(rng: np.random.Generator, scheme: str) -> None:
    """dSSR/dB = 0 at the optimum: B agrees with a bracketing root of the normal equation."""
    te = SCHEMES[scheme]
    m, _, _ = simulate(rng, 50, te)
    fit = fit_decay(m, te)
    for i in range(m.shape[0]):

        def f(b: float, mi: np.ndarray = m[i]) -> float:
            e = np.exp(-b * te)
            return float(np.dot(mi, e) * np.dot(te, e * e) - np.dot(mi, te * e) * np.dot(e, e))

        b = float(fit.B[i])
        root = brentq(f, 0.9 * b, 1.1 * b, xtol=1e-300, rtol=1e-15)
        assert abs(b / root - 1) < 1e-12  # B to 1e-12 relative


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_noise_free_exponential_is_exact(scheme: str) -> None:
    te = SCHEMES[scheme]
    a = np.array([0.8, 1.0, 1.3, 1234.5, 2e-3, 1.0, 1.0])
    b = np.array([8.0, 17.2, 60.0, 0.5, 300.0, 0.05, 1500.0])
    m = a[:, None] * np.exp(-b[:, None] * te[None, :])
    fit = fit_decay(m, te)
    assert np.all(fit.status == FitStatus.OK)
    np.testing.assert_allclose(fit.A, a, rtol=1e-10, atol=0)  # 1e-10 relative
    np.testing.assert_allclose(fit.B, b, rtol=1e-10, atol=0)
    assert np.all(fit.E <= 1e-10 * a)  # residual at rounding level


def test_design_sanity_values() -> None:
    """DESIGN.md §2: QQ signal of (1.0, 13.5, 0.55, 0.034, -0.025) -> A≈1.020, B≈17.2, E≈3.1e-3."""

    def f_s(x: float) -> float:  # Yablonskiy–Haacke by direct quadrature
        integrand = lambda u: (2 + u) * np.sqrt(1 - u) / u**2 * (1 - j0(1.5 * x * u))  # noqa: E731
        return quad(integrand, 0, 1, limit=200, epsabs=1e-13)[0] / 3

    hct, psi = 0.3567, 0.3567 * 0.34 / 1.335
    chi_ba = psi * -0.813 + (1 - psi) * -0.0377
    dw = 267.513 * 3.0 * (hct * 4 * np.pi * 0.27 * (1 - 0.55) + chi_ba + 0.025) / 3
    s = np.exp(-13.5 * TE_EVEN) * np.exp(-0.034 * np.array([f_s(dw * t) for t in TE_EVEN]))
    fit = fit_decay(s, TE_EVEN)  # 1-D signal: 0-d results
    assert fit.shape == ()
    assert abs(float(fit.A) - 1.020) < 5e-4  # quoted to 3 decimals
    assert abs(float(fit.B) - 17.2) < 0.05  # quoted to 1 decimal
    assert abs(float(fit.E) - 3.1e-3) < 5e-5  # quoted to 2 significant digits


def test_even_and_general_solvers_agree(rng: np.random.Generator) -> None:
    """Evenly spaced TEs take the exp-free r-space solver; the general B-space solver, forced on
    the same echo times (white box), must land on the same optimum: A, B, E within 1e-10."""
    te = np.linspace(0.003, 0.043, 12)
    even_model = DecayModel(te)
    general_model = DecayModel(te)
    assert even_model._uniform
    general_model._uniform = False
    m, _, _ = simulate(rng, 500, te)
    even, general = even_model.fit(m), general_model.fit(m)
    assert np.all(even.status == FitStatus.OK) and np.all(general.status == FitStatus.OK)
    for name in ("A", "B", "E"):
        np.testing.assert_allclose(getattr(even, name), getattr(general, name), rtol=1e-10)
    # A 1e-10·ΔTE jitter no longer counts as even spacing and barely moves the fit (1e-8).
    jittered = te + np.r_[0.0, 1e-10 * 0.004 * rng.standard_normal(11)]
    assert not DecayModel(jittered)._uniform
    np.testing.assert_allclose(fit_decay(m, jittered).B, even.B, rtol=1e-8)


def test_safeguarded_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A voxel the lockstep fast path cannot certify goes through the safeguarded solver.

    White box: the kernel's pure-Python twin counts the fallback calls; its results equal the
    compiled kernel's (1e-12) and the general solver's on the same echo times (1e-10).
    """

    te = TE_EVEN
    biexp = 0.8 * np.exp(-300.0 * te) + 0.2 * np.exp(-5.0 * te)  # ratio start far off
    easy = np.exp(-20.0 * te)
    m = np.array([easy, biexp, easy])
    model = DecayModel(te)
    compiled = model.fit(m)

    calls = []
    solve_even = decay_kernel._solve_even
    monkeypatch.setattr(decay_kernel, "_solve_even", lambda *a: calls.append(1) or solve_even(*a))
    out = [np.empty(3), np.empty(3), np.empty(3), np.empty(3, dtype=np.int8)]
    decay_kernel.decay_kernel.py_func(
        m, model._order, model._tau, model._uniform, model._dtau, model._t_min,
        model.b_max, model._b_atol, *out,
    )  # fmt: skip
    assert len(calls) == 1  # only the bi-exponential voxel fell back
    np.testing.assert_array_equal(out[3], [FitStatus.OK] * 3)
    for got, want in zip(out[:3], (compiled.A, compiled.B, compiled.E), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)

    general = DecayModel(te)
    general._uniform = False
    ref = general.fit(m)
    for name in ("A", "B", "E"):  # atol: E of the exact exponentials is rounding (~1e-16)
        np.testing.assert_allclose(
            getattr(compiled, name), getattr(ref, name), rtol=1e-10, atol=1e-14
        )


def test_echo_order_does_not_matter(rng: np.random.Generator) -> None:
    m, _, _ = simulate(rng, 200, TE_UNEVEN)
    perm = np.array([5, 0, 7, 2, 1, 6, 3, 4])
    for te in (TE_EVEN, TE_UNEVEN):
        fit = fit_decay(m, te)
        fit_p = fit_decay(m[:, perm], te[perm])
        # sums run in TE order either way: identical bits
        np.testing.assert_array_equal(fit.A, fit_p.A)
        np.testing.assert_array_equal(fit.B, fit_p.B)
        np.testing.assert_array_equal(fit.E, fit_p.E)


def test_te_zero_and_scale_invariance(rng: np.random.Generator) -> None:
    te = np.array([0.0, 2.0, 7.0, 11.0, 20.0]) * 1e-3
    m, _, _ = simulate(rng, 300, te)
    fit = fit_decay(m, te)
    big = fit_decay(m * 1e4, te)
    assert np.all(fit.status == FitStatus.OK)
    np.testing.assert_allclose(big.A, 1e4 * fit.A, rtol=1e-11)  # scale-free algorithm
    np.testing.assert_allclose(big.B, fit.B, rtol=1e-11)
    np.testing.assert_allclose(big.E, 1e4 * fit.E, rtol=1e-7)


# ------------------------------------------------------------------------------------------
# dtype policy, shapes, layouts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_float32_against_float64(rng: np.random.Generator, scheme: str) -> None:
    te = SCHEMES[scheme]
    m64, _, _ = simulate(rng, 2000, te)
    m32 = m64.astype(np.float32)
    f32 = fit_decay(m32, te)
    assert f32.A.dtype == f32.B.dtype == f32.E.dtype == np.float32
    assert f32.status.dtype == np.int8
    # The same (float32-representable) values as float64: only output rounding differs (1e-6).
    f32_as64 = fit_decay(m32.astype(np.float64), te)
    assert f32_as64.A.dtype == np.float64
    for name in ("A", "B", "E"):
        np.testing.assert_allclose(getattr(f32, name), getattr(f32_as64, name), rtol=1e-6)
    # Against the unrounded float64 data: A, B within 1e-5 relative (observed ~3e-7); E, a
    # residual that the 6e-8 input rounding shifts directly, within 1e-4 (observed ~1e-5).
    f64 = fit_decay(m64, te)
    np.testing.assert_allclose(f32.A, f64.A, rtol=1e-5)
    np.testing.assert_allclose(f32.B, f64.B, rtol=1e-5)
    np.testing.assert_allclose(f32.E, f64.E, rtol=1e-4)


def test_other_dtypes_become_float64() -> None:
    m = np.array([[1000, 800, 650, 530, 430, 350, 290, 240]], dtype=np.int16)
    fit = fit_decay(m, TE_EVEN)
    assert fit.A.dtype == np.float64
    assert fit.status[0] == FitStatus.OK
    big_endian = fit_decay(m.astype(">f4"), TE_EVEN)
    assert big_endian.A.dtype == np.float32
    np.testing.assert_allclose(big_endian.B, fit.B, rtol=1e-6)
    with pytest.raises(ValueError, match="complex"):
        fit_decay(m.astype(np.complex64), TE_EVEN)


def test_leading_shape_and_layouts(rng: np.random.Generator) -> None:
    m, _, _ = simulate(rng, 120, TE_EVEN)
    ref = fit_decay(m, TE_EVEN)
    vol = m.reshape(4, 5, 6, 8)
    fit = fit_decay(vol, TE_EVEN)
    assert fit.A.shape == fit.B.shape == fit.E.shape == fit.status.shape == (4, 5, 6)
    np.testing.assert_array_equal(fit.B.ravel(), ref.B)

    fortran = fit_decay(np.asfortranarray(m), TE_EVEN)  # strided rows, read in place
    np.testing.assert_array_equal(fortran.B, ref.B)
    padded = np.zeros((120, 16))
    padded[:, ::2] = m
    strided = fit_decay(padded[:, ::2], TE_EVEN)
    np.testing.assert_array_equal(strided.A, ref.A)
    transposed = fit_decay(vol.transpose(2, 1, 0, 3), TE_EVEN)  # needs a copy to flatten
    np.testing.assert_array_equal(transposed.B, fit.B.transpose(2, 1, 0))


def test_empty_input() -> None:
    for shape in [(0, 8), (3, 0, 8)]:
        fit = fit_decay(np.zeros(shape, dtype=np.float32), TE_EVEN)
        assert fit.A.shape == fit.status.shape == shape[:-1]
        assert fit.A.dtype == np.float32
    fit = fit_decay_loglinear(np.zeros((0, 8)), TE_EVEN)
    assert fit.B.shape == (0,)


def test_decay_fit_container() -> None:
    fit = fit_decay(np.array([[2.0, 1.0], [1.0, 2.0]]), [0.01, 0.02])
    assert fit.shape == (2,)
    np.testing.assert_array_equal(fit.ok, [True, False])
    d = fit.to_dict()
    assert sorted(d) == ["A", "B", "E", "status"]
    assert isinstance(fit, DecayFit)
    with pytest.raises(AttributeError):
        fit.A = fit.B  # type: ignore[misc]  # frozen


# ------------------------------------------------------------------------------------------
# degenerate voxels
# ------------------------------------------------------------------------------------------


def test_degenerate_voxels_do_not_spoil_the_batch(rng: np.random.Generator) -> None:
    te = TE_EVEN
    good, _, _ = simulate(rng, 10, te)
    ramp = np.linspace(0.5, 1.0, 8)
    first_only = np.zeros(8)
    first_only[0] = 1.0
    bad = {
        FitStatus.ZERO: [np.zeros(8), -np.exp(-20 * te), np.r_[0.5, -np.ones(7)]],
        FitStatus.CONSTANT: [np.full(8, 0.7)],
        FitStatus.NONFINITE: [
            np.r_[np.nan, good[0, 1:]],
            np.r_[good[0, :5], np.inf, good[0, 6:]],
            np.r_[-np.inf, good[0, 1:]],
        ],
        FitStatus.NOT_DECAYING: [ramp, np.exp(+10 * te)],
        FitStatus.NO_CONVERGENCE: [first_only],  # optimum at B -> inf
    }
    rows, codes = [], []
    for i in range(good.shape[0]):  # interleave good and bad voxels
        rows.append(good[i])
        codes.append(FitStatus.OK)
    k = 1
    for code, sigs in bad.items():
        for s in sigs:
            rows.insert(k, s)
            codes.insert(k, code)
            k += 2
    batch = np.array(rows)
    codes_arr = np.array(codes)
    for dtype in (np.float64, np.float32):
        fit = fit_decay(batch.astype(dtype), te)
        np.testing.assert_array_equal(fit.status, codes_arr)
        isbad = codes_arr != FitStatus.OK
        for name in ("A", "B", "E"):
            assert np.all(np.isnan(getattr(fit, name)[isbad]))
        alone = fit_decay(good.astype(dtype), te)  # good voxels: same bits as fitted alone
        np.testing.assert_array_equal(fit.A[~isbad], alone.A)
        np.testing.assert_array_equal(fit.B[~isbad], alone.B)
        np.testing.assert_array_equal(fit.E[~isbad], alone.E)


def test_rate_cap_is_documented() -> None:
    model = DecayModel(TE_UNEVEN)
    assert model.b_max == pytest.approx(B_MAX_EXPONENT / (TE_UNEVEN[1] - TE_UNEVEN[0]), rel=1e-12)
    # A very fast but finite decay below the cap is still fitted exactly (1e-10 relative).
    fit = fit_decay(np.exp(-0.2 * model.b_max * TE_UNEVEN), TE_UNEVEN)
    assert fit.status == FitStatus.OK
    assert float(fit.B) == pytest.approx(0.2 * model.b_max, rel=1e-10)


def test_too_few_echoes_and_two_echoes() -> None:
    one = fit_decay(np.ones((3, 1)), [0.005])
    np.testing.assert_array_equal(one.status, [FitStatus.TOO_FEW_ECHOES] * 3)
    assert np.all(np.isnan(one.A)) and np.all(np.isnan(one.E))
    none = fit_decay(np.ones((2, 0)), [])
    np.testing.assert_array_equal(none.status, [FitStatus.TOO_FEW_ECHOES] * 2)
    loglin = fit_decay_loglinear(np.ones((2, 1)), [0.005])
    np.testing.assert_array_equal(loglin.status, [FitStatus.TOO_FEW_ECHOES] * 2)

    # Two echoes determine the fit exactly: B = ln(M1/M2)/ΔTE (1e-12 relative), E = 0.
    te = np.array([0.004, 0.011])
    m = np.array([[1.0, 0.6], [0.6, 1.0], [0.0, 0.0], [0.3, 0.3]])
    fit = fit_decay(m, te)
    np.testing.assert_array_equal(
        fit.status,
        [FitStatus.OK, FitStatus.NOT_DECAYING, FitStatus.ZERO, FitStatus.CONSTANT],
    )
    b = np.log(1.0 / 0.6) / 0.007
    assert fit.B[0] == pytest.approx(b, rel=1e-12)
    assert fit.A[0] == pytest.approx(np.exp(b * 0.004), rel=1e-12)
    assert fit.E[0] < 1e-14


# ------------------------------------------------------------------------------------------
# mask, arguments
# ------------------------------------------------------------------------------------------


def test_mask_gathers_and_scatters(rng: np.random.Generator) -> None:
    m, _, _ = simulate(rng, 60, TE_UNEVEN)
    vol = m.reshape(3, 4, 5, 8).astype(np.float32)
    mask = rng.random((3, 4, 5)) < 0.5
    vol[~mask] = np.nan  # would be NONFINITE if the kernel saw them
    model = DecayModel(TE_UNEVEN)
    fit = model.fit(vol, mask=mask)
    assert fit.A.shape == (3, 4, 5) and fit.A.dtype == np.float32
    assert np.all(fit.status[~mask] == FitStatus.MASKED)
    assert np.all(np.isnan(fit.B[~mask]))
    inside = model.fit(vol[mask])
    np.testing.assert_array_equal(fit.status[mask], inside.status)
    np.testing.assert_array_equal(fit.B[mask], inside.B)
    np.testing.assert_array_equal(fit.E[mask], inside.E)

    empty = model.fit(vol, mask=np.zeros((3, 4, 5), dtype=bool))
    assert np.all(empty.status == FitStatus.MASKED)
    few = DecayModel([0.01]).fit(np.ones((2, 2, 1)), mask=np.array([[True, False], [False, True]]))
    too_few, masked = FitStatus.TOO_FEW_ECHOES, FitStatus.MASKED
    np.testing.assert_array_equal(few.status, [[too_few, masked], [masked, too_few]])
    with pytest.raises(ValueError, match="mask"):
        model.fit(vol, mask=mask.ravel())


@pytest.mark.parametrize(
    "te",
    [
        [0.005, np.nan, 0.015],
        [0.005, np.inf],
        [-0.001, 0.004],
        [0.005, 0.010, 0.005],
        [[0.005, 0.010]],
    ],
)
def test_invalid_echo_times_raise(te: list) -> None:
    with pytest.raises(ValueError, match="te_s"):
        DecayModel(te)
    with pytest.raises(ValueError, match="te_s"):
        fit_decay_loglinear(np.ones((1, 2)), te)


def test_echo_count_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        fit_decay(np.ones((4, 7)), TE_EVEN)
    with pytest.raises(ValueError):
        fit_decay(np.float64(1.0), [0.01])


def test_model_holds_validated_read_only_echo_times() -> None:
    te = list(TE_UNEVEN)
    model = DecayModel(te)
    te[0] = 99.0  # the model keeps its own copy
    np.testing.assert_array_equal(model.te_s, TE_UNEVEN)
    assert not model.te_s.flags.writeable
    assert model.n_echoes == 8
    assert "DecayModel" in repr(model)


# ------------------------------------------------------------------------------------------
# log-linear reference
# ------------------------------------------------------------------------------------------


def test_loglinear_reference(rng: np.random.Generator) -> None:
    te = TE_UNEVEN
    a = np.array([0.9, 1.2])
    b = np.array([15.0, 45.0])
    exact = a[:, None] * np.exp(-b[:, None] * te)
    ll = fit_decay_loglinear(exact, te)
    np.testing.assert_allclose(ll.A, a, rtol=1e-12)  # exact for noise-free data (1e-12)
    np.testing.assert_allclose(ll.B, b, rtol=1e-12)

    m, _, _ = simulate(rng, 500, te)
    ll = fit_decay_loglinear(m.astype(np.float32), te)
    ex = fit_decay(m.astype(np.float32), te)
    assert ll.B.dtype == np.float32
    assert np.all(ll.status == FitStatus.OK)
    assert np.all(ll.E >= ex.E * (1 - 1e-6))  # not the optimum: never a smaller residual

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning leaks from log(0) etc.
        bad = fit_decay_loglinear(
            np.array(
                [
                    np.r_[0.0, m[0, 1:]],
                    np.full(8, 0.4),
                    np.linspace(0.5, 1, 8),
                    np.r_[np.nan, m[0, 1:]],
                    m[0],
                ]
            ),
            te,
        )
    np.testing.assert_array_equal(
        bad.status,
        [
            FitStatus.ZERO,
            FitStatus.CONSTANT,
            FitStatus.NOT_DECAYING,
            FitStatus.NONFINITE,
            FitStatus.OK,
        ],
    )
    assert np.all(np.isnan(bad.A[:4]))


# ------------------------------------------------------------------------------------------
# layering and import-time behaviour
# ------------------------------------------------------------------------------------------


def test_import_is_light_and_lazy() -> None:
    code = (
        "import sys\n"
        "import oefray.physics.decay\n"
        "import oefray.physics.decay_kernel as d\n"
        "heavy = ('ray', 'mlflow', 'nibabel', 'keras', 'tensorflow')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert d.decay_kernel.signatures == [], 'compiled at import'\n"
        "assert type(d.decay_kernel._cache).__name__ != 'NullCache', 'cache=True'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_status_codes_are_stable() -> None:
    assert {s.name: int(s) for s in FitStatus} == {
        "OK": 0,
        "NONFINITE": 1,
        "ZERO": 2,
        "CONSTANT": 3,
        "NOT_DECAYING": 4,
        "TOO_FEW_ECHOES": 5,
        "NO_CONVERGENCE": 6,
        "MASKED": 7,
    }
    # the kernel's plain-int copies of the codes it writes
    for name in ("OK", "NONFINITE", "ZERO", "CONSTANT", "NOT_DECAYING", "NO_CONVERGENCE"):
        assert getattr(decay_kernel, f"_{name}") == FitStatus[name]
