"""NIfTI prediction maps: scatter by flat index, round trip, file names (BIDS suffixes where one
fits, the names of before still parsed), sidecars, argument checks, and a folder of maps as
``oefray predict`` lays it out passing the BIDS validator."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import OefrayError
from oefray.io import maps, names
from oefray.io.outputs import is_oefray_output, mark_output

from ..bids_validator import assert_valid

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
        "sub-P6_desc-nbpred_Chimap.nii.gz",
        "sub-P6_desc-OEF_pred.nii.gz",
    ]
    np.testing.assert_allclose(maps.read_map(paths[1]).reshape(-1)[idx], values / 1000, rtol=1e-6)
    sidecar = json.loads((tmp_path / "maps" / "sub-P6_desc-nbpred_Chimap.json").read_text())
    assert sidecar["Units"] == "ppm" and sidecar["SkullStripped"] is True
    assert "non-blood" in sidecar["Description"]
    assert "Units" not in json.loads((tmp_path / "maps" / "sub-P6_desc-Y_pred.json").read_text())
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [p.name for p in paths] + [maps.sidecar_path(p).name for p in paths]
    )
    truth = maps.write_prediction_maps(
        tmp_path, "P6", {"S0": values}, idx, list(SHAPE), affine.tolist(), suffix="truth"
    )
    assert truth == [tmp_path / "sub-P6_desc-truth_S0map.nii.gz"]
    assert maps.map_path(tmp_path, "P6", "R2") == tmp_path / "sub-P6_desc-pred_R2map.nii.gz"


def test_names_of_every_map_and_kind():
    assert [names.map_stem("P6", n, "pred") for n in names.MAP_NAMES] == [
        "sub-P6_desc-Y_pred",
        "sub-P6_desc-v_pred",
        "sub-P6_desc-pred_R2map",
        "sub-P6_desc-pred_S0map",
        "sub-P6_desc-nbpred_Chimap",
        "sub-P6_desc-OEF_pred",
    ]
    assert [names.map_stem("P6", n, names.TRUTH_KIND) for n in names.MAP_NAMES] == [
        "sub-P6_desc-Y_qq",
        "sub-P6_desc-v_qq",
        "sub-P6_R2map",
        "sub-P6_S0map",
        "sub-P6_desc-nb_Chimap",
        "sub-P6_desc-OEF_qq",
    ]
    for kind in ("pred", "ensmean", "ensstd", "truth", names.TRUTH_KIND):
        for name in names.MAP_NAMES:
            for stem in (names.map_stem("P6", name, kind), names.legacy_stem("P6", name, kind)):
                for ext in (".nii.gz", ".nii"):
                    assert names.parse_map_name(stem + ext) == names.MapFile("P6", name, kind)
    # the names oefray wrote before
    assert names.parse_map_name("sub-P6_desc-chinb_pred.nii.gz") == names.MapFile(
        "P6", "chi_nb", "pred"
    )
    assert names.parse_map_name("sub-A1_desc-R2_qq.nii") == names.MapFile("A1", "R2", "qq")
    for other in (
        "sub-P6_Chimap.nii.gz",  # the QSM, not chi_nb
        "sub-P6_desc-brain_mask.nii.gz",
        "sub-P6_echo-1_part-mag_MEGRE.nii.gz",
        "sub-P6_desc-pred_R2map.json",
        "sub-P6_desc-X_pred.nii.gz",
    ):
        assert names.parse_map_name(other) is None, other
    with pytest.raises(ValueError, match="unknown map"):
        names.map_stem("P6", "chinb", "pred")
    with pytest.raises(ValueError, match="alphanumeric"):
        names.map_stem("P6", "Y", "en_std")


def test_a_folder_of_maps_passes_the_bids_validator(tmp_path, affine, voxels):
    """What ``oefray predict`` writes, by the same functions: the description
    (``mark_output``), README and ``.bidsignore``, and every map of two subjects."""
    idx, values = voxels
    out = tmp_path / "maps"
    out.mkdir()
    mark_output(out, "oefray predict (test)", "0.1.0")
    maps.describe_maps_dataset(
        out, "Maps of a test.", other_files=("results.json", "rmse_per_patient.csv")
    )
    (out / "results.json").write_text("{}\n")
    (out / "rmse_per_patient.csv").write_text("subject,OEF\nP6,1.0\n")
    preds = {name: values for name in names.MAP_NAMES}
    for label in ("P6", "Z1"):
        maps.write_prediction_maps(maps.subject_dir(out, label), label, preds, idx, SHAPE, affine)
    assert len(list(out.glob("sub-Z1/anat/*.nii.gz"))) == 6
    assert is_oefray_output(out)
    warnings = assert_valid(out)
    assert {w["code"] for w in warnings} <= {"TOO_FEW_AUTHORS"}, warnings


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
    for bad in ("P_6", "P6_ses-01/..", "P6_desc-x", "../P6"):
        with pytest.raises(ValueError, match="label must be a BIDS subject label"):
            maps.write_prediction_maps(tmp_path, bad, {"Y": values}, idx, SHAPE, affine)
    # a scan's entities are part of its label
    (path,) = maps.write_prediction_maps(
        tmp_path, "P6_ses-01_run-1", {"Y": values}, idx, SHAPE, affine
    )
    assert path.name == "sub-P6_ses-01_run-1_desc-Y_pred.nii.gz"
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
