"""The streamed reference sample (:mod:`oefray.orchestration.reference`) on the `tiny` features,
against the training scans gathered in the test.

Tolerances: the mean from per-scan float64 sums against ``numpy.mean`` of the gathered float64
values, rtol 1e-12; the sample's size against its binomial law, within 5 standard deviations.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow.compute as pc
import pytest

from oefray.errors import OefrayError
from oefray.io import features as fio
from oefray.ml.split import unit_interval, window_hash
from oefray.orchestration.baseline import REFERENCE_COLUMNS, features_reference
from oefray.orchestration.reference import REFERENCE_SALT, reference_sample

pytestmark = pytest.mark.ray

TRAIN = ["P3", "P4"]


@pytest.fixture(scope="module")
def gathered(tiny_features):
    table = fio.read_features(tiny_features, TRAIN)
    good = table.filter(pc.equal(table["status"], 0))
    return {
        "subject": good["subject"].to_numpy(zero_copy_only=False).astype(str),
        "idx": good["idx"].to_numpy(),
        "values": np.column_stack(
            [good[c].to_numpy().astype(np.float64) for c in REFERENCE_COLUMNS]
        ),
    }


def _read(features):
    return partial(features_reference, root=str(features))


def test_every_voxel_in_read_order_when_the_scans_hold_fewer_than_asked(
    tiny_features, ray_local, gathered
):
    ref = reference_sample(TRAIN, _read(tiny_features), REFERENCE_COLUMNS, 10**9, seed=0)
    assert ref.count == len(gathered["values"])
    np.testing.assert_array_equal(ref.sample, gathered["values"])
    np.testing.assert_allclose(ref.mean, gathered["values"].mean(axis=0), rtol=1e-12)
    assert ref.columns == REFERENCE_COLUMNS
    np.testing.assert_array_equal(ref.column("B"), gathered["values"][:, 6])


def test_a_hash_sample_of_the_size_asked_the_same_in_any_scan_order(
    tiny_features, ray_local, gathered
):
    size, seed = 1000, 5
    ref = reference_sample(TRAIN, _read(tiny_features), REFERENCE_COLUMNS, size, seed)
    n = len(gathered["values"])
    p = size / n
    assert abs(len(ref.sample) - size) < 5 * np.sqrt(n * p * (1 - p))
    # exactly the voxels whose hash of (scan, idx, seed) is below size / count, in scan order
    per_scan = {}
    for key in TRAIN:
        sel = gathered["subject"] == key
        u = unit_interval(window_hash(key, gathered["idx"][sel], seed, REFERENCE_SALT))
        per_scan[key] = gathered["values"][sel][u < p]
    np.testing.assert_array_equal(ref.sample, np.concatenate([per_scan[k] for k in TRAIN]))
    # the mean and count are of every voxel, not of the sample
    assert ref.count == n
    np.testing.assert_allclose(ref.mean, gathered["values"].mean(axis=0), rtol=1e-12)
    # the scans in another order: the same rows of each scan, in that order
    swapped = reference_sample(TRAIN[::-1], _read(tiny_features), REFERENCE_COLUMNS, size, seed)
    np.testing.assert_array_equal(
        swapped.sample, np.concatenate([per_scan[k] for k in TRAIN[::-1]])
    )
    # another seed: another sample
    other = reference_sample(TRAIN, _read(tiny_features), REFERENCE_COLUMNS, size, seed + 1)
    assert not np.array_equal(other.sample, ref.sample)


def test_a_scan_that_cannot_be_read_is_its_one_line(tiny_features, ray_local):
    with pytest.raises(OefrayError, match="subject\\(s\\) not in the features: P99"):
        reference_sample(["P3", "P99"], _read(tiny_features), REFERENCE_COLUMNS, 100, seed=0)
