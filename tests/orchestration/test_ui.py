"""``oefray ui`` end to end: a real MLflow server over a sqlite store on 127.0.0.1, a 1-epoch
training that logs to it over HTTP (metrics, artifacts, the model), read back through MLflow's
REST API with plain HTTP requests, then stopped as Ctrl-C does."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from oefray.cli import main
from oefray.orchestration.ui import answers_health
from oefray.physics.constants import RMSE_QUANTITIES as QUANTITIES
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: Seconds the server may take to answer: MLflow's start-up is ~10 s, several times that on a
#: loaded 2-core machine.
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200
        return bytes(response.read())


def _get_json(base: str, endpoint: str, **query: str) -> dict:
    return json.loads(_get(f"{base}{endpoint}?{urllib.parse.urlencode(query)}"))


def wait_for_server(url: str, timeout_s: float, *, process: subprocess.Popen) -> None:
    """Wait until the MLflow server at ``url`` answers ``/health``; fail after ``timeout_s``
    seconds, or as soon as ``process`` has exited."""
    deadline = time.monotonic() + timeout_s
    while not answers_health(url):
        if process.poll() is not None:
            pytest.fail(f"the server process exited with code {process.returncode}")
        if time.monotonic() > deadline:
            pytest.fail(f"no MLflow server answered at {url} within {timeout_s:.0f} s")
        time.sleep(0.5)


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the ``oefray ui`` this test started and its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def _start_ui(uri: str, log_path: Path) -> tuple[subprocess.Popen, str, Any]:
    """`oefray ui` on a free port, in a session of its own (the teardown finds every process it
    started). No preexec_fn: it would make Popen fork() this process, a Ray driver (Ray does not
    support forking one); without it Popen uses vfork + exec."""
    port = _free_port()
    log = log_path.open("w")
    ui = subprocess.Popen(
        [sys.executable, "-m", "oefray.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    return ui, f"http://127.0.0.1:{port}", log


def _stop_and_check(ui: subprocess.Popen, url: str, sig: int, log_path: Path) -> None:
    """Send ``sig``: exit 0, the port closed, no process of the session left."""
    ui.send_signal(sig)
    assert ui.wait(timeout=60) == 0
    assert not answers_health(url, timeout_s=5)
    deadline = time.monotonic() + 20
    while _session_pids(ui.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_pids(ui.pid) == []
    assert f"stopped the MLflow server at {url}" in log_path.read_text()


def _kill_session(ui: subprocess.Popen, log: Any) -> None:
    for pid in _session_pids(ui.pid):  # only what this test started
        os.kill(pid, signal.SIGKILL)
    if ui.poll() is None:
        ui.kill()
    log.close()


def test_ui_refuses_a_taken_port_and_a_server_uri(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert main(["ui", "--tracking-uri", uri, "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"oefray: error: port {port} on 127.0.0.1 is in use; pick another with --port"
    assert main(["ui", "--tracking-uri", "http://127.0.0.1:5999"]) == 1
    assert "is a tracking server already" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_ui_stops_its_server_on_sigterm_and_sighup(sig, tmp_path):
    """Killed or its terminal closed, `oefray ui` takes its MLflow server down with it: exit 0,
    the port closed, no process of its session left."""
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    Tracker(uri).get_or_create_experiment("x")  # a store to serve
    ui, url, log = _start_ui(uri, tmp_path / "ui.log")
    try:
        wait_for_server(url, START_TIMEOUT_S, process=ui)
        _stop_and_check(ui, url, sig, tmp_path / "ui.log")
    finally:
        _kill_session(ui, log)


def test_ui_serves_the_store_and_a_training_logs_to_it_over_http(
    tiny_features, ray_local, tmp_path, capsys
):
    store = tmp_path / "mlruns"
    uri = f"sqlite:///{store}/mlflow.db"
    # a run logged straight to the database before the server starts: file:// artifacts
    direct = Tracker(uri)
    note = tmp_path / "note.txt"
    note.write_text("logged without a server\n")
    with direct.tracked_run("direct", run_name="direct") as run:
        run.log_artifact_file(note)
        run.log_metrics({"answer": 42.0})

    ui, url, log = _start_ui(uri, tmp_path / "ui.log")
    try:
        wait_for_server(url, START_TIMEOUT_S, process=ui)
        for _ in range(20):  # the ready line follows /health within a poll interval
            if f"MLflow UI: {url}" in (tmp_path / "ui.log").read_text():
                break
            time.sleep(0.5)
        assert f"MLflow UI: {url}" in (tmp_path / "ui.log").read_text()

        # the server shows what was logged without it, artifacts included
        got = _get_json(url, "/api/2.0/mlflow/runs/get", run_id=run.run_id)["run"]
        assert got["data"]["metrics"][0]["key"] == "answer"
        assert got["data"]["metrics"][0]["value"] == 42.0
        text = _get(f"{url}/get-artifact?path=note.txt&run_uuid={run.run_id}")
        assert text == note.read_bytes()

        # a real training logs to the server over HTTP, as on a cluster
        results = tmp_path / "results.json"
        code = main(
            [
                "train",
                str(tiny_features),
                "--epochs",
                "1",
                "--workers",
                "1",
                "--seed",
                "2",
                "--experiment",
                "via-ui",
                "--tracking-uri",
                url,
                "--storage",
                str(tmp_path / "ray_results"),
                "--results",
                str(results),
            ]
        )
        assert code == 0
        capsys.readouterr()
        reported = json.loads(results.read_text())
        run_id = reported["run_id"]
        assert reported["tracking_uri"] == url

        # the run and its metrics, through the REST API, equal what the training reported
        got = _get_json(url, "/api/2.0/mlflow/runs/get", run_id=run_id)["run"]
        assert got["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in got["data"]["params"]}
        assert params["seed"] == "2" and params["model.epochs"] == "1"
        for q in QUANTITIES:
            for key in (f"test_rmse_{q}", f"test_rmse_{q}_patient_mean", f"floor_rmse_{q}"):
                assert metrics[key] == pytest.approx(reported["test_metrics"][key], rel=1e-12)
        history = _get_json(
            url, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="val_rmse_OEF"
        )["metrics"]
        assert [h["step"] for h in history] == [0]
        assert history[0]["value"] == pytest.approx(
            reported["val_metrics"]["val_rmse_OEF"], rel=1e-12
        )

        # the artifacts went over HTTP into the store's artifact root, and come back over HTTP
        artifact_uri = got["info"]["artifact_uri"]
        assert artifact_uri.startswith("mlflow-artifacts:/")
        rel = artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
        listed = _get_json(url, "/api/2.0/mlflow-artifacts/artifacts", path=rel)["files"]
        assert {"rmse_per_patient.csv", "training_curves.png", "oef_maps.png", "maps"} <= {
            f["path"] for f in listed
        }
        table = _get(f"{url}/api/2.0/mlflow-artifacts/artifacts/{rel}/rmse_per_patient.csv")
        assert table == (store / "artifacts" / rel / "rmse_per_patient.csv").read_bytes()
        rows = {r["subject"]: r for r in csv.DictReader(io.StringIO(table.decode()))}
        for q in QUANTITIES:
            assert float(rows["Avg."][q]) == pytest.approx(
                reported["test_metrics"][f"test_rmse_{q}_patient_mean"], rel=1e-9
            )
        png = _get(f"{url}/get-artifact?path=oef_maps.png&run_uuid={run_id}")
        assert png.startswith(b"\x89PNG") and len(png) > 10_000

        # Tracker over http:// reads the logged model (with its side files) back
        model, meta = Tracker(url).load_model_bundle(run_id)
        assert meta["window"] == {"length": 5, "anchor": "centre", "shape": "line"}
        assert model.input_shape == (None, 5, 4)

        # and the report reads the experiment through the server
        page = tmp_path / "report.html"
        # credentials in the URI (a server behind an auth proxy) never reach the page
        secret = url.replace("http://", "http://alice:S3cretTok@")
        assert main(["report", "via-ui", "--tracking-uri", secret, "--out", str(page)]) == 0
        html = page.read_text()
        assert "S3cretTok" not in html and "alice:***@" in html
        assert f'data-run-id="{run_id}"' in html and html.count("<img ") == 2

        # Ctrl-C stops the server: exit 0, the port is closed, no process is left
        _stop_and_check(ui, url, signal.SIGINT, tmp_path / "ui.log")
    finally:
        _kill_session(ui, log)
