"""Store URIs against the real filesystem: defaults, resolution, readers that create nothing,
the browse commands, and a package import that touches nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oefray import tracking
from oefray.errors import OefrayError
from oefray.tracking import store


def test_default_and_resolved_uris(tmp_path, monkeypatch):
    uri = tracking.default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/env.db")
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == "sqlite:////x/env.db"
    assert tracking.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    db = tmp_path / "other" / "t.db"
    assert tracking.resolve_tracking_uri(str(db)) == f"sqlite:///{db.resolve()}"
    for file_store in ("file:///tmp/mlruns", "./mlruns"):
        with pytest.raises(OefrayError, match="file store"):
            tracking.resolve_tracking_uri(file_store)


def test_readers_create_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    missing = tmp_path / "nowhere" / "mlflow.db"
    for explicit in (None, str(missing), f"sqlite:///{missing}"):
        with pytest.raises(OefrayError, match="no MLflow store here"):
            tracking.Tracker.for_reading(explicit)
    assert list(tmp_path.iterdir()) == []
    missing.parent.mkdir()
    missing.touch()  # an empty file: an empty SQLite database, not an MLflow store
    with pytest.raises(OefrayError, match="without MLflow's tables"):
        tracking.Tracker.for_reading(str(missing))
    assert missing.stat().st_size == 0
    missing.unlink()
    tracking.Tracker(f"sqlite:///{missing}").get_or_create_experiment("x")
    assert tracking.Tracker.for_reading(str(missing)).tracking_uri == f"sqlite:///{missing}"
    assert tracking.existing_tracking_uri("http://host:5000") == "http://host:5000"


def test_sqlite_paths_and_experiment_locations(tmp_path):
    assert store.sqlite_path("sqlite:////a/b.db?mode=ro") == Path("/a/b.db")
    for other in ("sqlite:///:memory:", "sqlite:///", "postgresql://h/db", "http://h:5000"):
        assert store.sqlite_path(other) is None
        assert store.experiment_artifact_location(other, "x") is None
    uri = tracking.default_tracking_uri(tmp_path)
    root = tracking.artifact_root(uri)
    assert store.experiment_artifact_location(uri, "oef lstm/1") == (root / "oef_lstm_1").as_uri()
    assert store.experiment_artifact_location(uri, "..") == (root / "experiment").as_uri()


def test_ui_command_names_store_and_artifact_root(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    root = (tmp_path / "mlruns" / "artifacts").resolve()
    assert tracking.artifact_root(uri) == root
    assert tracking.ui_command(uri) == (
        f"mlflow ui --backend-store-uri {uri} --default-artifact-root {root.as_uri()}"
    )
    assert "webbrowser" in tracking.ui_command("http://host:5000")
    assert tracking.experiment_url("http://127.0.0.1:5000/", "3") == (
        "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    )
    assert tracking.experiments_url("http://127.0.0.1:5000") == (
        "http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
    )


def test_server_command(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    command = tracking.server_command(uri, port=5123)
    assert command[:4] == [sys.executable, "-m", "mlflow", "server"]
    assert command[command.index("--artifacts-destination") + 1] == str(tracking.artifact_root(uri))
    assert command[-6:] == ["--host", "127.0.0.1", "--port", "5123", "--workers", "1"]
    with pytest.raises(OefrayError, match="tracking server already"):
        tracking.server_command("http://host:5000")


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, os\n"
        "import oefray.tracking\n"
        "print(int('mlflow' in sys.modules), int('ray' in sys.modules), len(os.listdir('.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["0", "0", "0"]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:S3cretTok@host:5079", "http://alice:***@host:5079"),
        ("https://token@mlflow.example/prefix?x=1", "https://***@mlflow.example/prefix?x=1"),
        ("sqlite:////data/mlruns/mlflow.db", "sqlite:////data/mlruns/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        (None, None),
    ],
)
def test_credentials_in_store_uris_are_redacted(uri, shown):
    assert tracking.redact_uri(uri) == shown
    if uri and uri.startswith("http"):
        assert "S3cretTok" not in tracking.ui_command(uri)


def test_readers_refuse_what_is_not_an_mlflow_store_and_write_nothing(tmp_path, capsys):
    """`report`/`compare` on someone else's SQLite file or a text file: one line, exit 1, the
    file byte-identical (MLflow would have created ~50 tables in the database)."""
    import sqlite3

    from oefray.cli import main

    other = tmp_path / "random.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (body TEXT)")
        con.execute("INSERT INTO notes VALUES ('mine')")
    con.close()
    text = tmp_path / "notes.db"
    text.write_text("just text\n")
    for path, message in ((other, "without MLflow's tables"), (text, "not a SQLite database")):
        before = path.read_bytes()
        for argv in (["report", "exp", "--out", str(tmp_path / "r.html")], ["compare", "exp"]):
            assert main([*argv, "--tracking-uri", f"sqlite:///{path}"]) == 1
            lines = [
                line for line in capsys.readouterr().err.splitlines() if line.startswith("oefray:")
            ]
            assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines
            assert path.read_bytes() == before
    assert not (tmp_path / "r.html").exists()
    # a real store passes
    store = tmp_path / "mlruns" / "mlflow.db"
    tracking.Tracker(f"sqlite:///{store}").get_or_create_experiment("exp")
    assert tracking.existing_tracking_uri(f"sqlite:///{store}") == f"sqlite:///{store}"
