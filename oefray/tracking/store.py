"""The MLflow store: which one, where its artifacts go, and how to browse it.

:func:`resolve_tracking_uri` picks the store: an explicit URI, else ``MLFLOW_TRACKING_URI``, else
:func:`default_tracking_uri`, a SQLite database ``<cwd>/mlruns/mlflow.db`` (MLflow 3 refuses the
plain file store). Writers resolve it that way (creating the database's folder); readers use
:func:`existing_tracking_uri`, which creates nothing and refuses a store that is not there. For a
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


#: Tables every MLflow SQLite store has; a database without them is someone else's.
_MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "metrics", "params"})


def check_mlflow_sqlite(db: Path) -> None:
    """Refuse, in one line, a file that is not an MLflow SQLite store, reading it read-only:
    MLflow would otherwise create its ~50 tables in any SQLite database it is pointed at.

    Raises
    ------
    OefrayError
        For a file that is not SQLite, or a database without MLflow's tables.
    """
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        ) as con:
            names = {
                row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.Error as exc:
        raise OefrayError(db, f"not an MLflow store: not a SQLite database ({exc})") from None
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
