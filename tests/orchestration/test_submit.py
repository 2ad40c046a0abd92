"""``oefray submit``: job specs, the Ray token, and real jobs on real heads started here.

The end-to-end tests start their own Ray heads (``ray start --head``, one with token
authentication, one without; every port chosen free, each its own ``--temp-dir`` so no
``ray.init()`` elsewhere attaches to it) in a new session each, and stop exactly the processes of
that session: ``ray stop`` would stop every Ray runtime on the machine, the tests' own included.
What the client sends is read off the wire by a TCP relay in front of the head (:class:`_Relay`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from oefray.cli import main
from oefray.errors import OefrayError
from oefray.io import bids, scans
from oefray.io import features as fio
from oefray.orchestration.submit import (
    ALWAYS,
    DEFAULT_ADDRESS,
    NEVER,
    WHEN_ASKED,
    cleartext_host,
    find_token,
    parse_overrides,
    read_job_spec,
    resolve_address,
    token_policy,
    warn_cleartext,
)

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("oefray: error:")]


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """``n`` different free ports (all held at once while chosen: one at a time, the system may
    hand out the same port twice)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [int(s.getsockname()[1]) for s in socks]


# --------------------------------------------------------------------------------------------
# Job specs
# --------------------------------------------------------------------------------------------


