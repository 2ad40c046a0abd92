"""RMSE, OEF and the per-patient table (paper's Table 1 layout)."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.ml.metrics import (
    AVERAGE_ROW,
    TABLE_COLUMNS,
    oef_percent,
    per_subject_rmse,
    pooled_rmse,
    rmse,
)
from oefray.physics.constants import PARAMETERS, YA


def test_rmse_hand_computed():
    pred = np.array([[1.0, 0.0], [3.0, 2.0], [2.0, -2.0]])
    true = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    # column 0: errors 1, 2, 0 -> sqrt(5/3); column 1: 0, 0, -3 -> sqrt(3)
    np.testing.assert_allclose(rmse(pred, true), [np.sqrt(5 / 3), np.sqrt(3.0)], rtol=1e-15)
    np.testing.assert_allclose(rmse(pred, true, axis=1), [np.sqrt(0.5), np.sqrt(2), np.sqrt(4.5)])
    assert float(rmse(pred, true, axis=None)) == pytest.approx(np.sqrt(14 / 6), rel=1e-15)
    assert rmse(np.float32([1, 2]), np.float32([1, 2])).dtype == np.float64
    with pytest.raises(ValueError):
        rmse(pred, true[:2])


def test_oef_percent():
    np.testing.assert_allclose(oef_percent([0.98, 0.49, 0.0]), [0.0, 50.0, 100.0], atol=1e-12)
    assert YA == 0.98


@pytest.fixture
def cohort():
    rng = np.random.default_rng(3)
    sizes = {"P6": 300, "P11": 120, "P12": 45}
    true = np.column_stack(
        [
            rng.normal(m, s, sum(sizes.values()))
            for m, s in zip(
                (0.6, 0.03, 19.0, 1.1, -0.02), (0.05, 0.007, 3, 0.04, 0.02), strict=True
            )
        ]
    )
    pred = true + rng.normal(0, [0.05, 0.003, 0.6, 0.005, 0.005], true.shape)
    subject = np.repeat(list(sizes), list(sizes.values()))
    return pred, true, subject


def test_oef_rmse_closed_form(cohort):
    pred, true, _ = cohort
    pooled = pooled_rmse(pred, true)
    y = PARAMETERS.index("Y")
    expected = 100.0 * float(rmse(pred[:, y], true[:, y])) / 0.98
    assert pooled["OEF"] == pytest.approx(expected, rel=1e-12)  # up to float64 rounding


def test_per_subject_table(cohort):
    pred, true, subject = cohort
    rows, columns = per_subject_rmse(pred, true, subject)
    assert rows == ["P6", "P11", "P12", AVERAGE_ROW]
    assert tuple(columns) == TABLE_COLUMNS == ("S0", "R2", "Y", "v", "chi_nb", "OEF")
    for name in TABLE_COLUMNS:
        assert columns[name].shape == (4,)
        # Avg. is the unweighted mean over patients
        assert columns[name][-1] == pytest.approx(columns[name][:-1].mean(), rel=1e-15)
    for r, label in enumerate(rows[:-1]):
        members = subject == label
        for name in TABLE_COLUMNS[:-1]:
            k = PARAMETERS.index(name)
            assert columns[name][r] == pytest.approx(
                float(rmse(pred[members, k], true[members, k])), rel=1e-15
            )
        assert columns["OEF"][r] == pytest.approx(100 * columns["Y"][r] / YA, rel=1e-12)


def test_pooled_differs_from_average_with_unequal_sizes(cohort):
    pred, true, subject = cohort
    pred = pred.copy()
    pred[subject == "P12"] += 1.0  # a bad small patient weighs more in Avg. than in pooled
    _, columns = per_subject_rmse(pred, true, subject)
    pooled = pooled_rmse(pred, true)
    assert set(pooled) == set(TABLE_COLUMNS)
    assert columns["R2"][-1] > pooled["R2"]
    k = PARAMETERS.index("R2")
    assert pooled["R2"] == pytest.approx(float(rmse(pred[:, k], true[:, k])), rel=1e-15)


def test_shape_checks(cohort):
    pred, true, subject = cohort
    with pytest.raises(ValueError):
        pooled_rmse(pred[:, :4], true[:, :4])
    with pytest.raises(ValueError):
        per_subject_rmse(pred, true, subject[:-1])
