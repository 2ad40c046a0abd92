"""Store URIs against the real filesystem: defaults, resolution, readers that create nothing,
the browse commands, and a package import that touches nothing."""

from __future__ import annotations

import os
import shutil
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


# -- writers: a store they cannot use is one line, before anything starts ----------------------


def _sqlite(path: Path, *statements: str) -> Path:
    """A SQLite database made with the standard library, after ``statements``."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as con:
        for statement in statements:
            con.execute(statement)
        con.commit()
    return path


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """A real MLflow SQLite store (made by MLflow, one experiment): tests copy it."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("made-by-mlflow")
    return db


def _copy(db: Path, to: Path) -> Path:
    to.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(db, to))


def _refused(uri: str, path: Path, fragment: str) -> str:
    """``Tracker.from_uri(uri)`` raises one line that names ``path`` and holds ``fragment``."""
    with pytest.raises(OefrayError) as info:
        tracking.Tracker.from_uri(uri)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{path}: ") and fragment in line, line
    return line


def test_writers_refuse_what_is_not_sqlite_or_someone_elses_database(tmp_path):
    """A text file, binary data, a folder and a database of other tables are refused, as a
    ``sqlite:///`` URI and as a plain path, and left byte-identical (MLflow would have written
    ~50 tables into the database)."""
    import gzip

    text = tmp_path / "notes.db"
    text.write_text("just text\n")
    binary = tmp_path / "scan.db"
    binary.write_bytes(gzip.compress(b"\0" * 1000))
    foreign = _sqlite(
        tmp_path / "theirs.db",
        "CREATE TABLE notes (body TEXT)",
        "CREATE TABLE people (name TEXT)",
        "INSERT INTO notes VALUES ('mine')",
    )
    folder = tmp_path / "folder.db"
    folder.mkdir()
    cases = [
        (text, "not an MLflow store: not a SQLite database (found text 'just text"),
        (binary, "not a SQLite database (found binary data (1f 8b 08"),
        (foreign, "a SQLite database of other tables (notes, people); nothing was written to it"),
        (folder, "is a folder, not a SQLite database file"),
    ]
    for path, fragment in cases:
        before = None if path.is_dir() else path.read_bytes()
        for uri in (f"sqlite:///{path}", str(path)):
            _refused(uri, path, fragment)
        assert before is None or path.read_bytes() == before
    many = _sqlite(tmp_path / "many.db", *(f"CREATE TABLE t{i} (x)" for i in range(9)))
    line = _refused(str(many), many, "(t0, t1, t2, t3, t4, t5, ... (9 tables))")
    assert "t8" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["notes.db", "scan.db", "theirs.db", "folder.db", "many.db"]
    )  # no journal, no artifacts folder


def test_writers_accept_a_store_another_process_is_creating(tmp_path):
    """MLflow creates `experiments` and `runs` first and `alembic_version` last: a writer that
    looks while another process creates the store (Ray Train workers beside their driver) sees
    those first tables, and must not call the store someone else's."""
    mid = _sqlite(
        tmp_path / "mid.db",
        "CREATE TABLE experiments (experiment_id INTEGER)",
        "CREATE TABLE runs (run_uuid TEXT)",
    )
    tracking.check_writable_store(f"sqlite:///{mid}")
    one = _sqlite(tmp_path / "one.db", "CREATE TABLE runs (run_uuid TEXT)")
    with pytest.raises(OefrayError, match=r"a SQLite database of other tables \(runs\)"):
        tracking.check_writable_store(f"sqlite:///{one}")


def test_writers_refuse_a_read_only_store_or_folder(tmp_path, mlflow_db):
    """``chmod a-w`` on the database, or on its folder, is refused before MLflow's first write.

    The tests may run as root, whose ``os.access`` says yes to any write: the check also reads
    the mode bits (no write bit for anyone is read-only), which these files are given here."""
    store = _copy(mlflow_db, tmp_path / "ro" / "mlflow.db")
    store.chmod(0o444)
    empty = _sqlite(tmp_path / "ro" / "empty.db", "CREATE TABLE t (x)", "DROP TABLE t")
    empty.chmod(0o444)
    shelf = tmp_path / "shelf"
    kept = _copy(mlflow_db, shelf / "mlflow.db")
    shelf.chmod(0o555)
    try:
        for db in (store, empty):
            assert db.stat().st_mode & 0o222 == 0  # read-only for every user, root included
            before = db.read_bytes()
            _refused(f"sqlite:///{db}", db, "is read-only: cannot write MLflow runs to it")
            assert db.read_bytes() == before
        # readers still read it
        assert tracking.existing_tracking_uri(f"sqlite:///{store}") == f"sqlite:///{store}"
        assert shelf.stat().st_mode & 0o222 == 0
        _refused(str(kept), kept, f"is in a read-only folder ({shelf}): cannot write MLflow runs")
        for new in (shelf / "new.db", shelf / "a" / "b" / "mlflow.db"):
            _refused(str(new), new, f"cannot create the MLflow store: the folder {shelf} is read")
        assert sorted(p.name for p in shelf.iterdir()) == ["mlflow.db"]
    finally:
        shelf.chmod(0o755)


