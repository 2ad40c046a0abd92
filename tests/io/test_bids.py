"""BIDS writing and reading: round trips, storage variants, and every contract violation."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import DatasetError
from oefray.io import bids, scans

TE = (0.0045, 0.0095, 0.0145, 0.0195)
SHAPE = (6, 7, 5)


def _subject_arrays(rng: np.random.Generator, shape=SHAPE, n_echoes=4):
    magnitude = rng.uniform(0.1, 1.2, size=(*shape, n_echoes)).astype(np.float32)
    chi = rng.normal(0, 0.05, size=shape).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    truth = {k: rng.uniform(0, 1, size=shape).astype(np.float32) for k in bids.TRUTH_DESC}
    return magnitude, chi, mask, truth


def _write_dataset(
    root: Path, labels=("A1",), suffix=".nii.gz", affine=None, rng=None, truth=True, shape=SHAPE
):
    rng = rng or np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine
    bids.write_dataset_description(root, "test")
    bids.write_participants(
        root, [{"participant_id": f"sub-{s}", "split": "train"} for s in labels]
    )
    arrays = {}
    for label in labels:
        mag, chi, mask, tr = _subject_arrays(rng, shape)
        bids.write_subject(
            root, label, affine, mag, TE, chi, mask, tr if truth else None, suffix=suffix
        )
        arrays[label] = (mag, chi, mask, tr)
    return arrays


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_exact(tmp_path, suffix):
    arrays = _write_dataset(tmp_path, ("A1", "B2"), suffix=suffix)
    index = scans.scan_dataset(tmp_path)
    assert sorted(index.scans) == ["A1", "B2"] and not index.errors
    assert index.split == {"A1": "train", "B2": "train"}
    for label, (mag, chi, mask, truth) in arrays.items():
        sub = index.scans[label]
        assert sub.te_s == TE and sub.shape == SHAPE and sub.n_brain == mask.sum()
        for z0, z1 in [(0, SHAPE[2]), (1, 3), (4, 5)]:
            slab = bids.read_slab(sub, z0, z1)
            np.testing.assert_array_equal(
                slab.magnitude, mag[:, :, z0:z1]
            )  # float32 stored exactly
            np.testing.assert_array_equal(slab.chi, chi[:, :, z0:z1])
            np.testing.assert_array_equal(slab.mask, mask[:, :, z0:z1])
            for k in bids.TRUTH_DESC:
                np.testing.assert_array_equal(slab.truth[k], truth[k][:, :, z0:z1])
            assert slab.magnitude.dtype == np.float32


def test_integer_storage_with_scaling_and_oblique_affine(tmp_path):
    arrays = _write_dataset(tmp_path, truth=False)
    mag = arrays["A1"][0]
    # Rewrite echo 2 as int16 with scl_slope/scl_inter, as scanner converters do, on an oblique grid.
    theta = np.deg2rad(17)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    affine[:3, 3] = [-10, 5, 7]
    anat = tmp_path / "sub-A1" / "anat"
    qsm = tmp_path / "derivatives" / "qsm" / "sub-A1" / "anat"
    slope, inter = 1.2 / 30000, 0.01
    ints = np.round((mag[..., 1] - inter) / slope).astype(np.int16)
    for p in [
        *anat.glob("*.nii.gz"),
        *qsm.glob("*.nii.gz"),
    ]:  # move every image onto the oblique grid
        img = nib.load(p)
        data = np.asanyarray(img.dataobj)
        new = nib.Nifti1Image(data, affine, img.header)
        new.set_sform(affine, 1)
        new.set_qform(affine, 1)
        nib.save(new, p)
    img = nib.Nifti1Image(ints, affine)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, anat / "sub-A1_echo-2_part-mag_MEGRE.nii.gz")
    sub = scans.scan_subject(tmp_path, "A1")
    np.testing.assert_allclose(np.array(sub.affine), affine, atol=1e-5)
    slab = bids.read_slab(sub, 0, SHAPE[2])
    assert slab.magnitude.dtype == np.float32
    # quantisation of int16 storage: at most half a step
    np.testing.assert_allclose(slab.magnitude[..., 1], mag[..., 1], atol=slope / 2 + 1e-6)
    np.testing.assert_array_equal(slab.magnitude[..., 0], mag[..., 0])


def _expect(root: Path, label: str, fragment: str, filename: str | None):
    with pytest.raises(DatasetError) as info:
        scans.scan_subject(root, label)
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message
    if filename:
        assert filename in message, message
    return message


@pytest.fixture
def dataset(tmp_path):
    _write_dataset(tmp_path)
    return tmp_path


def test_missing_echo_time(dataset):
    side = dataset / "sub-A1" / "anat" / "sub-A1_echo-3_part-mag_MEGRE.json"
    side.write_text(json.dumps({"MagneticFieldStrength": 3}))
    _expect(dataset, "A1", "no EchoTime", side.name)


def test_missing_sidecar(dataset):
    side = dataset / "sub-A1" / "anat" / "sub-A1_echo-2_part-mag_MEGRE.json"
    side.unlink()
    _expect(dataset, "A1", "sidecar is missing", side.name)


def test_malformed_sidecar(dataset):
    side = dataset / "sub-A1" / "anat" / "sub-A1_echo-1_part-mag_MEGRE.json"
    side.write_text("{EchoTime: 0.0045")
    _expect(dataset, "A1", "malformed JSON", side.name)


def test_echo_time_in_milliseconds(dataset):
    side = dataset / "sub-A1" / "anat" / "sub-A1_echo-1_part-mag_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": 4.5}))
    _expect(dataset, "A1", "milliseconds", side.name)


def test_duplicate_echo_times(dataset):
    side = dataset / "sub-A1" / "anat" / "sub-A1_echo-2_part-mag_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": TE[0]}))
    _expect(dataset, "A1", "duplicate echo times", "anat")


def test_echoes_of_different_shapes(dataset):
    bad = dataset / "sub-A1" / "anat" / "sub-A1_echo-3_part-mag_MEGRE.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 4), np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), bad)
    _expect(dataset, "A1", "shape (6, 7, 4) differs", bad.name)


def test_qsm_on_another_grid(dataset):
    chi = dataset / "derivatives" / "qsm" / "sub-A1" / "anat" / "sub-A1_Chimap.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.diag([1.0, 2.0, 3.0, 1.0])), chi)
    _expect(dataset, "A1", "grid (affine) differs", chi.name)


def test_mask_on_another_grid(dataset):
    mask = dataset / "derivatives" / "qsm" / "sub-A1" / "anat" / "sub-A1_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 7, 6), np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])), mask)
    _expect(dataset, "A1", "differs", mask.name)


def test_empty_mask(dataset):
    mask = dataset / "derivatives" / "qsm" / "sub-A1" / "anat" / "sub-A1_desc-brain_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.diag([2.0, 2.0, 3.0, 1.0])), mask)
    _expect(dataset, "A1", "brain mask is empty", mask.name)


def test_missing_qsm(dataset):
    (dataset / "derivatives" / "qsm" / "sub-A1" / "anat" / "sub-A1_Chimap.nii.gz").unlink()
    message = _expect(dataset, "A1", "QSM map is missing", "_Chimap.nii[.gz] in any derivative")
    # the near miss is named, with why it is not a QSM
    assert "qq/sub-A1_desc-nb_Chimap.nii.gz (desc-nb: not a QSM)" in message


def test_fewer_than_two_echoes(dataset):
    anat = dataset / "sub-A1" / "anat"
    for k in (2, 3, 4):
        (anat / f"sub-A1_echo-{k}_part-mag_MEGRE.nii.gz").unlink()
    _expect(dataset, "A1", "need at least 2", "anat")


def test_corrupt_nifti(dataset):
    bad = dataset / "sub-A1" / "anat" / "sub-A1_echo-2_part-mag_MEGRE.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all" * 10)
    _expect(dataset, "A1", "cannot read NIfTI", bad.name)


def test_truncated_nifti_fails_on_read(tmp_path):
    """A truncated .nii.gz has a readable header: the error comes when its voxels are read."""
    dataset = tmp_path
    _write_dataset(dataset, shape=(30, 30, 20))
    bad = dataset / "sub-A1" / "anat" / "sub-A1_echo-4_part-mag_MEGRE.nii.gz"
    data = bad.read_bytes()
    assert len(gzip.decompress(data)) > 352 + 500  # header + most of the voxels survive the cut
    bad.write_bytes(data[: len(data) - 300])
    sub = scans.scan_subject(dataset, "A1")
    with pytest.raises(DatasetError) as info:
        bids.read_slab(sub, 0, 20)
    assert bad.name in str(info.value) and "corrupt or truncated" in str(info.value)


def test_incomplete_truth(dataset):
    (dataset / "derivatives" / "qq" / "sub-A1" / "anat" / "sub-A1_desc-v_qq.nii.gz").unlink()
    _expect(dataset, "A1", "ground truth is incomplete", "qq")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_ground_truth_under_the_names_of_before_is_read(tmp_path, suffix):
    """Datasets written before R2, S0 and chi_nb took BIDS suffixes: sub-<L>_desc-<P>_qq."""
    arrays = _write_dataset(tmp_path, suffix=suffix)
    qq = tmp_path / "derivatives" / "qq" / "sub-A1" / "anat"
    for name, desc in bids.TRUTH_DESC.items():
        (qq / f"{bids.truth_stem('A1', name)}{suffix}").rename(
            qq / f"sub-A1_desc-{desc}_qq{suffix}"
        )
    for sidecar in qq.glob("*.json"):
        sidecar.unlink()
    sub = scans.scan_subject(tmp_path, "A1")
    assert sorted(Path(p).name for p in sub.truth.values()) == sorted(
        f"sub-A1_desc-{d}_qq{suffix}" for d in ("Y", "v", "R2", "S0", "chinb")
    )
    slab = bids.read_slab(sub, 0, SHAPE[2])
    for name in bids.TRUTH_DESC:
        np.testing.assert_array_equal(slab.truth[name], arrays["A1"][3][name])
    # both names of one map: which one is meant is not for oefray to guess
    shutil.copy(qq / f"sub-A1_desc-R2_qq{suffix}", qq / f"sub-A1_R2map{suffix}")
    _expect(tmp_path, "A1", "keep one", f"sub-A1_R2map{suffix}")


def test_sidecars_and_participants_json(dataset):
    qsm = dataset / "derivatives" / "qsm" / "sub-A1" / "anat"
    chi = json.loads((qsm / "sub-A1_Chimap.json").read_text())
    assert chi["Units"] == "ppm" and chi["SkullStripped"] is False  # noise outside the mask
    mask = json.loads((qsm / "sub-A1_desc-brain_mask.json").read_text())
    assert mask["Type"] == "Brain"
    assert mask["Sources"] == ["bids:raw:sub-A1/anat/sub-A1_echo-1_part-mag_MEGRE.nii.gz"]
    qq = dataset / "derivatives" / "qq" / "sub-A1" / "anat"
    assert sorted(p.name for p in qq.glob("*.json")) == [
        "sub-A1_R2map.json",
        "sub-A1_S0map.json",
        "sub-A1_desc-Y_qq.json",
        "sub-A1_desc-nb_Chimap.json",
        "sub-A1_desc-v_qq.json",
    ]
    participants = json.loads((dataset / "participants.json").read_text())
    assert list(participants) == ["participant_id", "split"]
    bids.write_participants(
        dataset,
        [{"participant_id": "sub-A1", "split": "test", "site": "x", "age": "3"}],
        {"site": {"Description": "Where."}},
    )
    assert list(json.loads((dataset / "participants.json").read_text())) == [
        "participant_id",
        "split",
        "site",
    ]


def test_not_a_bids_dataset(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match="not a BIDS dataset"):
        scans.scan_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        scans.scan_dataset(tmp_path / "nope")
    bids.write_dataset_description(tmp_path, "empty")
    with pytest.raises(DatasetError, match="no sub-<label> folders"):
        scans.scan_dataset(tmp_path)


def test_scan_dataset_collects_errors_per_subject(tmp_path):
    _write_dataset(tmp_path, ("A1", "B2", "C3"))
    shutil.rmtree(tmp_path / "derivatives" / "qsm" / "sub-B2")
    index = scans.scan_dataset(tmp_path)
    assert sorted(index.scans) == ["A1", "C3"]
    assert list(index.errors) == ["B2"] and "QSM map is missing" in str(index.errors["B2"])
    with pytest.raises(DatasetError, match="no such subject"):
        scans.scan_dataset(tmp_path, ["Z9"])


def test_natural_subject_order(tmp_path):
    _write_dataset(tmp_path, ("P11", "P3", "P6"))
    assert scans.list_subjects(tmp_path) == ["P3", "P6", "P11"]


def test_a_soft_mask_is_cut_at_one_half_with_a_warning(dataset, caplog):
    mask = dataset / "derivatives" / "qsm" / "sub-A1" / "anat" / "sub-A1_desc-brain_mask.nii.gz"
    soft = np.zeros(SHAPE, np.float32)
    soft[1:-1, 1:-1, 1:-1] = 0.9
    soft[1, 1, 1] = 0.4  # below the threshold: not brain
    nib.save(nib.Nifti1Image(soft, np.diag([2.0, 2.0, 3.0, 1.0])), mask)
    with caplog.at_level("WARNING", logger="oefray.io.bids"):
        sub = scans.scan_subject(dataset, "A1")
    assert sub.n_brain == int((soft >= bids.MASK_THRESHOLD).sum()) == 4 * 5 * 3 - 1
    (record,) = [
        r for r in caplog.records if "mask holds values other than 0 and 1" in r.getMessage()
    ]
    assert str(mask) in record.getMessage() and "0, 0.4, 0.9" in record.getMessage()
    slab = bids.read_slab(sub, 0, SHAPE[2])
    assert int(slab.mask.sum()) == sub.n_brain and not slab.mask[1, 1, 1]


def test_a_binary_mask_warns_nothing(dataset, caplog):
    with caplog.at_level("WARNING", logger="oefray.io.bids"):
        sub = scans.scan_subject(dataset, "A1")
    assert sub.n_brain == 4 * 5 * 3 and not caplog.records


def test_a_participant_without_a_folder_is_a_warning(dataset, caplog):
    with (dataset / "participants.tsv").open("a") as fh:
        fh.write("sub-Z9\ttest\n")
    with caplog.at_level("WARNING", logger="oefray.io.bids"):
        index = scans.scan_dataset(dataset)
    assert list(index.scans) == ["A1"] and not index.errors
    (record,) = caplog.records
    assert "participants.tsv: sub-Z9 is listed but has no folder" in record.getMessage()


def test_the_warning_is_one_line_on_stderr_of_the_command(dataset, tmp_path, capsys):
    from oefray.cli import main

    with (dataset / "participants.tsv").open("a") as fh:
        fh.write("sub-Z9\ttest\n")
    # any command sets up oefray's warning lines; this one fails at once (no features there)
    assert main(["baseline", "ccm", str(tmp_path / "no-features")]) == 1
    capsys.readouterr()
    scans.scan_dataset(dataset)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"oefray: warning: {dataset / 'participants.tsv'}: sub-Z9 is listed but has no folder; it is left out"
    ]
