"""NIfTI prediction maps: scatter by flat index, round trip, file names, argument checks."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import OefrayError
from oefray.io import maps

SHAPE = (6, 7, 5)


@pytest.fixture
def affine() -> np.ndarray:
    a = np.diag([1.5, 1.2, 2.0, 1.0])
    a[:3, 3] = (-10.0, 20.5, 3.25)
    a[0, 1] = 0.1  # a little shear: any affine must survive
    return a


@pytest.fixture
def voxels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    idx = np.sort(rng.choice(np.prod(SHAPE), size=80, replace=False)).astype(np.int64)
    return idx, rng.normal(40.0, 8.0, idx.size)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_write_read_round_trip(tmp_path, affine, voxels, suffix):
    idx, values = voxels
    path = maps.write_map(tmp_path / "sub" / f"m{suffix}", values, idx, SHAPE, affine)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))  # no temp file left
    vol = maps.read_map(path)
    assert vol.shape == SHAPE and vol.dtype == np.float32
    flat = vol.reshape(-1)
    np.testing.assert_array_equal(flat[idx], values.astype(np.float32))
    outside = np.ones(flat.size, bool)
    outside[idx] = False
    assert np.all(np.isnan(flat[outside]))
    # idx is the C-order index of (x, y, z)
    x, y, z = np.unravel_index(idx[5], SHAPE)
    assert vol[x, y, z] == np.float32(values[5])
    img = nib.load(path)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert img.get_sform(coded=True)[1] == 1 and img.get_qform(coded=True)[1] == 1


def test_fill_value_and_unsorted_idx(tmp_path, affine, voxels):
    idx, values = voxels
    order = np.random.default_rng(0).permutation(idx.size)
    path = maps.write_map(tmp_path / "m.nii.gz", values[order], idx[order], SHAPE, affine, fill=0)
    flat = maps.read_map(path).reshape(-1)
    np.testing.assert_array_equal(flat[idx], values.astype(np.float32))
    assert np.count_nonzero(flat) == idx.size


def test_write_prediction_maps_names_and_order(tmp_path, affine, voxels):
    idx, values = voxels
    preds = {"OEF": values, "chi_nb": values / 1000, "Y": 1 - values / 100}
    paths = maps.write_prediction_maps(tmp_path / "maps", "P6", preds, idx, SHAPE, affine)
    assert [p.name for p in paths] == [
        "sub-P6_desc-Y_pred.nii.gz",
        "sub-P6_desc-chinb_pred.nii.gz",
        "sub-P6_desc-OEF_pred.nii.gz",
    ]
    np.testing.assert_allclose(maps.read_map(paths[1]).reshape(-1)[idx], values / 1000, rtol=1e-6)
    truth = maps.write_prediction_maps(
        tmp_path, "P6", {"S0": values}, idx, list(SHAPE), affine.tolist(), suffix="truth"
    )
    assert truth == [tmp_path / "sub-P6_desc-S0_truth.nii.gz"]


@pytest.mark.parametrize(
    ("values", "idx", "match"),
    [
        (np.ones(3), np.array([0, 1]), "equal length"),
        (np.ones(2), np.array([0, 210]), "out of range"),
        (np.ones(2), np.array([-1, 3]), "out of range"),
        (np.ones(3), np.array([4, 2, 4]), "repeated"),
        (np.ones(2), np.array([0.0, 1.0]), "integer"),
    ],
)
def test_bad_arrays_raise(tmp_path, affine, values, idx, match):
    with pytest.raises(ValueError, match=match):
        maps.write_map(tmp_path / "m.nii.gz", values, idx, SHAPE, affine)
    assert not list(tmp_path.iterdir())


def test_bad_names_and_grids_raise(tmp_path, affine, voxels):
    idx, values = voxels
    with pytest.raises(ValueError, match="unknown map"):
        maps.write_prediction_maps(tmp_path, "P6", {"OEFx": values}, idx, SHAPE, affine)
    with pytest.raises(ValueError, match="alphanumeric"):
        maps.write_prediction_maps(tmp_path, "P_6", {"Y": values}, idx, SHAPE, affine)
    with pytest.raises(ValueError, match=".nii"):
        maps.write_map(tmp_path / "m.png", values, idx, SHAPE, affine)
    with pytest.raises(ValueError, match="4x4"):
        maps.write_map(tmp_path / "m.nii.gz", values, idx, SHAPE, np.eye(3))
    with pytest.raises(ValueError, match="three"):
        maps.write_map(tmp_path / "m.nii.gz", values, idx, (6, 7), affine)


def test_read_map_errors(tmp_path):
    with pytest.raises(OefrayError, match="does not exist"):
        maps.read_map(tmp_path / "nope.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(OefrayError, match="cannot read"):
        maps.read_map(bad)


def test_import_loads_no_frameworks():
    code = (
        "import sys, oefray.io.maps\n"
        "print(' '.join(str(int(m in sys.modules)) for m in ('ray', 'mlflow', 'keras', 'tensorflow')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"] * 4
