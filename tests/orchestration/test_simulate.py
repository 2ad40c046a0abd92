"""``oefray simulate`` as users run it: the cohort written, its results.json and participants
table, determinism for a seed, existing output refused, one-line errors for bad arguments, and
the BIDS validator's verdict on what it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oefray.cli import main
from oefray.io import bids, scans

from ..bids_validator import assert_valid
from ..conftest import error_lines


def test_simulate_command(tmp_path, capsys):
    out = tmp_path / "ds"
    code = main(
        [
            "simulate",
            str(out),
            "--preset",
            "tiny",
            "--subjects",
            "P3,sub-P6,X1",
            "--te",
            "3,6.8,10.6,14.4,18.2",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Wrote 3 subjects (2 train, 1 test)" in " ".join(printed.split())
    assert scans.list_subjects(out) == ["P3", "P6", "X1"]
    sub = scans.scan_subject(out, "X1")
    assert sub.te_s == pytest.approx((0.003, 0.0068, 0.0106, 0.0144, 0.0182), abs=1e-12)
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "simulate" and set(results["subjects"]) == {"P3", "P6", "X1"}
    assert results["brain_voxels"] == sum(
        bids.read_mask(scans.scan_subject(out, s).mask).sum() for s in ("P3", "P6", "X1")
    )
    rows = (out / "participants.tsv").read_text().splitlines()
    assert rows == ["participant_id\tsplit", "sub-P3\ttrain", "sub-P6\ttest", "sub-X1\ttrain"]
    # deterministic for a seed: the same subject is identical when simulated again (alone)
    again = tmp_path / "again"
    assert (
        main(
            [
                "simulate",
                str(again),
                "--preset",
                "tiny",
                "--subjects",
                "X1",
                "--te",
                "3,6.8,10.6,14.4,18.2",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    a = bids.read_slab(sub, 0, sub.depth)
    b = bids.read_slab(scans.scan_subject(again, "X1"), 0, sub.depth)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.chi, b.chi)
    # existing output is refused without --force, nothing is touched
    assert main(["simulate", str(out), "--preset", "tiny"]) == 1
    assert "already exists; use --force" in capsys.readouterr().err
    assert scans.list_subjects(out) == ["P3", "P6", "X1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--te", "4.5"], "at least 2 echoes"),
        (["--te", "4.5,abc"], "comma-separated list of milliseconds"),
        (["--te", "4.5,9", "--echoes", "3"], "either --te or"),
        (["--snr", "-1"], "snr must be positive"),
        (["--subjects", "P3,P3"], "duplicate subject labels"),
    ],
)
def test_simulate_bad_arguments(tmp_path, capsys, args, message):
    assert main(["simulate", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in err
    assert not (tmp_path / "x").exists()


def test_simulate_force_onto_a_file_is_refused_and_the_file_kept(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("the user's notes\n")
    assert main(["simulate", str(target), "--preset", "tiny", "--force"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(target) in line and "exists and is not a folder" in line
    assert target.read_text() == "the user's notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def sub_has_labels(root, label: str) -> bool:
    """The scan's segmentation is found, with the simulation's class names."""
    scan = scans.scan_subject(root, label)
    return "tissue" in scan.labels and scan.label_names.get(6) == "infarct core"


@pytest.mark.parametrize("plain", [False, True], ids=["nii.gz", "nii"])
def test_simulated_dataset_passes_the_bids_validator(tmp_path, plain):
    """The raw dataset, and each derivative validated on its own, have no error; the warnings
    left are the ones only a user can settle (Authors, License) or that do not apply to
    simulated data (scanner details, HED)."""
    out = tmp_path / "ds"
    args = ["simulate", str(out), "--preset", "tiny", "--subjects", "P3,P6,X1", "--seed", "3"]
    assert main([*args, *(["--plain-nii"] if plain else [])]) == 0
    assert (out / "results.json").is_file()  # listed in .bidsignore
    raw = {w["code"] for w in assert_valid(out)}
    assert raw <= {
        "JSON_KEY_RECOMMENDED",
        "NO_AUTHORS",
        "TOO_FEW_AUTHORS",
        "SIDECAR_KEY_RECOMMENDED",
    }
    for pipeline in ("qsm", "qq"):
        warnings = assert_valid(out / "derivatives" / pipeline)
        assert {w["code"] for w in warnings} <= {"TOO_FEW_AUTHORS"}, warnings
    # the ground truth under its BIDS names (and Y, v under oefray's, ignored), read back
    anat = out / "derivatives" / "qq" / "sub-X1" / "anat"
    ext = ".nii" if plain else ".nii.gz"
    names = sorted(p.name for p in anat.glob(f"*{ext}"))
    lesion = [f"sub-X1_label-lesion_mask{ext}"] if f"sub-X1_label-lesion_mask{ext}" in names else []
    assert names == [
        f"sub-X1_R2map{ext}",
        f"sub-X1_S0map{ext}",
        f"sub-X1_desc-Y_qq{ext}",
        f"sub-X1_desc-nb_Chimap{ext}",
        f"sub-X1_desc-v_qq{ext}",
        f"sub-X1_dseg{ext}",  # the segmentation (and, with a lesion, its mask)
        *lesion,
    ]
    assert sub_has_labels(out, "X1")
    sub = scans.scan_subject(out, "X1")
    assert {k: p.rsplit("/", 1)[1] for k, p in sub.truth.items()} == {
        "Y": f"sub-X1_desc-Y_qq{ext}",
        "v": f"sub-X1_desc-v_qq{ext}",
        "R2": f"sub-X1_R2map{ext}",
        "S0": f"sub-X1_S0map{ext}",
        "chi_nb": f"sub-X1_desc-nb_Chimap{ext}",
    }
    meta = json.loads((anat / "sub-X1_R2map.json").read_text())
    assert meta["Units"] == "1/s" and meta["SkullStripped"] is False
    mask = out / "derivatives" / "qsm" / "sub-X1" / "anat" / "sub-X1_desc-brain_mask.json"
    assert json.loads(mask.read_text())["Sources"] == [
        f"bids:raw:sub-X1/anat/sub-X1_echo-1_part-mag_MEGRE{ext}"
    ]
    participants = json.loads((out / "participants.json").read_text())
    assert set(participants["split"]["Levels"]) == {"train", "test"}
