"""``oefray submit``: job specs, the Ray token, and a real job on a real head started here.

The end-to-end test starts its own Ray head (``ray start --head``, token authentication on, every
port chosen free, its own ``--temp-dir`` so no ``ray.init()`` elsewhere attaches to it) in a new
session, and stops exactly the processes of that session: ``ray stop`` would stop every Ray
runtime on the machine, the tests' own included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from oefray.cli import main
from oefray.errors import OefrayError
from oefray.io import bids, scans
from oefray.io import features as fio
from oefray.orchestration.submit import (
    DEFAULT_ADDRESS,
    auth_headers,
    parse_overrides,
    read_job_spec,
    resolve_address,
)

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("oefray: error:")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


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


def test_auth_headers_follow_rays_token_sources(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    token_file = tmp_path / "token"
    token_file.write_text("  from-path \n")
    assert auth_headers({"HOME": str(home)}) == {"Authorization": "Bearer from-home"}
    env = {"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert auth_headers(env) == {"Authorization": "Bearer from-path"}
    assert auth_headers({**env, "RAY_AUTH_TOKEN": "from-env"}) == {
        "Authorization": "Bearer from-env"
    }
    assert auth_headers({**env, "RAY_AUTH_MODE": "disabled"}) == {}
    assert auth_headers({"HOME": str(tmp_path)}) == {}  # no token anywhere: none sent
    with pytest.raises(OefrayError, match="RAY_AUTH_MODE=token but no Ray token"):
        auth_headers({"HOME": str(tmp_path), "RAY_AUTH_MODE": "token"})
    with pytest.raises(OefrayError, match=r"missing: cannot read the Ray token"):
        auth_headers({"HOME": str(home), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


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


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head with token authentication, started with this venv's ``ray``; yields
    ``(dashboard URL, token file)`` and stops only its own processes afterwards."""
    token = tmp_path_factory.mktemp("auth") / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # short: Ray's Unix sockets live under it (path limit ~107 characters)
    temp_dir = tempfile.mkdtemp(prefix="oefray-ray-", dir="/tmp")
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",  # the job's `oefray` and workers
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_DISABLE_USAGE_STATS="1",
    )
    ports = {
        name: _free_port()
        for name in (
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
    }
    worker_min = 20000 + secrets.randbelow(9000)  # below the ephemeral range, away from 10002+
    args = [str(bin_dir / "ray"), "start", "--head", "--num-cpus", "2", "--temp-dir", temp_dir]
    args += ["--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
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
        yield f"http://127.0.0.1:{ports['dashboard-port']}", token
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop_session(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_submit_preprocess_job_end_to_end(ray_head, tiny_cohort, tmp_path, monkeypatch, capsys):
    url, token = ray_head
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)

    # the cluster refuses a user without its token (a fresh process: a `ray.init()` earlier in
    # this one leaves Ray's client sending the machine's default token), and one with another
    # token: one line each
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
