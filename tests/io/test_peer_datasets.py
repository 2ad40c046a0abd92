"""The datasets of other tools (:mod:`tests.peer_datasets`): what qsm-forward 0.32 writes, and
the QSMxT layout of the `tiny` cohort, name by name."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ..conftest import TINY_SUBJECTS
from ..peer_datasets import (
    QSM_FORWARD_B0_T,
    QSM_FORWARD_CHI_PPM,
    QSM_FORWARD_RESOLUTION,
    QSM_FORWARD_TE_S,
    QSMXT_DESCRIPTION,
    qsm_forward_dataset,
    qsmxt_mapping,
)

SHAPE = (QSM_FORWARD_RESOLUTION,) * 3
N_ECHOES = len(QSM_FORWARD_TE_S)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _qsm_forward_files(anat: str, deriv: str, stem: str) -> set[str]:
    files = {"dataset_description.json", "README", ".bidsignore"}
    files.add("derivatives/qsm-forward/dataset_description.json")
    for k in range(1, N_ECHOES + 1):
        for part in ("mag", "phase"):
            files |= {f"{anat}/{stem}_echo-{k}_part-{part}_MEGRE.{ext}" for ext in ("nii", "json")}
    files |= {f"{deriv}/{stem}_{suffix}.nii" for suffix in ("Chimap", "mask", "dseg")}
    return files


# --------------------------------------------------------------------------------------------
# qsm-forward 0.32, `simple`
# --------------------------------------------------------------------------------------------


def test_qsm_forward_writes_exactly_these_files(qsm_forward_cohort):
    """No session level, no run, plain .nii, derivatives/qsm-forward, no participants.tsv."""
    expected = _qsm_forward_files("sub-1/anat", "derivatives/qsm-forward/sub-1/anat", "sub-1")
    assert _files(qsm_forward_cohort) == expected
    assert (qsm_forward_cohort / ".bidsignore").read_text() == ""


def test_qsm_forward_session_acq_run_when_asked(tmp_path):
    root = qsm_forward_dataset(tmp_path / "bids", session="1", acq="gre", run="1")
    expected = _qsm_forward_files(
        "sub-1/ses-1/anat", "derivatives/qsm-forward/sub-1/ses-1/anat", "sub-1_ses-1_acq-gre_run-1"
    )
    assert _files(root) == expected
    meta = _json(root / "sub-1/ses-1/anat/sub-1_ses-1_acq-gre_run-1_echo-1_part-mag_MEGRE.json")
    assert (meta["Session"], meta["Acquisition"], meta["Run"]) == ("1", "gre", "1")


def test_qsm_forward_sidecars(qsm_forward_cohort):
    """Four echoes, EchoTime in seconds, field strength in tesla, magnitude and phase tagged."""
    anat = qsm_forward_cohort / "sub-1" / "anat"
    for part, image_type in (("mag", ["M", "MAGNITUDE"]), ("phase", ["P", "PHASE"])):
        metas = [_json(anat / f"sub-1_echo-{k}_part-{part}_MEGRE.json") for k in range(1, 5)]
        assert [m["EchoTime"] for m in metas] == list(QSM_FORWARD_TE_S)
        assert all(0 < m["EchoTime"] < 0.1 for m in metas)  # seconds, not milliseconds
        assert [m["EchoNumber"] for m in metas] == [1, 2, 3, 4]
        for m in metas:
            assert m["MagneticFieldStrength"] == QSM_FORWARD_B0_T
            assert isinstance(m["MagneticFieldStrength"], int)
            assert m["ImageType"] == image_type
            assert (m["Subject"], m["Session"], m["Acquisition"], m["Run"]) == (
                "1",
                None,
                None,
                None,
            )
            assert (m["RepetitionTime"], m["FlipAngle"], m["B0_dir"]) == (0.05, 15, [0.0, 0.0, 1.0])
            assert m["ConversionSoftware"] == "qsm-forward"


def test_qsm_forward_dataset_descriptions(qsm_forward_cohort):
    raw = _json(qsm_forward_cohort / "dataset_description.json")
    deriv = _json(qsm_forward_cohort / "derivatives/qsm-forward/dataset_description.json")
    assert raw == deriv
    assert raw["BIDSVersion"] == "1.9.0" and "DatasetType" not in raw
    assert raw["Name"].startswith("qsm-forward BIDS (")
    assert [(g["Name"], g["Version"]) for g in raw["GeneratedBy"]] == [("qsm-forward", "0.32")]


def test_qsm_forward_images(qsm_forward_cohort):
    """3-D per echo, one grid for all (identity affine, sform 2, qform 0, float32), Chimap in
    ppm on the magnitude's grid, mask 0/1 where chi != 0, dseg the mask again."""
    anat = qsm_forward_cohort / "sub-1" / "anat"
    deriv = qsm_forward_cohort / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    images = sorted(anat.glob("*.nii")) + sorted(deriv.glob("*.nii"))
    assert len(images) == 2 * N_ECHOES + 3
    for path in images:
        img = nib.load(path)
        assert img.shape == SHAPE, path.name
        assert img.get_data_dtype() == np.float32, path.name
        np.testing.assert_array_equal(img.affine, np.eye(4))
        assert (int(img.header["sform_code"]), int(img.header["qform_code"])) == (2, 0)
        assert img.header.get_xyzt_units() == ("unknown", "unknown")

    mag = np.stack([_data(anat / f"sub-1_echo-{k}_part-mag_MEGRE.nii") for k in range(1, 5)], -1)
    chi = _data(deriv / "sub-1_Chimap.nii")
    mask = _data(deriv / "sub-1_mask.nii")
    assert chi.shape == mag.shape[:3]
    np.testing.assert_allclose(np.unique(chi), QSM_FORWARD_CHI_PPM, rtol=1e-6)
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(mask == 1, chi != 0)
    assert int(mask.sum()) == 1857
    np.testing.assert_array_equal(_data(deriv / "sub-1_dseg.nii"), mask)

    brain = mask == 1
    assert np.all(mag > 0)  # seeded complex noise: nonzero outside the mask too
    means = mag[brain].mean(axis=0)
    assert np.all(np.diff(means) < 0)  # decays with TE
    assert mag[~brain].mean() < 0.05 * means[0]
    for k in range(1, 5):
        phase = _data(anat / f"sub-1_echo-{k}_part-phase_MEGRE.nii")
        assert phase.min() >= -np.pi - 1e-6 and phase.max() <= np.pi + 1e-6


