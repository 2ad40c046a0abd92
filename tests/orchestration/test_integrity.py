"""Integrity is checked, not only recorded; a features folder knows what it was made from; one
writer at a time. Each test is a row of the issue's tables, run as a user would (the real CLI,
real files, a second real process where the row has one)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from oefray.cli import main
from oefray.io import features as fio

from ..conftest import error_lines

pytestmark = pytest.mark.ray


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _no_runs(uri: str) -> bool:
    from oefray.tracking import Tracker

    client = Tracker(uri).client
    return not [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ]


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions bind: as root, drop the capabilities that
    override them (root ignores a read-only mode bit otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: util-linux setpriv is needed to test read-only folders"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def _oefray(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*_unprivileged(), sys.executable, "-m", "oefray.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


@pytest.fixture
def features(tiny_features, tmp_path) -> Path:
    copy = tmp_path / "features"
    shutil.copytree(tiny_features, copy)
    return copy


def test_verify_passes_on_intact_features(tiny_features, capsys):
    assert main(["verify", str(tiny_features)]) == 0
    out = capsys.readouterr().out
    manifest = fio.read_manifest(tiny_features)
    rows = sum(s["rows"] for s in manifest["subjects"].values())
    assert f"{tiny_features}: OK; 4 subject(s)" in out and f"{rows:,} rows" in out


def test_an_edited_parquet_file_stops_train_in_one_line(features, tmp_path, capsys):
    """Row: a Parquet file edited (Y halved), then `oefray train` gave exit 0 and OEF RMSE 30 %.
    Now train refuses before anything starts, naming the file; `oefray verify` names it too."""
    part = sorted(fio.scan_dir(features, "P3").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    halved = table.set_column(
        table.schema.get_field_index("Y"), "Y", pc.multiply(table["Y"], 0.5).cast("float32")
    )
    pq.write_table(halved, part, compression="zstd", compression_level=1, use_dictionary=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["train", str(features), "--epochs", "1", "--tracking-uri", uri]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(part) in line and "changed since oefray preprocess wrote it" in line
    assert _no_runs(uri)

    assert main(["verify", str(features), "--results", str(tmp_path / "v.json")]) == 1
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert str(part) in line and "1 problem(s)" in captured.out
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] is False and report["subjects"] == 4 and len(report["problems"]) == 1


def test_a_truncated_parquet_file_is_one_line_in_verify_and_train(features, tmp_path, capsys):
    part = sorted(fio.scan_dir(features, "P6").glob("part-*.parquet"))[-1]
    part.write_bytes(part.read_bytes()[:100])
    assert main(["verify", str(features)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(part) in line and "is 100 bytes" in line
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["train", str(features), "--epochs", "1", "--tracking-uri", uri]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(part) in line and "truncated" in line


def test_preprocess_of_another_dataset_or_options_into_features_is_refused(
    features, tiny_cohort, tmp_path, capsys
):
    """Row: `preprocess other_dataset --out existing_features` gave exit 0 and "skipped 2", the
    Parquet still of the first dataset. Now: refused, saying which differs, nothing changed;
    with --force the folder holds the other dataset only."""
    from oefray.config import SimulationConfig
    from oefray.orchestration.simulate import simulate_cohort

    other = tmp_path / "other"
    simulate_cohort(other, SimulationConfig(preset="tiny", subjects=("P3", "Q1"), seed=8))
    before = _snapshot(features)
    assert main(["preprocess", str(other), "--out", str(features)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"oefray: error: {features / '_manifest.json'}: holds features of the dataset "
        f"{tiny_cohort}, not of {other}; use another --out, or --force to redo every subject"
    )
    assert main(["preprocess", str(tiny_cohort), "--out", str(features), "--normalize",
                 "first-echo"]) == 1  # fmt: skip
    (line,) = error_lines(capsys.readouterr().err)
    assert "was made with options {'normalize': 'none'}, not {'normalize': 'first-echo'}" in line
    assert _snapshot(features) == before

    (features / "manifest.json").write_text('{"mine": true}')  # a user's file of that name
    assert main(["preprocess", str(other), "--out", str(features), "--force"]) == 0
    assert (features / "manifest.json").read_text() == '{"mine": true}'  # not oefray's: kept
    manifest = fio.read_manifest(features)
    assert manifest["source"]["dataset"] == str(other)
    assert list(manifest["subjects"]) == ["P3", "Q1"]
    assert sorted(p.name for p in features.glob("subject=*")) == ["subject=P3", "subject=Q1"]
    assert main(["verify", str(features)]) == 0


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (1, "features format version 1 is not the supported 3"),
        (2, "features format version 2 is read but not extended by this oefray"),
    ],
)
def test_features_of_an_older_format_are_redone_with_force(
    features, tiny_cohort, capsys, version, message
):
    """An older folder (manifest.json; version 1 also without file checksums) is refused, then
    redone with --force: its own side files go (a Parquet reader would trip over them), every
    subject is made again, and what the user put beside them stays."""
    manifest = json.loads((features / "_manifest.json").read_text())
    manifest["format_version"] = version
    for record in manifest["subjects"].values():
        if version == 1:
            record.pop("files")
    (features / "_manifest.json").unlink()
    (features / "manifest.json").write_text(json.dumps(manifest))
    (features / "results.json").write_text(json.dumps({"command": "preprocess"}))
    (features / "notes.txt").write_text("mine")
    assert main(["preprocess", str(tiny_cohort), "--out", str(features)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(features / "manifest.json") in line and message in line
    assert main(["preprocess", str(tiny_cohort), "--out", str(features), "--force"]) == 0
    assert fio.read_manifest(features)["format_version"] == 3
    assert not (features / "manifest.json").exists() and not (features / "results.json").exists()
    assert (features / "notes.txt").read_text() == "mine"
    assert main(["verify", str(features)]) == 0


def test_train_while_preprocess_force_rewrites_the_features_is_one_line(
    features, tiny_cohort, tmp_path, capsys
):
    """Row: `train` while `preprocess --force` rewrites the same features gave a ValueError
    traceback. Now the reader is refused in one line naming the writer; the writer finishes."""
    log = tmp_path / "writer.err"  # a file: a pipe nobody reads would fill and block the writer
    with log.open("w") as sink:
        writer = subprocess.Popen(
            [sys.executable, "-m", "oefray.cli", "preprocess", str(tiny_cohort), "--out",
             str(features), "--force", "--workers", "1"],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )  # fmt: skip
    lock = features / ".lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):
        assert writer.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    uri = f"sqlite:///{tmp_path}/m.db"
    code = main(["train", str(features), "--epochs", "1", "--tracking-uri", uri])
    assert writer.poll() is None, "the writer finished before the reader tried"
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"oefray: error: {features}: oefray preprocess (pid {writer.pid}) is writing to this "
        "folder; try again when it has finished"
    )
    assert _no_runs(uri)
    assert writer.wait(timeout=600) == 0
    assert main(["verify", str(features)]) == 0


def test_a_read_only_features_folder_is_skipped_and_a_read_only_out_is_one_line(
    features, tiny_cohort, tmp_path
):
    """Row: a re-run over a complete read-only features folder (which should just skip) and
    `preprocess --out` in a read-only folder gave 41-47-line PermissionError tracebacks."""
    before = _snapshot(features)
    for path in [features, *features.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        done = _oefray("preprocess", str(tiny_cohort), "--out", str(features))
        assert done.returncode == 0, done.stderr
        assert "read-only: no _results.json written there" in done.stderr
        assert "Traceback" not in done.stderr
        lines = [[c for c in line.split() if c not in "│┃"] for line in done.stdout.splitlines()]
        for key in ("P3", "P4", "P6", "P11"):  # the scans table: every scan and its outcome
            assert [f"sub-{key}", "skipped"] in [cells[:2] for cells in lines], lines
        header = next(i for i, cells in enumerate(lines) if cells[:2] == ["done", "skipped"])
        row = lines[header + 2]
        assert row[:3] == ["0", "4", "0"]  # done, skipped, failed

        redo = _oefray("preprocess", str(tiny_cohort), "--out", str(features), "--force")
        assert redo.returncode == 1
        (line,) = error_lines(redo.stderr)
        assert line == (
            f"oefray: error: {features}: is read-only: cannot write the features of 4 "
            "subject(s) (sub-P3, sub-P4, sub-P6, ...)"
        )
        assert _snapshot(features) == before

        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        new = _oefray("preprocess", str(tiny_cohort), "--out", str(locked / "features"))
        assert new.returncode == 1 and "Traceback" not in new.stderr
        (line,) = error_lines(new.stderr)
        assert str(locked / "features") in line and "Permission denied" in line
        assert list(locked.iterdir()) == []
    finally:
        for path in [features, *features.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
