"""``oefray ui``: the MLflow UI and REST API over the project's store, as a foreground process.

The server is ``mlflow server`` as :func:`oefray.tracking.server_command` spells it for the store
that :class:`~oefray.tracking.Tracker` resolves (so ``oefray ui`` shows what ``oefray train``
logged, artifacts included). It runs as a child in a process group of its own: Ctrl-C (SIGINT)
or SIGTERM to ``oefray ui`` stops that group, MLflow's uvicorn worker included, and nothing is
left listening.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from oefray.config import UIConfig
from oefray.errors import OefrayError


class _Terminated(Exception):
    """SIGTERM or SIGHUP, turned into an exception so that the server is stopped on the way out."""


def client_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens (``0.0.0.0``/``::`` listen everywhere: use
    the loopback address)."""
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else "[::1]" if host == "::" else host
    return f"http://{shown}:{int(port)}"


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (a bind attempt; TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return True
    return False


def answers_health(url: str, timeout_s: float = 2.0) -> bool:
    """Whether an MLflow server at ``url`` answers ``GET /health`` with 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """Stop the server's process group: SIGTERM (uvicorn's clean shutdown; SIGINT makes it print
    a traceback), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)  # the group of the child (process_group=0 below)
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its group may still hold the uvicorn worker for a moment
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        return


def serve_ui(
    config: UIConfig | None = None,
    *,
    on_start: Callable[[str, str], None] | None = None,
    on_ready: Callable[[str], None] | None = None,
    poll_s: float = 0.5,
) -> str:
    """Run the MLflow server over a store until Ctrl-C, SIGTERM or SIGHUP (terminal closed).

    Parameters
    ----------
    config : UIConfig, optional
        ``tracking_uri``: the store (default: the one :class:`~oefray.tracking.Tracker`
        resolves, i.e. ``$MLFLOW_TRACKING_URI`` or ``./mlruns/mlflow.db``), a database, not an
        ``http`` URI; ``host``, ``port``: where the server listens (default: this machine only).
    on_start : callable, optional
        Called with the server's URL and the store URI when the server process starts.
    on_ready : callable, optional
        Called once with the server's URL when it answers ``/health``.

    Returns
    -------
    str
        The URL the server was on, after it was stopped by Ctrl-C, SIGTERM or SIGHUP.

    Raises
    ------
    OefrayError
        If the port is taken, the URI is a server already, or the server exits by itself.
    """
    from oefray.tracking import resolve_tracking_uri, server_command

    config = config or UIConfig()
    host, port = config.host, config.port
    uri = resolve_tracking_uri(config.tracking_uri)
    command = server_command(uri, host=host, port=port)
    url = client_url(host, port)
    if port_in_use(host, port):
        raise OefrayError(None, f"port {port} on {host} is in use; pick another with --port")
    env = dict(os.environ)
    # the server's background job runner (GenAI evaluation jobs) is not needed to browse runs
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    process = subprocess.Popen(command, env=env, process_group=0)
    if on_start is not None:
        on_start(url, uri)

    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    # the terminal closed (SIGHUP): the server goes with it, as on Ctrl-C
    previous_hup = signal.signal(signal.SIGHUP, terminate)
    # Ctrl-C stops the server even where SIGINT came in ignored (a job started with `&`)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        ready = False
        while process.poll() is None:
            if not ready and answers_health(url):
                ready = True
                if on_ready is not None:
                    on_ready(url)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=poll_s)
        raise OefrayError(
            None,
            f"the MLflow server exited with code {process.returncode}"
            + ("" if ready else " before it answered (see its messages above)"),
        )
    except (KeyboardInterrupt, _Terminated):
        return url
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        signal.signal(signal.SIGINT, previous_int)
        if process.poll() is None or _group_alive(process.pid):
            _stop(process)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
