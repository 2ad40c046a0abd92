"""No command removes what it did not write: ``--force`` replaces only oefray's own outputs.

Each case is a row of the data-loss table of the issue, run as a user would (the real CLI, real
files), plus a property test over where ``--out`` may point. ``predict`` refuses before it loads
a model, so these need neither Ray nor a trained run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oefray.cli import main
from oefray.io.outputs import is_oefray_output

from ..conftest import error_lines


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def project(tiny_cohort, tmp_path):
    """A user's project: a copy of a dataset, an unrelated file beside it, a notes folder."""
    import json
    import shutil

    root = tmp_path / "proj"
    shutil.copytree(tiny_cohort, root / "ds")
    # the user's own data: its description names no generator (oefray's would make it oefray's)
    desc = root / "ds" / "dataset_description.json"
    desc.write_text(
        json.dumps({**json.loads(desc.read_text()), "GeneratedBy": [{"Name": "dcm2niix"}]})
    )
    assert not is_oefray_output(root / "ds")
    (root / "unrelated.txt").write_text("keep me\n")
    (root / "notes").mkdir()
    (root / "notes" / "n.md").write_text("# mine\n")
    return root


def _refused(argv, capsys, fragment):
    assert main(argv) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and fragment in lines[0], lines
    return lines[0]


def test_predict_onto_its_own_dataset_with_force_is_refused(project, capsys):
    before = _snapshot(project)
    ds = str(project / "ds")
    _refused(["predict", "run", ds, "--out", ds, "--force"], capsys, "holds the input")
    assert _snapshot(project) == before


def test_predict_and_simulate_onto_the_working_directory_are_refused(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    before = _snapshot(project)
    _refused(["predict", "run", "ds", "--out", ".", "--force"], capsys, "holds the input")
    _refused(
        ["simulate", ".", "--preset", "tiny", "--subjects", "P3", "--force"],
        capsys,
        "was not written by oefray",
    )
    assert _snapshot(project) == before


def test_force_replaces_what_oefray_wrote(tmp_path, capsys):
    out = tmp_path / "bids"
    args = ["simulate", str(out), "--preset", "tiny", "--subjects", "P3"]
    assert main(args) == 0 and is_oefray_output(out)
    _refused(args, capsys, "already exists; use --force")
    assert main([*args, "--seed", "5", "--force"]) == 0
    assert is_oefray_output(out)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(["simulate", "predict"]),
    where=st.sampled_from(["dataset", "parent", "sibling", "inside", "file", "cwd"]),
)
def test_force_never_removes_a_file_it_did_not_create(project, capsys, monkeypatch, command, where):
    """Whatever `--out` is among the dataset, its parent, a sibling, a folder inside it, a file
    or the working directory, `--force` removes no file that oefray did not create."""
    monkeypatch.chdir(project / "notes")
    out = {
        "dataset": project / "ds",
        "parent": project,
        "sibling": project / "notes",
        "inside": project / "ds" / "sub-P3",
        "file": project / "unrelated.txt",
        "cwd": Path("."),
    }[where]
    before = _snapshot(project)
    if command == "simulate":
        argv = ["simulate", str(out), "--preset", "tiny", "--subjects", "Q1", "--force"]
    else:
        argv = ["predict", "run", str(project / "ds"), "--out", str(out), "--force"]
    assert main(argv) == 1
    capsys.readouterr()
    after = _snapshot(project)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed
    assert set(after) == set(before)  # and nothing half-written left
