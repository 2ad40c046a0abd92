"""The ``oefray`` command as users run it: output, results.json, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oefray.cli import main
from oefray.io import bids
from oefray.io import features as fio

OEFRAY = [sys.executable, "-m", "oefray.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", RAY_ADDRESS="")
    return subprocess.run(
        [*OEFRAY, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("oefray: error:")]


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
    assert bids.list_subjects(out) == ["P3", "P6", "X1"]
    sub = bids.scan_subject(out, "X1")
    assert sub.te_s == pytest.approx((0.003, 0.0068, 0.0106, 0.0144, 0.0182), abs=1e-12)
    results = json.loads((out / "results.json").read_text())
    assert results["command"] == "simulate" and set(results["subjects"]) == {"P3", "P6", "X1"}
    assert results["brain_voxels"] == sum(
        bids.read_mask(bids.scan_subject(out, s).mask).sum() for s in ("P3", "P6", "X1")
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
    b = bids.read_slab(bids.scan_subject(again, "X1"), 0, sub.depth)
    np.testing.assert_array_equal(a.magnitude, b.magnitude)
    np.testing.assert_array_equal(a.chi, b.chi)
    # existing output is refused without --force, nothing is touched
    assert main(["simulate", str(out), "--preset", "tiny"]) == 1
    assert "already exists; use --force" in capsys.readouterr().err
    assert bids.list_subjects(out) == ["P3", "P6", "X1"]


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
    assert len(_error_lines(err)) == 1 and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.ray
def test_preprocess_command(tiny_cohort, ray_local, tmp_path, capsys):
    out = tmp_path / "features"
    assert (
        main(
            [
                "preprocess",
                str(tiny_cohort),
                "--out",
                str(out),
                "--slab",
                "6",
                "--subjects",
                "P3,P6",
            ]
        )
        == 0
    )
    printed = " ".join(capsys.readouterr().out.split())
    assert f"features: {out}" in printed
    results = json.loads((out / "results.json").read_text())
    manifest = fio.read_manifest(out)
    assert results["completed"] == ["P3", "P6"] or sorted(results["completed"]) == ["P3", "P6"]
    assert results["voxels"] == sum(e["rows"] for e in manifest["subjects"].values()) > 1000
    assert main(["preprocess", str(tiny_cohort), "--out", str(out), "--subjects", "P3"]) == 0
    assert json.loads((out / "results.json").read_text())["skipped"] == ["P3"]


@pytest.mark.ray
def test_preprocess_keep_going_exit_code(tiny_cohort, ray_local, tmp_path, capsys):
    root = tmp_path / "ds"
    shutil.copytree(tiny_cohort, root)
    mask = root / "derivatives" / "qsm" / "sub-P11" / "anat" / "sub-P11_desc-brain_mask.nii.gz"
    import nibabel as nib

    img = nib.load(mask)
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), mask)
    out = tmp_path / "f"
    assert main(["preprocess", str(root), "--out", str(out), "--keep-going"]) == 1
    err = capsys.readouterr().err
    lines = _error_lines(err)
    assert len(lines) == 1 and "sub-P11_desc-brain_mask.nii.gz: brain mask is empty" in lines[0]
    assert sorted(fio.read_manifest(out)["subjects"]) == ["P3", "P4", "P6"]
    assert json.loads((out / "results.json").read_text())["failed"].keys() == {"P11"}


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: d, "not a BIDS dataset (no dataset_description.json)"),
        (lambda d: d / "missing", "missing: not a folder"),
    ],
)
def test_preprocess_bad_dataset_one_line_nonzero(tmp_path, make, fragment):
    """Through the real console entry point, in a fresh process: one line, exit 1, nothing written."""
    target = make(tmp_path)
    out = tmp_path.parent / f"{tmp_path.name}-features"
    proc = _run("preprocess", str(target), "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_preprocess_bad_arguments(tmp_path):
    proc = _run("preprocess", str(tmp_path), "--out", str(tmp_path / "f"), "--normalize", "zscore")
    assert proc.returncode == 2 and "unknown normalisation 'zscore'" in proc.stderr
    proc = _run("preprocess", str(tmp_path))
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_version_and_help():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == "oefray 0.1.0"
    proc = _run("--help")
    assert proc.returncode == 0 and "simulate" in proc.stdout and "preprocess" in proc.stdout


def test_preprocess_unreachable_cluster(tiny_cohort, tmp_path):
    """A cluster address that does not answer fails in seconds with one line, writing nothing."""
    out = tmp_path / "f"
    proc = _run("preprocess", str(tiny_cohort), "--out", str(out), "--address", "127.0.0.1:1")
    assert proc.returncode == 1, proc.stderr
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1 and "127.0.0.1:1: cannot reach the Ray cluster" in lines[0]
    assert not out.exists()
