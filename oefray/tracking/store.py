"""The MLflow store: which one, where its artifacts go, and how to browse it.

:func:`resolve_tracking_uri` picks the store: an explicit URI, else ``MLFLOW_TRACKING_URI``, else
:func:`default_tracking_uri`, a SQLite database ``<cwd>/mlruns/mlflow.db`` (MLflow 3 refuses the
plain file store). Writers use :func:`writable_tracking_uri`, which refuses in one line a SQLite
store they cannot write (:func:`check_writable_store`: not SQLite, someone else's database,
read-only) and creates the database's folder; readers use :func:`existing_tracking_uri`, which
creates nothing and refuses a store that is not there or not MLflow's. For a
SQLite store the artifacts of experiment ``<name>`` go to ``<db folder>/artifacts/<name>/``
(:func:`experiment_artifact_location`): runs under ``<run_id>/artifacts/``, logged models under
``models/<model_id>/artifacts/``. :func:`ui_command` prints how to browse it all, and
:func:`experiment_url` is an experiment's page in the UI's model-training view;
:func:`server_command` is the ``mlflow server`` that ``oefray ui`` runs over the store (it
proxies artifacts, so clients of ``http://`` URIs upload them over HTTP).

Importing this module imports no MLflow and touches neither the tracking URI nor the disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

from oefray.errors import OefrayError


def default_tracking_uri(cwd: str | os.PathLike[str] | None = None, *, create: bool = True) -> str:
    """The default store: SQLite at ``<cwd>/mlruns/mlflow.db`` (creates ``mlruns/`` when called,
    unless ``create`` is false).

    Returns
    -------
    str
        ``sqlite:///<absolute path>/mlruns/mlflow.db``.
    """
    folder = Path(os.getcwd() if cwd is None else cwd).resolve() / "mlruns"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve_tracking_uri(
    explicit: str | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    create: bool = True,
) -> str:
    """The store to use: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the default.

    A plain path to a ``.db`` file is turned into a ``sqlite:///`` URI. With ``create`` false,
    no folder is made for a SQLite store (readers must not create stores).

    Raises
    ------
    OefrayError
        For a file-store URI or a plain folder (MLflow 3 refuses the file store).
    """
    uri = (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or default_tracking_uri(cwd, create=create)
    )
    scheme = urlparse(uri).scheme
    looks_like_path = scheme == "" and ("/" in uri or uri.startswith(".") or uri.endswith(".db"))
    if scheme == "file" or looks_like_path:
        path = Path(unquote(urlparse(uri).path) if scheme == "file" else uri).expanduser()
        if path.suffix == ".db":
            path = path.resolve()
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        raise OefrayError(
            None,
            f"tracking URI {uri!r} is an MLflow file store, which MLflow 3 refuses; use "
            "sqlite:///<path>/mlflow.db or an http(s):// tracking server",
        )
    return uri


def existing_tracking_uri(explicit: str | None = None) -> str:
    """The store for readers (reports), resolved like :func:`resolve_tracking_uri` but creating
    nothing.

    Raises
    ------
    OefrayError
        If the store is a SQLite file that does not exist (MLflow would create it).
    """
    uri = resolve_tracking_uri(explicit, create=False)
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise OefrayError(db, "no MLflow store here (nothing tracked yet?)")
        check_mlflow_sqlite(db)
    return uri


def writable_tracking_uri(
    explicit: str | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    create: bool = True,
) -> str:
    """The store for writers (train, tune, baseline, study, evaluate): resolved like
    :func:`resolve_tracking_uri`, checked by :func:`check_writable_store`, and, with ``create``,
    the SQLite database's folder made (MLflow creates the database itself).

    With ``create`` false it only checks, creating nothing: what a command calls first, before it
    reads its input or starts Ray.

    Raises
    ------
    OefrayError
        For a file store, or a SQLite store a writer cannot use (see
        :func:`check_writable_store`).
    """
    uri = resolve_tracking_uri(explicit, cwd=cwd, create=False)
    check_writable_store(uri)
    db = sqlite_path(uri)
    if create and db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return uri


def check_writable_store(uri: str) -> None:
    """Refuse, in one line, a SQLite store that MLflow could not write runs to, or should not.

    Only the disk is read (the database read-only, with :mod:`sqlite3`; no MLflow): MLflow would
    otherwise fail on the first write with a SQLAlchemy traceback, or create its ~50 tables in
    someone else's database. A database that exists must be SQLite, either empty (no tables but
    SQLite's own) or an MLflow store, and writable, in a writable folder (SQLite writes its
    journal next to it, MLflow the artifacts). One that does not exist yet must have, as nearest
    existing folder above it, a writable folder to be created in.

    "Writable" is what this process may write (:func:`os.access`), and, for root (who may write
    anything), a file or folder with a write bit: ``chmod a-w`` means read-only for everyone.

    Parameters
    ----------
    uri : str
        A resolved store URI. Only ``sqlite:///`` files are checked; a tracking server
        (``http(s)://``), another database or an in-memory SQLite store pass.

    Raises
    ------
    OefrayError
        Naming the database: a folder, not SQLite (with what it holds instead), a SQLite
        database of other tables, read-only, in a read-only folder, or not creatable.
    """
    db = sqlite_path(uri)
    if db is None:
        return
    if db.exists():
        if db.is_dir():
            raise OefrayError(db, "is a folder, not a SQLite database file")
        tables = {t for t in _sqlite_tables(db) if not t.startswith("sqlite_")}  # SQLite's own
        if tables and not _mlflow_like(tables):
            raise OefrayError(
                db,
                f"not an MLflow store: a SQLite database of other tables ({_listed(tables)}); "
                "nothing was written to it: give a new file or an MLflow store",
            )
        if _read_only(db):
            raise OefrayError(db, "is read-only: cannot write MLflow runs to it")
        folder = db.resolve().parent
        if _read_only(folder):
            raise OefrayError(
                db, f"is in a read-only folder ({folder}): cannot write MLflow runs to it"
            )
        return
    above = db.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise OefrayError(db, f"cannot create the MLflow store: {above} is not a folder")
    if _read_only(above):
        raise OefrayError(db, f"cannot create the MLflow store: the folder {above} is read-only")


#: Tables every MLflow SQLite store has; a database without them is someone else's.
_MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "metrics", "params"})


def _mlflow_like(tables: set[str]) -> bool:
    """Whether a database's tables are an MLflow store's, or the first of them: another process
    may be creating the store right now (MLflow makes ``experiments`` and ``runs`` first and
    ``alembic_version`` last), and a writer must not refuse a store mid-creation."""
    return "alembic_version" in tables or {"experiments", "runs"} <= tables


#: The first 16 bytes of every SQLite database file (an empty file is an empty database too).
_SQLITE_HEADER = b"SQLite format 3\x00"


def _read_only(path: Path) -> bool:
    """Whether this process may not write ``path`` (a folder: create files in it), or it has no
    write bit at all (which root's :func:`os.access` ignores)."""
    mode = os.W_OK | os.X_OK if path.is_dir() else os.W_OK
    return not os.access(path, mode) or path.stat().st_mode & 0o222 == 0


def _listed(names: set[str], most: int = 6) -> str:
    """``a, b, c`` (sorted), cut to ``most`` names with ``... (n tables)``."""
    shown = sorted(names)
    if len(shown) <= most:
        return ", ".join(shown)
    return f"{', '.join(shown[:most])}, ... ({len(shown)} tables)"


def _found(head: bytes) -> str:
    """What the first bytes of a file that is not SQLite look like: ``found text '...'`` or
    ``found binary data (1f 8b 08 ...)``."""
    for cut in range(4):  # the last character may be cut in the middle
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and all(c.isprintable() or c in "\t\r\n" for c in text):
            return f"found text {text[:40]!r}"
        break
    return f"found binary data ({head[:8].hex(' ')} ...)"


def _sqlite_tables(db: Path) -> set[str]:
    """The tables of the SQLite database file ``db``, read read-only.

    Raises
    ------
    OefrayError
        For a file that cannot be read, is not SQLite (saying what it holds), or that SQLite
        cannot read.
    """
    import sqlite3

    try:
        with db.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise OefrayError(db, f"cannot be read ({exc.strerror})") from None
    if head and not head.startswith(_SQLITE_HEADER):
        raise OefrayError(db, f"not an MLflow store: not a SQLite database ({_found(head)})")
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        ) as con:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    except sqlite3.Error as exc:
        raise OefrayError(db, f"cannot read it as a SQLite database ({exc})") from None
    return {row[0] for row in rows}


def check_mlflow_sqlite(db: Path) -> None:
    """Refuse, in one line, a file that is not an MLflow SQLite store, reading it read-only:
    MLflow would otherwise create its ~50 tables in any SQLite database it is pointed at.

    Raises
    ------
    OefrayError
        For a file that is not SQLite, or a database without MLflow's tables.
    """
    names = _sqlite_tables(db)
    missing = sorted(_MLFLOW_TABLES - names)
    if missing:
        raise OefrayError(
            db,
            f"not an MLflow store: a SQLite database without MLflow's tables ({', '.join(missing)} "
            "missing); nothing was written to it",
        )


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores (in-memory too)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def artifact_root(uri: str) -> Path | None:
    """Where a SQLite store keeps artifacts: ``<db folder>/artifacts``; None for other stores
    (a tracking server decides for itself)."""
    db = sqlite_path(uri)
    return None if db is None else db.resolve().parent / "artifacts"


def experiment_artifact_location(uri: str, name: str) -> str | None:
    """Artifact location of a new experiment ``name``: ``file://<artifact root>/<name>`` (the name
    made safe for a folder) for a SQLite store; None (MLflow's choice) for other stores."""
    root = artifact_root(uri)
    if root is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
    return (root / slug).as_uri()


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on a store.

    For SQLite: ``mlflow ui --backend-store-uri sqlite:///... --default-artifact-root <root>``
    (artifact locations are absolute, so it works from any folder); for another database the
    same without the root; for a tracking server, a command that opens it in a browser.
    """
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return f"python -m webbrowser {shlex.quote(str(redact_uri(uri)))}"
    command = f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    root = artifact_root(uri)
    if root is not None:
        command += f" --default-artifact-root {shlex.quote(root.as_uri())}"
    return command


def redact_uri(uri: str | None) -> str | None:
    """``uri`` with the password of its user info replaced by ``***``
    (``http://alice:S3cret@host:5000`` -> ``http://alice:***@host:5000``): what oefray prints,
    writes to results.json and reports, and logs as a parameter."""
    if not uri or "@" not in uri:
        return uri
    parts = urlparse(uri)
    if parts.password is None and parts.username is None:
        return uri
    user = parts.username or ""
    hidden = f"{user}:***" if parts.password is not None else "***"
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{hidden}@{host}").geturl()


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The address of an experiment's page in the MLflow UI, in its model-training view.

    MLflow 3.17's UI picks the view (GenAI: traces and token usage; model training: the runs
    table) from its sidebar switch, remembered per browser and GenAI by default, not from the
    experiment tag ``mlflow.experimentKind``; the query ``workflowType=machine_learning``
    selects the training view for the page opened.

    Parameters
    ----------
    base_url : str
        The server, e.g. ``http://127.0.0.1:5000``.
    experiment_id : str
        The experiment's id.

    Returns
    -------
    str
        ``<base_url>/#/experiments/<id>?workflowType=machine_learning``.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def experiments_url(base_url: str) -> str:
    """The MLflow UI's experiments list in its model-training view (see :func:`experiment_url`;
    checked in headless Chromium against MLflow 3.17.2)."""
    return f"{base_url.rstrip('/')}/#/experiments?workflowType=machine_learning"


def server_command(uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line (UI and REST API) over a store.

    For a SQLite store the server proxies artifacts (``--serve-artifacts``) with
    ``--artifacts-destination`` = :func:`artifact_root`: runs logged directly to the database
    keep their absolute ``file://`` artifact locations, which the server reads, and experiments
    created through the server store under the same root, uploaded over HTTP
    (``mlflow-artifacts:/<experiment id>/...``), so clients need no access to the folder.
    Other databases get MLflow's default destination (``./mlartifacts``). One worker: the UI of
    one project, not a shared service.

    Parameters
    ----------
    uri : str
        A resolved database store URI (see :func:`resolve_tracking_uri`).
    host, port
        Where the server listens.

    Returns
    -------
    list of str
        ``[python, -m, mlflow, server, ...]``, run with the current interpreter.

    Raises
    ------
    OefrayError
        For an ``http(s)://`` URI, which is a tracking server already.
    """
    if urlparse(uri).scheme in ("http", "https"):
        raise OefrayError(None, f"{uri} is a tracking server already; open it in a browser")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--serve-artifacts"]
    root = artifact_root(uri)
    if root is not None:
        command += ["--artifacts-destination", str(root)]
    command += ["--host", host, "--port", str(int(port)), "--workers", "1"]
    return command