def test_writers_refuse_a_store_below_a_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    db = notes / "runs" / "mlflow.db"
    _refused(f"sqlite:///{db}", db, f"cannot create the MLflow store: {notes} is not a folder")


def test_writers_use_an_mlflow_store_an_empty_database_or_a_new_file(
    tmp_path, mlflow_db, monkeypatch
):
    """What passes: a writable MLflow store (and MLflow writes to it), an empty SQLite database
    or a 0-byte file (MLflow creates its tables there), a database still to be created (its
    folders are made, as before), the default store, and every store that is not a SQLite file."""
    store = _copy(mlflow_db, tmp_path / "mlflow.db")
    tracker = tracking.Tracker.from_uri(f"sqlite:///{store}")
    assert (
        tracker.get_or_create_experiment("written-by-oefray")
        != tracker.get_experiment("made-by-mlflow").experiment_id
    )
    empty = _sqlite(
        tmp_path / "empty.db",
        "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT)",
        "INSERT INTO t DEFAULT VALUES",
        "DROP TABLE t",  # leaves SQLite's own table sqlite_sequence
    )
    assert empty.read_bytes().startswith(b"SQLite format 3\0")
    zero = tmp_path / "zero.db"
    zero.touch()
    for db in (empty, zero):
        tracking.check_writable_store(f"sqlite:///{db}")
    tracking.Tracker.from_uri(str(zero)).get_or_create_experiment("first")
    assert tracking.existing_tracking_uri(str(zero)) == f"sqlite:///{zero}"
    new = tmp_path / "a" / "b" / "mlflow.db"
    uri = f"sqlite:///{new}"
    assert tracking.writable_tracking_uri(uri, create=False) == uri
    assert not (tmp_path / "a").exists()  # checking creates nothing
    assert tracking.Tracker.from_uri(uri).tracking_uri == uri
    assert new.parent.is_dir() and not new.exists()  # the folder; MLflow makes the database
    relative = tmp_path / "cwd"
    relative.mkdir()
    monkeypatch.chdir(relative)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.check_writable_store("sqlite:///relative.db")
    assert tracking.Tracker.from_uri(None).tracking_uri == tracking.default_tracking_uri(relative)
    assert (relative / "mlruns").is_dir()
    for other in ("http://host:5000", "https://host", "sqlite:///:memory:", "postgresql://h/db"):
        tracking.check_writable_store(other)


def test_a_store_another_user_cannot_write_is_read_only(tmp_path, mlflow_db):
    """What a user other than the owner sees (os.access): root's 0644 store and 0755 folder,
    checked by `nobody`: read-only, although the files have write bits. Run by another user than
    root, the store is the test's own, so a root-owned folder with write bits for its owner only
    (``/usr``) is the other user's: a store cannot be created in it."""
    import tempfile

    if os.geteuid() != 0:
        target = Path("/usr") / f"oefray-{os.getpid()}" / "mlflow.db"
        assert os.stat("/usr").st_uid == 0 and os.stat("/usr").st_mode & 0o200
        with pytest.raises(OefrayError) as info:
            tracking.Tracker.from_uri(f"sqlite:///{target}")
        assert str(info.value) == (
            f"{target}: cannot create the MLflow store: the folder /usr is read-only"
        )
        return
    assert shutil.which("setpriv"), "running as root: util-linux setpriv runs the check as nobody"

    shared = Path(tempfile.mkdtemp(prefix="oefray-shared-"))
    try:
        shared.chmod(0o755)
        store = _copy(mlflow_db, shared / "mlflow.db")
        store.chmod(0o644)
        code = (
            "import sys\n"
            "from oefray.errors import OefrayError\n"
            "from oefray.tracking import Tracker\n"
            "for uri in sys.argv[1:]:\n"
            "    try:\n"
            "        Tracker.from_uri(uri)\n"
            "    except OefrayError as exc:\n"
            "        print(exc)\n"
        )
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            + [sys.executable, "-c", code, str(store), str(shared / "new" / "mlflow.db")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(tracking.__file__).parents[2])},
            cwd=shared,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [
            f"{store}: is read-only: cannot write MLflow runs to it",
            f"{shared / 'new' / 'mlflow.db'}: cannot create the MLflow store: the folder "
            f"{shared} is read-only",
        ]
    finally:
        shutil.rmtree(shared)