# --------------------------------------------------------------------------------------------
# The QSMxT layout of the `tiny` cohort
# --------------------------------------------------------------------------------------------

TRUTH_NAMES = ("R2map", "S0map", "desc-nb_Chimap", "desc-Y_qq", "desc-v_qq")


def _n_echoes(cohort: Path, label: str) -> int:
    return len(list((cohort / f"sub-{label}" / "anat").glob("*_part-mag_MEGRE.nii.gz")))


def test_qsmxt_layout_holds_exactly_these_names(qsmxt_cohort, tiny_cohort):
    expected = {
        "dataset_description.json",
        "README",
        "participants.tsv",
        "participants.json",
        ".bidsignore",
        "derivatives/qsmxt/dataset_description.json",
        "derivatives/qq/dataset_description.json",
        "derivatives/qq/README",
        "derivatives/qq/.bidsignore",
    }
    for label in TINY_SUBJECTS:
        e = f"sub-{label}_ses-01_acq-gre_run-1"
        n = _n_echoes(tiny_cohort, label)
        assert n == 8
        for k in range(1, n + 1):
            for part in ("mag", "phase"):
                stem = f"sub-{label}/ses-01/anat/{e}_echo-{k}_part-{part}_MEGRE"
                expected |= {f"{stem}.nii", f"{stem}.json"}
        expected.add(f"derivatives/qsmxt/sub-{label}/ses-01/anat/{e}_Chimap.nii")
        expected.add(f"derivatives/qsmxt/sub-{label}/ses-01/anat/{e}_mask.nii")
        for name in TRUTH_NAMES:
            stem = f"derivatives/qq/sub-{label}/ses-01/anat/{e}_{name}"
            expected |= {f"{stem}.nii", f"{stem}.json"}
        # the segmentation beside the truth (and its lookup), and the lesion mask where there
        # is a lesion
        stem = f"derivatives/qq/sub-{label}/ses-01/anat/{e}_dseg"
        expected |= {f"{stem}.nii", f"{stem}.json", f"{stem}.tsv"}
        qq = tiny_cohort / "derivatives" / "qq" / f"sub-{label}" / "anat"
        if (qq / f"sub-{label}_label-lesion_mask.nii.gz").is_file():
            stem = f"derivatives/qq/sub-{label}/ses-01/anat/{e}_label-lesion_mask"
            expected |= {f"{stem}.nii", f"{stem}.json"}
    found = _files(qsmxt_cohort)
    assert found == expected
    assert not any("desc-brain" in f or f.endswith(".gz") for f in found)
    assert not any(f.startswith("derivatives/qsm/") for f in found)


