"""The ``oefray`` command as users run it: output, results.json, exit codes, one-line errors
(``oefray simulate``'s own tests are in orchestration/test_simulate.py)."""

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
from oefray.io import features as fio

from .conftest import error_lines

OEFRAY = [sys.executable, "-m", "oefray.cli"]


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", RAY_ADDRESS="")
    return subprocess.run(
        [*OEFRAY, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


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
    results = json.loads((out / "_results.json").read_text())
    manifest = fio.read_manifest(out)
    assert results["completed"] == ["P3", "P6"] or sorted(results["completed"]) == ["P3", "P6"]
    assert results["voxels"] == sum(e["rows"] for e in manifest["subjects"].values()) > 1000
    assert main(["preprocess", str(tiny_cohort), "--out", str(out), "--subjects", "P3"]) == 0
    assert json.loads((out / "_results.json").read_text())["skipped"] == ["P3"]


def test_one_bad_subject_does_not_hide_the_good_ones(tiny_cohort, tmp_path, capsys):
    """Row of issue 11: one bad subject among good ones, without --keep-going, stopped the run
    before Ray started and the good subjects appeared nowhere. Now the table, a warning line and
    results.json name them as not done (and nothing starts Ray)."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_cohort, root)
    (root / "sub-P4" / "anat" / "sub-P4_echo-2_part-mag_MEGRE.json").write_text("{")
    results = tmp_path / "r.json"
    args = ["preprocess", str(root), "--out", str(tmp_path / "f"), "--results", str(results)]
    assert main(args) == 1
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert line.startswith("oefray: error: sub-P4: ") and "malformed JSON" in line
    assert (
        "oefray: warning: not done after the failure: sub-P3, sub-P6, sub-P11 (--keep-going "
        "does them)" in captured.err
    )
    rows = [[c for c in line.split() if c not in "│┃"] for line in captured.out.splitlines()]
    # the scans table: every scan with its outcome, then the summary
    assert rows[2:6] == [
        ["sub-P3", "not", "done"],
        ["sub-P4", "failed"],
        ["sub-P6", "not", "done"],
        ["sub-P11", "not", "done"],
    ]
    header = next(i for i, cells in enumerate(rows) if cells[:2] == ["done", "skipped"])
    assert rows[header + 2][:4] == ["0", "0", "1", "3"]  # done, skipped, failed, not done
    payload = json.loads(results.read_text())
    assert payload["not_done"] == ["P3", "P6", "P11"] and list(payload["failed"]) == ["P4"]
    assert [(r["scan"], r["outcome"]) for r in payload["scans"]] == [
        ("sub-P3", "not done"),
        ("sub-P4", "failed"),
        ("sub-P6", "not done"),
        ("sub-P11", "not done"),
    ]
    assert "malformed JSON" in payload["scans"][1]["error"]
    assert not (tmp_path / "f").exists()


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
    lines = error_lines(err)
    assert len(lines) == 1 and "sub-P11_desc-brain_mask.nii.gz: brain mask is empty" in lines[0]
    assert sorted(fio.read_manifest(out)["subjects"]) == ["P3", "P4", "P6"]
    assert json.loads((out / "_results.json").read_text())["failed"].keys() == {"P11"}


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
    lines = error_lines(proc.stderr)
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
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "127.0.0.1:1: cannot reach the Ray cluster" in lines[0]
    assert not out.exists()