@pytest.fixture
def unusable_stores(tmp_path, mlflow_db) -> dict[str, tuple[Path, str]]:
    """The three stores a writer refuses: a text file, a read-only MLflow store, a SQLite
    database of someone else's tables; with what the error line says."""
    text = tmp_path / "stores" / "notes.db"
    text.parent.mkdir()
    text.write_text("just text\n")
    read_only = _copy(mlflow_db, tmp_path / "stores" / "ro.db")
    read_only.chmod(0o444)
    foreign = _sqlite(tmp_path / "stores" / "theirs.db", "CREATE TABLE notes (body TEXT)")
    return {
        "text": (text, "not a SQLite database (found text"),
        "read-only": (read_only, "is read-only: cannot write MLflow runs to it"),
        "foreign": (foreign, "a SQLite database of other tables (notes)"),
    }


#: The commands that write to the store, each with an input that does not exist: the store
#: is checked before the input is read (and before Ray starts).
WRITERS = {
    "train": ["train", "{missing}"],
    "tune": ["tune", "{missing}"],
    "tune --search": ["tune", "{missing}", "--search", "--samples", "2"],
    "baseline ccm": ["baseline", "ccm", "{missing}"],
    "study te-shift": ["study", "te-shift", "{missing}", "--model", "0" * 32],
    "evaluate": ["evaluate", "0" * 32, "--features", "{missing}"],
}


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.mark.parametrize("command", list(WRITERS))
def test_writing_commands_refuse_an_unusable_store_first(
    command, unusable_stores, tmp_path, capsys
):
    """Exit 1, one ``oefray: error:`` line naming the store, the store byte-identical, no
    results.json, and Ray not started: before the missing input is even looked at."""
    from oefray.cli import main

    from ..conftest import error_lines

    missing = tmp_path / "no-such-input"
    argv = [a.format(missing=missing) for a in WRITERS[command]]
    # Ray must not start: where it is down before (the fast subset, this file alone), it is down
    # after (conftest's guard fails an unmarked test that starts it, too); in the full suite a
    # session's runtime may already be up, which this test neither starts nor stops
    ray_was_up = _ray_is_up()
    for path, fragment in unusable_stores.values():
        before = path.read_bytes()
        assert main([*argv, "--tracking-uri", f"sqlite:///{path}"]) == 1
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert len(lines) == 1, err
        assert lines[0].startswith(f"oefray: error: {path}: ") and fragment in lines[0]
        assert str(missing) not in err
        assert path.read_bytes() == before
        assert _ray_is_up() == ray_was_up
    assert not Path("results.json").exists()
    assert sorted(p.name for p in (tmp_path / "stores").iterdir()) == [
        "notes.db",
        "ro.db",
        "theirs.db",
    ]


def test_predict_reads_its_model_from_a_store_that_may_be_read_only(unusable_stores, capsys):
    """``predict`` only reads the store: a text file or someone else's database is refused like
    any reader's, but a read-only MLflow store is read (here: no such run in it)."""
    from oefray.cli import main

    from ..conftest import error_lines

    argv = ["predict", "0" * 32, "no-such-dataset", "--out", "maps"]
    expected = {
        "text": "not a SQLite database (found text",
        "read-only": f"unknown MLflow run id {'0' * 32}",
        "foreign": "a SQLite database without MLflow's tables",
    }
    ray_was_up = _ray_is_up()
    for kind, (path, _) in unusable_stores.items():
        before = path.read_bytes()
        assert main([*argv, "--tracking-uri", f"sqlite:///{path}"]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert expected[kind] in line and (kind == "read-only" or str(path) in line), line
        assert path.read_bytes() == before
    assert _ray_is_up() == ray_was_up
    assert not Path("maps").exists()


def test_train_refuses_an_unusable_store_in_a_process_of_its_own(unusable_stores, tmp_path):
    """The real command: one line on stderr, exit 1, and no Ray runtime reached (the cluster
    address given is closed: had Ray been started first, the error would be about it)."""
    import socket

    from ..conftest import error_lines

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    path, fragment = unusable_stores["foreign"]
    proc = subprocess.run(
        [sys.executable, "-m", "oefray.cli", "train", str(tmp_path / "no-such-features")]
        + ["--tracking-uri", f"sqlite:///{path}", "--address", closed],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"oefray: error: {path}: ") and fragment in line
    assert "Ray" not in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "results.json").exists()