def test_read_job_spec_applies_overrides(tmp_path):
    spec = read_job_spec(
        JOBS / "preprocess.yaml", {"OEFRAY_BIDS": "/data/bids", "MLFLOW_TRACKING_URI": "x"}
    )
    assert spec.name == "preprocess"
    assert spec.entrypoint.startswith('oefray preprocess "$OEFRAY_BIDS" --out "$OEFRAY_FEATURES"')
    assert spec.env_vars == {
        "OEFRAY_BIDS": "/data/bids",
        "OEFRAY_FEATURES": "/shared/oefray/features",
        "MLFLOW_TRACKING_URI": "x",
    }
    kwargs = spec.submit_kwargs()
    assert set(kwargs) == {"entrypoint", "runtime_env", "metadata"}
    assert kwargs["metadata"] == {"oefray.stage": "preprocess"}
    # a local working_dir is resolved against the spec's folder, not the current directory
    (tmp_path / "code").mkdir()
    path = tmp_path / "w.yaml"
    path.write_text("entrypoint: python -V\nruntime_env: {working_dir: code}\n")
    assert read_job_spec(path).runtime_env == {"working_dir": str(tmp_path / "code")}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("entrypoint: [oefray\n", "malformed YAML at line 2"),
        ("- oefray preprocess\n", "a job spec is a mapping"),
        ("", "a job spec is a mapping"),
        ("runtime_env: {}\n", "missing 'entrypoint'"),
        ("entrypoint: '  '\n", "missing 'entrypoint'"),
        ("entrypoint: oefray\nname: x\ncompute_config: y\n", "unknown key(s) compute_config, name"),
        ("entrypoint: oefray\nruntime_env: {cluster_env: x}\n", "unknown runtime_env field(s)"),
        ("entrypoint: oefray\nruntime_env: [x]\n", "'runtime_env' must be a mapping"),
        ("entrypoint: oefray\nruntime_env: {env_vars: {N: 2}}\n", "must be a string (quote it)"),
        ("entrypoint: oefray\nruntime_env: {env_vars: {1A: x}}\n", "is not a variable name"),
        ("entrypoint: oefray\nruntime_env: {pip: 3}\n", "runtime_env: runtime_env['pip']"),
        ("entrypoint: oefray\nruntime_env: {working_dir: nope}\n", "is not a folder"),
        ("entrypoint: oefray\nmetadata: {a: 1}\n", "'metadata' must map strings"),
        ("entrypoint: oefray\nentrypoint_num_gpus: -1\n", "'entrypoint_num_gpus' must be"),
        ("entrypoint: oefray\nentrypoint_resources: {x: y}\n", "'entrypoint_resources' must"),
    ],
)
def test_bad_job_spec_is_one_line_naming_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    with pytest.raises(OefrayError) as info:
        read_job_spec(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    # the command: the same line, exit code 2, nothing submitted (the address is not even tried)
    assert main(["submit", str(path), "--address", "http://127.0.0.1:9"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [f"oefray: error: {info.value}"]


def test_submit_missing_spec_and_bad_set(tmp_path, capsys):
    assert main(["submit", str(tmp_path / "nope.yaml")]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"{tmp_path / 'nope.yaml'}: cannot read the job spec" in lines[0]
    assert main(["submit", str(JOBS / "train.yaml"), "--set", "no-equals-sign"]) == 2
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "--set expects NAME=VALUE" in lines[0]
    assert parse_overrides(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}


def test_submit_to_unreachable_address(capsys):
    port = _free_port()  # nothing listens there once the probe socket is closed
    t0 = time.perf_counter()
    assert main(["submit", str(JOBS / "preprocess.yaml"), "--address", f"127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == [
        f"oefray: error: http://127.0.0.1:{port}: cannot reach the Ray job server (Connection refused)"
    ]
    assert len(err.strip().splitlines()) == 1
    assert time.perf_counter() - t0 < 10


# --------------------------------------------------------------------------------------------
# Address and token, as Ray resolves them
# --------------------------------------------------------------------------------------------


def test_resolve_address():
    assert resolve_address("10.0.0.5:8265", {}) == "http://10.0.0.5:8265"
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://h:1/"}) == "http://h:1"
    assert resolve_address(None, {"RAY_ADDRESS": "https://h:2"}) == "https://h:2"
    # a GCS address (what `ray.init` and `oefray preprocess --address` take) is not the job server
    assert resolve_address(None, {"RAY_ADDRESS": "10.0.0.5:6379"}) == DEFAULT_ADDRESS
    assert resolve_address("http://x:3", {"RAY_API_SERVER_ADDRESS": "http://h:1"}) == "http://x:3"


def test_find_token_follows_rays_token_sources(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    token_file = tmp_path / "token"
    token_file.write_text("  from-path \n")
    found = find_token({"HOME": str(home)})
    assert found is not None and (found.value, found.source) == ("from-home", "~/.ray/auth_token")
    assert found.header() == {"Authorization": "Bearer from-home"}
    assert "from-home" not in repr(found)  # never in a log line or a traceback
    env = {"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(token_file)}
    found = find_token(env)
    assert found is not None and found.value == "from-path"
    assert found.source == f"{token_file} (RAY_AUTH_TOKEN_PATH)"
    found = find_token({**env, "RAY_AUTH_TOKEN": "from-env"})
    assert found is not None and (found.value, found.source) == ("from-env", "RAY_AUTH_TOKEN")
    assert find_token({"HOME": str(tmp_path)}) is None  # no token anywhere
    with pytest.raises(OefrayError, match=r"missing: cannot read the Ray token"):
        find_token({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(OefrayError, match=r"empty: the Ray token file .* is empty"):
        find_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


def test_token_policy():
    assert token_policy({}) == WHEN_ASKED
    assert token_policy({"RAY_AUTH_MODE": ""}) == WHEN_ASKED
    assert token_policy({"RAY_AUTH_MODE": "token"}) == ALWAYS
    assert token_policy({"RAY_AUTH_MODE": " Token "}) == ALWAYS
    assert token_policy({"RAY_AUTH_MODE": "disabled"}) == NEVER
    # --token: the command line wins over the environment, as --address does
    assert token_policy({}, force=True) == ALWAYS
    assert token_policy({"RAY_AUTH_MODE": "disabled"}, force=True) == ALWAYS


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("http://10.1.2.3:8265", "10.1.2.3"),
        ("http://head.example.org:8265", "head.example.org"),
        ("http://[2001:db8::5]:8265", "2001:db8::5"),
        ("http://[::ffff:10.1.2.3]:8265", "::ffff:10.1.2.3"),
        ("https://10.1.2.3:8265", None),  # encrypted
        ("https://head.example.org", None),
        ("http://127.0.0.1:8265", None),  # a `ray dashboard` / `ssh -L` tunnel ends here
        ("http://127.45.6.7:8265", None),
        ("http://localhost:8265", None),
        ("http://LOCALHOST:8265", None),
        ("http://[::1]:8265", None),
        ("http://[::ffff:127.0.0.1]:8265", None),
    ],
)
def test_cleartext_host(address, host):
    assert cleartext_host(address) == host


def test_warn_cleartext_is_one_warning_naming_the_host(caplog):
    caplog.set_level(logging.DEBUG, logger="oefray")
    warn_cleartext("http://10.1.2.3:8265")
    (record,) = caplog.records
    assert record.name == "oefray.orchestration.submit" and record.levelno == logging.WARNING
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("sending the Ray token to 10.1.2.3 over plain http: it travels ")
    assert "unencrypted" in message and "ray dashboard cluster.yaml" in message
    assert "ssh -L" in message and "https://" in message
    caplog.clear()
    for address in ("https://10.1.2.3:8265", "http://127.0.0.1:8265", "http://localhost:8265"):
        warn_cleartext(address)
    assert caplog.records == []


# --------------------------------------------------------------------------------------------
# End to end: a real head, a real job
# --------------------------------------------------------------------------------------------


def _session_processes(sid: int) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _stop_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, every process of session ``sid`` (the head and its workers).

    The grace is short: measured with ray 2.60, ``gcs_server`` and the autoscaler monitor take
    over 15 s to act on SIGTERM, and this throwaway head has nothing to save.
    """
    import psutil

    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 10.0)):
        procs = _session_processes(sid)
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _session_processes(sid):
            time.sleep(0.2)
        if not _session_processes(sid):
            return


@contextlib.contextmanager
def _start_head(tmp_path_factory, *, token: bool, num_cpus: int) -> Iterator[tuple[str, Path]]:
    """A Ray head started with this venv's ``ray``, with token authentication or explicitly
    without (``RAY_AUTH_MODE=disabled``); yields ``(dashboard URL, token file)`` and stops only
    its own processes afterwards. The token file is written either way: for the head that does
    not ask for it, it is the one a user has and must not send."""
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    # short: Ray's Unix sockets live under it (path limit ~107 characters)
    temp_dir = tempfile.mkdtemp(prefix="oefray-ray-", dir="/tmp")
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # the job's `oefray` and workers
        RAY_AUTH_MODE="token" if token else "disabled",
        RAY_DISABLE_USAGE_STATS="1",
    )
    if token:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    names = (
        "port",
        "dashboard-port",
        "ray-client-server-port",
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    worker_min = 20000 + secrets.randbelow(9000)  # below the ephemeral range, away from 10002+
    args = [str(bin_dir / "ray"), "start", "--head", "--num-cpus", str(num_cpus)]
    args += ["--temp-dir", temp_dir, "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    args += [f"--{name}={port}" for name, port in ports.items()]
    args += [f"--min-worker-port={worker_min}", f"--max-worker-port={worker_min + 200}"]
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its pid is the session id of every process it starts
    )
    try:
        out, _ = proc.communicate(timeout=180)
        if proc.returncode != 0:
            pytest.fail(f"ray start --head failed ({proc.returncode}):\n{out[-3000:]}")
        yield f"http://127.0.0.1:{ports['dashboard-port']}", token_file
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop_session(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with token authentication (2 CPUs); ``(dashboard URL, token file)``."""
    with _start_head(tmp_path_factory, token=True, num_cpus=2) as head:
        yield head


@pytest.fixture(scope="module")
def ray_head_open(tmp_path_factory):
    """A Ray head without authentication (1 CPU); ``(dashboard URL, a token file)``."""
    with _start_head(tmp_path_factory, token=False, num_cpus=1) as head:
        yield head


class _Relay:
    """A TCP relay on 127.0.0.1 in front of a job server: every byte each connection sent and
    received, in the order the connections were opened. Bytes, not parsed requests, so no header
    passes unseen (the websocket of the log stream included).

    Parameters
    ----------
    target : str
        The job server's URL, ``http://127.0.0.1:<port>``.
    """

    def __init__(self, target: str) -> None:
        self._target_port = int(target.rsplit(":", 1)[1])
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.connections: list[_Connection] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            self._sockets += [client, upstream]
            connection = _Connection()
            self.connections.append(connection)
            for src, dst, record in (
                (client, upstream, connection.sent),
                (upstream, client, connection.received),
            ):
                threading.Thread(target=self._pump, args=(src, dst, record), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while chunk := src.recv(65536):
                record += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def requests(self) -> list[_Connection]:
        """The connections that sent something (not the reachability probe's bare connect)."""
        return [c for c in self.connections if c.sent]

    def __enter__(self) -> _Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()
        for sock in self._sockets:
            sock.close()


class _Connection:
    """What one connection through :class:`_Relay` carried."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.received = bytearray()

    @property
    def request_line(self) -> str:
        return self.sent.split(b"\r\n", 1)[0].decode()

    @property
    def authorizations(self) -> list[str]:
        """The values of every ``Authorization`` header sent on it (any capitalisation)."""
        return re.findall(r"(?im)^authorization:[ \t]*(.*?)\r$", self.sent.decode("latin-1"))

    @property
    def status(self) -> int:
        return int(self.received.split(b" ", 2)[1])


def _user_with_token(tmp_path: Path, token: str, monkeypatch) -> None:
    """A user whose token is in ``~/.ray/auth_token`` (``HOME`` under ``tmp_path``) and whose
    environment says nothing else about Ray's authentication or address."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token + "\n")
    monkeypatch.setenv("HOME", str(home))
    for name in (
        "RAY_AUTH_MODE",
        "RAY_AUTH_TOKEN",
        "RAY_AUTH_TOKEN_PATH",
        "RAY_API_SERVER_ADDRESS",
        "RAY_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)


def _hello_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "hello.yaml"
    spec.write_text("entrypoint: python -c \"print('hello from the cluster')\"\n")
    return spec


@pytest.mark.ray
@pytest.mark.slow
def test_the_token_goes_once_the_cluster_asks_for_it(
    ray_head, tmp_path, monkeypatch, capsys, caplog
):
    url, token_file = ray_head
    token = token_file.read_text().strip()
    _user_with_token(tmp_path, token, monkeypatch)
    caplog.set_level(logging.INFO, logger="oefray.orchestration.submit")
    with _Relay(url) as relay:
        args = ["submit", str(_hello_spec(tmp_path)), "--address", relay.url]
        code = main([*args, "--results", str(tmp_path / "submit.json")])
        captured = capsys.readouterr()
        # RAY_AUTH_MODE=disabled: not even when asked; one line that says why
        sent_before = len(relay.requests())
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        assert main(args) == 1
        assert _error_lines(capsys.readouterr().err) == [
            f"oefray: error: {relay.url}: the cluster rejected the request (Authentication "
            "required: Unauthorized: Missing authentication token); give its token through "
            "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; RAY_AUTH_MODE=disabled "
            "sends none (unset it, or add --token)"
        ]
        refused = relay.requests()[sent_before:]
        assert [(c.status, c.authorizations) for c in refused] == [(401, [])]
        monkeypatch.delenv("RAY_AUTH_MODE")
    assert code == 0, captured.err
    assert "hello from the cluster" in captured.out  # the job ran and its log was streamed
    assert json.loads((tmp_path / "submit.json").read_text())["status"] == "SUCCEEDED"

    first, *rest = relay.requests()[:sent_before]
    # the first request has no token, and the head asks for one
    assert first.request_line == "GET /api/version HTTP/1.1" and first.authorizations == []
    assert first.status == 401 and first.received.endswith(b"Missing authentication token")
    # then every request carries it: the version checks, the submission, the log stream, ...
    assert len(rest) >= 4
    assert all(c.authorizations == [f"Bearer {token}"] for c in rest)
    assert all(c.status in (101, 200) for c in rest)
    lines = [c.request_line for c in rest]
    assert "POST /api/jobs/ HTTP/1.1" in lines
    assert any(line.startswith("GET /api/jobs/oefray-hello-") for line in lines)
    assert any(line.endswith("/logs/tail HTTP/1.1") for line in lines)  # the websocket
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("oefray")]
    assert said == [("INFO", "the cluster asks for a token; sending ~/.ray/auth_token")]
    assert "oefray: warning" not in captured.err  # 127.0.0.1: no cleartext warning


@pytest.mark.ray
@pytest.mark.slow
def test_no_token_goes_to_a_cluster_that_does_not_ask(
    ray_head_open, tmp_path, monkeypatch, capsys, caplog
):
    url, token_file = ray_head_open
    token = token_file.read_text().strip()
    _user_with_token(tmp_path, token, monkeypatch)  # the user has a token, for another cluster
    caplog.set_level(logging.DEBUG, logger="oefray")
    spec = _hello_spec(tmp_path)
    with _Relay(url) as relay:
        code = main(["submit", str(spec), "--address", relay.url, "--results", str(tmp_path / "r")])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "hello from the cluster" in captured.out
        # the same after a `ray.init()` in the submitting process, which leaves Ray's own
        # client in token mode (it would add the machine's token to every request itself)
        script = (
            "import os, sys; os.environ['RAY_AUTH_MODE'] = 'token';"
            "from ray._raylet import Config; Config.initialize('');"
            "from ray._private.authentication.authentication_utils import is_token_auth_enabled;"
            "assert is_token_auth_enabled(); del os.environ['RAY_AUTH_MODE'];"
            "from oefray.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", script, "submit", str(spec), "--address", relay.url]
            + ["--no-follow", "--results", str(tmp_path / "r2")],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    sent = relay.requests()
    assert len(sent) >= 7  # both submissions went through the relay
    assert [c for c in sent if c.authorizations] == []
    assert b"authorization" not in b"".join(c.sent for c in sent).lower()
    assert token.encode() not in b"".join(c.sent for c in sent)
    assert sum(c.request_line == "POST /api/jobs/ HTTP/1.1" for c in sent) == 2
    assert any(c.request_line.endswith("/logs/tail HTTP/1.1") for c in sent)
    assert all(c.status in (101, 200) for c in sent)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("oefray")] == []


@pytest.mark.ray
@pytest.mark.slow
def test_token_option_sends_it_from_the_first_request(ray_head_open, tmp_path, monkeypatch, capsys):
    url, token_file = ray_head_open
    token = token_file.read_text().strip()
    _user_with_token(tmp_path, token, monkeypatch)
    # Ray's client would take these over the address it is given; the token goes to the relay
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{_free_port()}")
    spec = str(_hello_spec(tmp_path))
    with _Relay(url) as relay:
        code = main(["submit", spec, "--address", relay.url, "--token", "--no-follow"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        sent = relay.requests()
        assert sent[0].request_line == "GET /api/version HTTP/1.1"
        assert len(sent) >= 3 and all(c.authorizations == [f"Bearer {token}"] for c in sent)
        assert "POST /api/jobs/ HTTP/1.1" in [c.request_line for c in sent]
        assert "oefray: warning" not in captured.err
        assert "submitted oefray-hello-" in captured.err and f"to {relay.url}:" in captured.err

        # the same from the config file's [submit] table
        cfg = tmp_path / "submit.toml"
        cfg.write_text("[submit]\ntoken = true\nfollow = false\n")
        before = len(relay.requests())
        assert main(["submit", spec, "--address", relay.url, "--config", str(cfg)]) == 0
        later = relay.requests()[before:]
        assert later and all(c.authorizations == [f"Bearer {token}"] for c in later)
        capsys.readouterr()

        # --token and no token anywhere: one line, and nothing was sent
        (tmp_path / "home" / ".ray" / "auth_token").unlink()
        before = len(relay.requests())
        assert main(["submit", spec, "--address", relay.url, "--token"]) == 1
        assert _error_lines(capsys.readouterr().err) == [
            "oefray: error: --token but no Ray token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or put the cluster's token in ~/.ray/auth_token"
        ]
        assert len(relay.requests()) == before


@pytest.mark.ray
@pytest.mark.slow
def test_submit_preprocess_job_end_to_end(ray_head, tiny_cohort, tmp_path, monkeypatch, capsys):
    url, token = ray_head
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)

    # the cluster refuses a user without its token (the command as a user runs it, in a process
    # of its own), and one with another token: one line each
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token there
    done = subprocess.run(
        [sys.executable, "-m", "oefray.cli", "submit", str(JOBS / "preprocess.yaml")],
        env={**env, "RAY_API_SERVER_ADDRESS": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = _error_lines(done.stderr)
    assert len(lines) == 1 and "Missing authentication token" in lines[0], done.stderr
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    assert main(["submit", str(JOBS / "preprocess.yaml"), "--address", url]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "Invalid authentication token" in lines[0]
    monkeypatch.delenv("RAY_AUTH_TOKEN")

    # with the token (a file, as a user keeps it): the stage runs on the cluster
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    out = tmp_path / "features"
    code = main(
        [
            "submit",
            str(JOBS / "preprocess.yaml"),
            "--address",
            url,
            "--set",
            f"OEFRAY_BIDS={tiny_cohort}",
            "--set",
            f"OEFRAY_FEATURES={out}",
            "--results",
            str(tmp_path / "submit.json"),  # not ./results.json in the checkout
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "SUCCEEDED" in captured.out
    assert f"features: {out}" in captured.out  # the job's own output, streamed
    assert _error_lines(captured.err) == []

    manifest = fio.read_manifest(out)
    assert manifest is not None and sorted(manifest["subjects"]) == ["P11", "P3", "P4", "P6"]
    table = fio.read_features(out)
    brain = {
        s: int(bids.read_mask(scans.scan_subject(tiny_cohort, s).mask).sum())
        for s in ("P3", "P4", "P6", "P11")
    }
    assert table.num_rows == sum(brain.values()) > 2000
    assert {s: e["rows"] for s, e in manifest["subjects"].items()} == brain
    assert np.isfinite(table.column("B").to_numpy()).mean() > 0.99
    assert (out / "_results.json").is_file()
    record = json.loads((tmp_path / "submit.json").read_text())
    assert record["command"] == "submit" and record["status"] == "SUCCEEDED"
    assert record["address"] == url and record["submission_id"].startswith("oefray-preprocess-")

    # a job that fails on the cluster: exit 1, one line with Ray's status
    code = main(
        [
            "submit",
            str(JOBS / "preprocess.yaml"),
            "--address",
            url,
            "--set",
            f"OEFRAY_BIDS={tmp_path / 'no-such-dataset'}",
            "--set",
            f"OEFRAY_FEATURES={tmp_path / 'f2'}",
            "--results",
            str(tmp_path / "submit-failed.json"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert f"oefray: error: {tmp_path / 'no-such-dataset'}: not a folder" in captured.out
    lines = _error_lines(captured.err)
    assert len(lines) == 1
    assert lines[0].startswith(f"oefray: error: {JOBS / 'preprocess.yaml'}: job oefray-preprocess-")
    assert "FAILED after" in lines[0] and "exit code 1" in lines[0]
    assert json.loads((tmp_path / "submit-failed.json").read_text())["status"] == "FAILED"