def test_qsmxt_mapping_of_one_subject(tiny_cohort):
    """The documented mapping, spelled out for sub-P3 (what a later test compares by)."""
    mapping = qsmxt_mapping(tiny_cohort)
    e = "sub-P3_ses-01_acq-gre_run-1"
    assert mapping["sub-P3/anat/sub-P3_echo-1_part-mag_MEGRE.nii.gz"] == (
        f"sub-P3/ses-01/anat/{e}_echo-1_part-mag_MEGRE.nii"
    )
    assert mapping["sub-P3/anat/sub-P3_echo-8_part-mag_MEGRE.json"] == (
        f"sub-P3/ses-01/anat/{e}_echo-8_part-mag_MEGRE.json"
    )
    assert mapping["derivatives/qsm/sub-P3/anat/sub-P3_Chimap.nii.gz"] == (
        f"derivatives/qsmxt/sub-P3/ses-01/anat/{e}_Chimap.nii"
    )
    assert mapping["derivatives/qsm/sub-P3/anat/sub-P3_desc-brain_mask.nii.gz"] == (
        f"derivatives/qsmxt/sub-P3/ses-01/anat/{e}_mask.nii"
    )
    assert mapping["derivatives/qq/sub-P3/anat/sub-P3_desc-nb_Chimap.nii.gz"] == (
        f"derivatives/qq/sub-P3/ses-01/anat/{e}_desc-nb_Chimap.nii"
    )
    assert mapping["derivatives/qq/sub-P3/anat/sub-P3_desc-Y_qq.json"] == (
        f"derivatives/qq/sub-P3/ses-01/anat/{e}_desc-Y_qq.json"
    )
    dropped = sorted(k for k, v in mapping.items() if v is None)
    qsm_sidecars = [
        f"derivatives/qsm/sub-{label}/anat/sub-{label}_{name}.json"
        for label in TINY_SUBJECTS
        for name in ("Chimap", "desc-brain_mask")
    ]
    assert dropped == sorted(
        ["derivatives/qsm/README", "derivatives/qsm/dataset_description.json", *qsm_sidecars]
    )
    assert set(mapping) == _files(tiny_cohort)


def test_qsmxt_layout_keeps_the_data(qsmxt_cohort, tiny_cohort):
    """Same voxels and grid as the cohort; QSMxT's outputs as its writer has them; phase wrapped;
    the sidecars as dcm2niix would leave them, EchoTime in seconds unchanged."""
    mapping = qsmxt_mapping(tiny_cohort)
    for rel, new in mapping.items():
        if new is None or not new.endswith(".nii"):
            continue
        src, dst = nib.load(tiny_cohort / rel), nib.load(qsmxt_cohort / new)
        assert dst.shape == src.shape == (20, 24, 16), new
        np.testing.assert_allclose(dst.affine, src.affine, atol=1e-5)
        np.testing.assert_array_equal(_data(qsmxt_cohort / new), _data(tiny_cohort / rel))
        if new.startswith("derivatives/qsmxt/"):
            assert dst.get_data_dtype() == np.float32, new
            assert (int(dst.header["sform_code"]), int(dst.header["qform_code"])) == (1, 0)
            assert dst.header.get_xyzt_units() == ("unknown", "unknown")
        else:
            assert dst.header.get_data_dtype() == src.header.get_data_dtype(), new
    mask = _data(
        qsmxt_cohort / "derivatives/qsmxt/sub-P3/ses-01/anat/sub-P3_ses-01_acq-gre_run-1_mask.nii"
    )
    assert set(np.unique(mask)) == {0.0, 1.0}

    anat = qsmxt_cohort / "sub-P3" / "ses-01" / "anat"
    e = "sub-P3_ses-01_acq-gre_run-1"
    for k in range(1, 9):
        src_meta = _json(tiny_cohort / f"sub-P3/anat/sub-P3_echo-{k}_part-mag_MEGRE.json")
        mag_meta = _json(anat / f"{e}_echo-{k}_part-mag_MEGRE.json")
        phase_meta = _json(anat / f"{e}_echo-{k}_part-phase_MEGRE.json")
        assert mag_meta == {
            **src_meta,
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
            "ConversionSoftware": "dcm2niix",
        }
        assert phase_meta == {**mag_meta, "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}
        assert 0 < mag_meta["EchoTime"] < 0.1
        phase = nib.load(anat / f"{e}_echo-{k}_part-phase_MEGRE.nii")
        assert phase.shape == (20, 24, 16) and phase.get_data_dtype() == np.float32
        values = np.asanyarray(phase.dataobj)
        assert values.min() >= -np.pi and values.max() <= np.pi and values.std() > 0
    assert _json(qsmxt_cohort / "derivatives/qsmxt/dataset_description.json") == QSMXT_DESCRIPTION
    for name in ("dataset_description.json", "participants.tsv", "derivatives/qq/.bidsignore"):
        assert (qsmxt_cohort / name).read_bytes() == (tiny_cohort / name).read_bytes()


def test_qsmxt_layout_refuses_an_existing_folder(tiny_cohort, tmp_path):
    from ..peer_datasets import qsmxt_layout

    with pytest.raises(FileExistsError):
        qsmxt_layout(tiny_cohort, tmp_path)
