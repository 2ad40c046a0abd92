"""Training data on Ray Data (oefray.orchestration.data): the windows, hash split and scalers the
scan-by-scan pipeline gives equal those of the driver-side reference (every window cut from the
whole table with oefray.ml.windows, split with oefray.ml.split, scaled by Standardizer.fit)."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.config import TrainConfig
from oefray.io import features as fio
from oefray.ml.scaling import Standardizer
from oefray.ml.split import TRAIN, VAL, Split
from oefray.ml.windows import make_windows_table
from oefray.orchestration.data import prepare_data

pytestmark = pytest.mark.ray

SUBJECTS = {"train_subjects": ("P3", "P4", "P11"), "test_subjects": ("P6",)}


def _reference(features, config):
    """The driver-side reference: every training window, its part and the fitted scalers."""
    window = config.window_config()
    table = fio.read_features(features, list(config.train_subjects))
    parts, xs, ys, orders = [], [], [], []
    split = Split(seed=config.seed, val_fraction=config.val_fraction)
    for key in config.train_subjects:
        w = make_windows_table(table, window, [key])
        parts.append(split.assign(key, w.idx))
        xs.append(w.x)
        ys.append(w.y)
        orders.append(split.order(key, w.idx))
    part, x, y, order = (np.concatenate(a) for a in (parts, xs, ys, orders))
    tr = part == TRAIN
    return part, x, y, order, Standardizer.fit(x[tr]), Standardizer.fit(y[tr])


def _rows(ds):
    rows = sorted(ds.take_all(), key=lambda r: int(r["order"]))
    return (np.stack([r[k] for r in rows]) for k in ("x", "y", "order"))


@pytest.mark.parametrize("stream", [True, False])
def test_datasets_hold_the_reference_windows_split_and_scaled(tiny_features, stream):
    """Lazy (streamed) or materialised, the datasets hold exactly the reference's windows of
    each part, standardised by scalers equal to Standardizer.fit on the training part
    (relative 1e-9: streamed moments vs two-pass sums, both float64)."""
    config = TrainConfig(seed=2, **SUBJECTS)
    data = prepare_data(tiny_features, config, reserved_cpus=1, stream=stream)
    assert data.materialized is (not stream)
    part, x, y, order, x_ref, y_ref = _reference(tiny_features, config)
    np.testing.assert_allclose(data.x_scaler.mean, x_ref.mean, rtol=1e-9)
    np.testing.assert_allclose(data.x_scaler.std, x_ref.std, rtol=1e-9)
    np.testing.assert_allclose(data.y_scaler.mean, y_ref.mean, rtol=1e-9)
    np.testing.assert_allclose(data.y_scaler.std, y_ref.std, rtol=1e-9)
    assert data.counts["train_windows"] == int((part == TRAIN).sum())
    assert data.counts["val_windows"] == int((part == VAL).sum())
    n = len(part)
    assert abs(data.counts["val_windows"] - 0.2 * n) < 5 * np.sqrt(n * 0.16)  # binomial
    for ds, code in ((data.train, TRAIN), (data.val, VAL)):
        got_x, got_y, got_order = _rows(ds)
        sel = part == code
        ref = np.argsort(order[sel], kind="stable")
        np.testing.assert_array_equal(got_order, order[sel][ref])
        # float32 standardisation of the same values: equal up to float32 rounding
        np.testing.assert_allclose(got_x, data.x_scaler.transform(x[sel][ref]), rtol=0, atol=0)
        np.testing.assert_allclose(got_y, data.y_scaler.transform(y[sel][ref]), rtol=0, atol=0)


def test_split_does_not_depend_on_which_scans_are_trained_on(tiny_features):
    """A window's part is a function of (scan, idx, seed) alone: P3's validation windows are
    the same whether P3 trains with one other scan or two."""
    a = prepare_data(tiny_features, TrainConfig(seed=5, **SUBJECTS), reserved_cpus=1)
    b = prepare_data(
        tiny_features,
        TrainConfig(seed=5, train_subjects=("P3", "P4"), test_subjects=("P6",)),
        reserved_cpus=1,
    )
    order_p3 = Split(seed=5).order(
        "P3", make_windows_table(fio.read_features(tiny_features, ["P3"]), a.window).idx
    )
    va_a, va_b = (set(np.intersect1d(list(_rows(d.val))[2], order_p3)) for d in (a, b))
    assert va_a == va_b and len(va_a) > 50


def test_max_train_windows_subsamples_by_hash(tiny_features):
    capped = prepare_data(tiny_features, TrainConfig(max_train_windows=300, **SUBJECTS))
    n = capped.counts["train_windows"]
    assert abs(n - 300) < 5 * np.sqrt(300) and capped.train.count() == n
    assert abs(capped.counts["val_windows"] - 75) < 5 * np.sqrt(75)
    assert capped.split.train_keep < 1.0
