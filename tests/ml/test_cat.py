"""CAT (:mod:`oefray.ml.cat`): features, the BIC rule, cluster sums and solutions, checked against
direct computation, closed forms and the forward model of :mod:`oefray.physics.qq`."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.config import DEFAULT_ECHOES
from oefray.ml.cat import (
    assign,
    cluster_sums,
    evolution_features,
    fit_clusters,
    solve_clusters,
    starts,
    voxel_bounds,
)
from oefray.physics.constants import PARAMETERS
from oefray.physics.qq import qbold_signal, qsm_susceptibility
from oefray.physics.qq_solve import QQ_BOUNDS, qq_cost

TE = np.asarray(DEFAULT_ECHOES.te_s)


def test_evolution_features_are_echoes_over_echo_one_then_qsm():
    signal = np.array([[2.0, 1.0, 0.5], [4.0, 3.0, 2.0]])
    x = evolution_features(signal, [0.1, -0.2])
    np.testing.assert_allclose(x, [[0.5, 0.25, 0.1], [0.75, 0.5, -0.2]])
    with pytest.raises(ValueError, match="E >= 2"):
        evolution_features(signal[:, :1], [0.1, -0.2])


def _blobs(seed: int = 0, n: int = 400):
    """Three elongated (correlated-noise) blobs in (3 normalised echoes, QSM) space."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.9, 0.8, 0.7, 0.0], [0.8, 0.6, 0.4, 0.1], [0.7, 0.5, 0.3, -0.1]])
    mix = np.array(
        [[1.0, 0.9, 0.8, 0.0], [0.0, 0.3, 0.4, 0.0], [0.0, 0.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.3]]
    )
    pts = np.concatenate([c + rng.normal(0, 0.01, (n, 4)) @ mix for c in centres])
    return np.column_stack([np.ones(len(pts)), pts[:, :3]]), pts[:, 3]


def test_the_bic_rule_finds_the_blobs_and_is_the_mixtures_bic():
    """Three correlated-noise blobs: the rule picks three of 1..8; the BIC recomputed from the
    fitted mixture with scipy's multivariate normal; assignment = the most probable component."""
    from scipy.stats import multivariate_normal

    signal, chi = _blobs()
    fitted = fit_clusters(signal, chi, counts=(1, 2, 3, 4, 6, 8), seed=1)
    assert fitted.k == 3 and min(fitted.bic, key=fitted.bic.get) == 3
    z = (evolution_features(signal, chi) - fitted.mean) / fitted.scale
    gm = fitted.model
    dens = np.column_stack(
        [
            w * multivariate_normal(m, c).pdf(z)
            for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_, strict=True)
        ]
    )
    n, d = z.shape
    p = 3 * (d + d * (d + 1) // 2) + 2
    bic = -2 * np.log(dens.sum(axis=1)).sum() + p * np.log(n)
    assert fitted.bic[3] == pytest.approx(bic, rel=1e-6)
    got = assign(fitted, signal, chi)
    np.testing.assert_array_equal(got, np.argmax(dens, axis=1))
    for b in range(3):  # every blob is one cluster
        assert len(np.unique(got[b * 400 : (b + 1) * 400])) == 1
    assert len(np.unique(got)) == 3
    bad = signal.copy()
    bad[5, 2] = np.nan
    assert assign(fitted, bad, chi)[5] == -1
    with pytest.raises(ValueError, match="non-finite"):
        fit_clusters(bad, chi)


def test_cluster_sums_are_additive_and_normalised_by_echo_one():
    rng = np.random.default_rng(3)
    signal = rng.uniform(0.5, 2.0, (200, 5))
    chi = rng.normal(0, 0.1, 200)
    labels = rng.integers(-1, 4, 200)
    whole = cluster_sums(labels, signal, chi, 4)
    halves = [
        cluster_sums(labels[s], signal[s], chi[s], 4) for s in (slice(0, 77), slice(77, None))
    ]
    for a, b, c in zip(whole, *halves, strict=True):
        np.testing.assert_allclose(a, b + c, rtol=1e-12)
    for k in range(4):
        sel = labels == k
        np.testing.assert_allclose(whole[0][k], (signal[sel] / signal[sel, :1]).sum(axis=0))
        assert whole[1][k] == pytest.approx(chi[sel].sum()) and whole[2][k] == sel.sum()


def test_cluster_solutions_fit_noise_free_cluster_signals():
    """Noise-free mean signals of known parameters: the best of the multistart solves reaches
    (numerically) zero misfit, and no worse than the truth itself."""
    truth = np.array(
        [[0.6, 0.03, 15.0, 1.2, 0.0], [0.75, 0.02, 12.0, 1.1, 0.02], [0.45, 0.04, 20.0, 1.3, -0.02]]
    )
    y, v, r2, s0, chi_nb = truth.T
    signal = qbold_signal(s0, r2, y, v, chi_nb, TE)
    chi = qsm_susceptibility(y, v, chi_nb)
    n = np.array([50, 80, 20])
    norm = signal / signal[:, :1]
    sums, chi_sums = norm * n[:, None], chi * n
    got = solve_clusters(sums, chi_sums, n, TE, w=25.0)
    cost = qq_cost(got, norm, chi, TE, w=25.0)
    assert (cost < 1e-12).all()
    # an empty cluster has no solution
    empty = solve_clusters(
        np.vstack([sums, np.zeros(len(TE))]), np.r_[chi_sums, 0], np.r_[n, 0], TE, w=25.0
    )
    assert np.isnan(empty[3]).all() and np.isfinite(empty[:3]).all()


def test_voxel_bounds_fix_the_shared_parameters_and_starts_fall_back():
    sol = np.array([0.7, 0.02, 14.0, 1.1, 0.01])
    b = voxel_bounds(sol)
    y, v = PARAMETERS.index("Y"), PARAMETERS.index("v")
    assert tuple(b[y]) == (0.7, 0.7) and tuple(b[v]) == (0.02, 0.02)
    others = [PARAMETERS.index(p) for p in ("R2", "S0", "chi_nb")]
    np.testing.assert_array_equal(b[others], QQ_BOUNDS[others])
    assert (voxel_bounds(sol, ()) == QQ_BOUNDS).all()
    solutions = np.array([sol, np.full(5, np.nan)])
    x0 = starts(solutions, np.array([0, 1, -1, 0]), np.zeros(5))
    np.testing.assert_array_equal(x0, [sol, np.zeros(5), np.zeros(5), sol])
