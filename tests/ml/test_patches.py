"""3-D patch samples (:mod:`oefray.ml.patches`) against a brute-force gather, and the patch
network's shapes."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.ml.patches import gather_patches, patch_offsets, patch_side
from oefray.ml.windows import WindowConfig, make_windows


def _scan(rng, shape=(6, 5, 4)):
    """Columns of one scan: a brain of random voxels, some with a failed fit."""
    brain = rng.random(shape) < 0.7
    i, j, k = np.nonzero(brain)
    n = len(i)
    cols = {
        "i": i, "j": j, "k": k,
        "idx": np.ravel_multi_index((i, j, k), shape),
        "status": np.where(rng.random(n) < 0.1, 3, 0),
        **{c: rng.normal(size=n).astype(np.float32) for c in ("A", "B", "E", "S")},
        **{c: rng.normal(size=n).astype(np.float32) for c in ("Y", "v", "R2", "S0", "chi_nb")},
        "tissue": rng.integers(3, 8, size=n).astype(np.int16),
    }  # fmt: skip
    return cols


def test_offsets_are_c_order_with_the_centre_in_the_middle():
    off = patch_offsets(3)
    assert off.shape == (27, 3) and tuple(off[13]) == (0, 0, 0)
    assert tuple(off[0]) == (-1, -1, -1) and tuple(off[1]) == (-1, -1, 0)
    assert patch_side(27) == 3 and patch_side(125) == 5
    for bad in (8, 26, 64):
        with pytest.raises(ValueError, match="odd side"):
            patch_side(bad)


@pytest.mark.parametrize("side", [1, 3, 5])
def test_patches_equal_a_brute_force_gather(side):
    rng = np.random.default_rng(side)
    cols = _scan(rng)
    feats = np.stack([cols[c] for c in ("A", "B", "E", "S")], axis=1)
    keep = cols["status"] == 0
    ijk = np.stack([cols["i"], cols["j"], cols["k"]], axis=1)
    x, rows = gather_patches(ijk, feats, keep, side)
    np.testing.assert_array_equal(rows, np.flatnonzero(keep))
    where = {tuple(v): r for r, v in enumerate(ijk) if keep[r]}
    for n, r in enumerate(rows):
        for e, d in enumerate(patch_offsets(side)):
            neighbour = where.get(tuple(ijk[r] + d), r)  # absent: the target itself
            np.testing.assert_array_equal(x[n, e], feats[neighbour])


def test_make_windows_of_patch_shape():
    rng = np.random.default_rng(9)
    cols = _scan(rng)
    config = WindowConfig(length=27, shape="patch")
    w = make_windows(cols, config, subject="P3")
    keep = cols["status"] == 0
    assert len(w) == keep.sum() and w.n_no_window == 0 and w.n_excluded == (~keep).sum()
    np.testing.assert_array_equal(w.idx, cols["idx"][keep])
    np.testing.assert_array_equal(w.y[:, 0], cols["Y"][keep])  # the centre voxel's target
    np.testing.assert_array_equal(w.x[:, 13, 0], cols["A"][keep])
    np.testing.assert_array_equal(w.labels["tissue"], cols["tissue"][keep])
    assert config.to_dict() == {"length": 27, "anchor": "centre", "shape": "patch"}
    with pytest.raises(ValueError, match="anchor 'centre'"):
        WindowConfig(length=27, anchor="last", shape="patch")
    with pytest.raises(ValueError, match="odd side"):
        WindowConfig(length=9, shape="patch")


def test_patch_network_maps_patches_to_parameters():
    from oefray.ml.model import build_model, model_config

    config = model_config("small", family="patch", window=27)
    model = build_model(config)
    assert model.name == "oefray_patch"
    assert model.input_shape == (None, 27, 4) and model.output_shape == (None, 5)
    assert build_model(model_config("small")).name == "oefray_lstm"  # the default, unchanged
