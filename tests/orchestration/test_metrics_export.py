"""oefray's Ray application metrics, exported for real: a Ray head of our own (token auth on,
a known metrics export port), ``oefray preprocess`` and ``oefray train`` run against it as a user
runs them, and the export port scraped over HTTP the way Prometheus scrapes it, until every
``oefray_`` metric has shown up with its value."""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oefray.io import features as fio
from oefray.orchestration import metrics
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 2
SLAB = 4
EXPERIMENT = "metrics-export"
#: Seconds between two metric exports of a Ray process (default 10 s; floor 1 s).
REPORT_INTERVAL_MS = 1000


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Head:
    address: str
    metrics_url: str
    env: dict[str, str]


@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head --block`` on free ports with token authentication, in a process group
    of its own; stopped by signalling that group only (``ray stop`` would stop every Ray of the
    machine)."""
    ray_bin = Path(sys.executable).with_name("ray")
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),  # this head's own token, not ~/.ray/auth_token
        RAY_metrics_report_interval_ms=str(REPORT_INTERVAL_MS),
        RAY_DISABLE_USAGE_STATS="1",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # nothing to drain: stop at once
        RAY_ADDRESS="",
    )
    env.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the token file
    # a short root: Ray's Unix socket paths must stay under 107 characters
    temp_dir = tempfile.mkdtemp(prefix="oefray-metrics-", dir="/tmp")
    gcs, dashboard, metrics_port, client, agent, agent_grpc, runtime_env, nm, om = _free_ports(9)
    cmd = [
        str(ray_bin),
        "start",
        "--head",
        "--block",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        f"--metrics-export-port={metrics_port}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--node-manager-port={nm}",
        f"--object-manager-port={om}",
    ]
    log = open(tmp_path / "ray-head.log", "w")  # noqa: SIM115 - closed in the teardown
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    head = Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{metrics_port}/metrics", env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 180 s"
            if "block forever" in (tmp_path / "ray-head.log").read_text() and _scrape(head):
                break
            time.sleep(0.5)
        yield head
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever of our process group is left (workers killed mid-exit)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _scrape(head: Head) -> str | None:
    try:
        with urllib.request.urlopen(head.metrics_url, timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return None


@dataclass
class Scraper:
    """Polls the export port like a Prometheus with a 0.5 s scrape interval: keeps every value
    each oefray sample ever had, and the last scrape."""

    head: Head
    seen: dict[str, list[tuple[dict[str, str], float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    last: list[tuple[str, dict[str, str], float]] = field(default_factory=list)
    scrapes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def poll_once(self) -> None:
        text = _scrape(self.head)
        if text is None:
            return
        samples = [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name.startswith(metrics.EXPORT_PREFIX + metrics.PREFIX)
        ]
        with self._lock:
            for name, labels, value in samples:
                self.seen[name].append((labels, value))
            self.last = samples
            self.scrapes += 1

    def run(self) -> None:
        while not self._stop.wait(0.5):
            self.poll_once()

    def __enter__(self) -> Scraper:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def missing(self) -> set[str]:
        with self._lock:
            return set(metrics.exported_series()) - set(self.seen)

    def total(self, name: str, **match: str) -> float:
        """Sum over workers (label ``WorkerId``) of a sample in the last scrape."""
        return sum(
            v
            for n, labels, v in self.last
            if n == name and all(labels.get(k) == m for k, m in match.items())
        )


def _oefray(head: Head, *args: str) -> subprocess.CompletedProcess:
    """Run the ``oefray`` command against the head, as a user does."""
    return subprocess.run(
        [sys.executable, "-m", "oefray.cli", *args],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_pipeline_exports_every_oefray_metric(ray_head, tiny_cohort, tmp_path):
    # P4 has a truncated echo: its later slabs fail inside their Ray tasks (--keep-going)
    dataset = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, dataset)
    bad = dataset / "sub-P4" / "anat" / "sub-P4_echo-3_part-mag_MEGRE.nii.gz"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    features = tmp_path / "features"
    store = f"sqlite:///{tmp_path}/mlflow.db"

    with Scraper(ray_head) as scraper:
        pre = _oefray(
            ray_head,
            "preprocess",
            str(dataset),
            "--out",
            str(features),
            "--slab",
            str(SLAB),
            "--keep-going",
            "--address",
            ray_head.address,
        )
        done = json.loads((features / "_results.json").read_text())
        assert pre.returncode == 1, pre.stderr[-3000:]  # one subject failed, as arranged
        assert sorted(done["completed"]) == ["P11", "P3", "P6"] and list(done["failed"]) == ["P4"]
        train = _oefray(
            ray_head,
            "train",
            str(features),
            "--workers",
            "1",
            "--epochs",
            str(EPOCHS),
            "--learning-rate",
            "1e-3",
            "--experiment",
            EXPERIMENT,
            "--tracking-uri",
            store,
            "--storage",
            str(tmp_path / "ray_results"),
            "--results",
            str(tmp_path / "train.json"),
            "--address",
            ray_head.address,
        )
        assert train.returncode == 0, train.stderr[-3000:]
        deadline = time.monotonic() + 30  # the last export reaches the agent within ~1 s
        while scraper.missing() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2 * REPORT_INTERVAL_MS / 1000)  # counters final: one more export round
    scraper.poll_once()
    assert not scraper.missing(), f"never exported: {sorted(scraper.missing())}"
    # and nothing else: no gauge twin of a counter, no other spelling
    assert set(scraper.seen) == set(metrics.exported_series())

    # every sample carries Ray's labels and oefray's tags
    for name, values in scraper.seen.items():
        spec = metrics.SPECS[metrics.exported_series()[name]]
        for labels, value in values:
            assert set(spec.tag_keys) <= set(labels), (name, labels)
            assert {"SessionName", "WorkerId", "NodeAddress"} <= set(labels)
            assert math.isfinite(value) and value >= 0, (name, value)

    # preprocess: counters agree with what the run wrote
    manifest = fio.read_manifest(features)
    depth = {s: e["shape"][2] for s, e in manifest["subjects"].items()}
    n_slabs = -(-depth["P3"] // SLAB)  # every tiny subject has the same grid
    for label in ("P3", "P6", "P11"):
        rows = manifest["subjects"][label]["rows"]
        assert scraper.total("ray_oefray_voxels_fitted_total", subject=label) == rows
        assert scraper.total("ray_oefray_slabs_done_total", subject=label) == n_slabs
        assert scraper.total("ray_oefray_slabs_failed_total", subject=label) == 0
        assert scraper.total("ray_oefray_slab_seconds_count", subject=label) == n_slabs
        assert scraper.total("ray_oefray_slab_seconds_sum", subject=label) > 0
        per_task = scraper.total("ray_oefray_fit_voxels_per_second_count", subject=label)
        assert 1 <= per_task <= n_slabs  # slabs without brain voxels have no throughput
        assert scraper.total("ray_oefray_fit_voxels_per_second_sum", subject=label) > 0
    failed = scraper.total("ray_oefray_slabs_failed_total", subject="P4")
    assert failed >= 1
    assert scraper.total("ray_oefray_slabs_done_total", subject="P4") + failed == n_slabs
    # histogram buckets are cumulative and end with +Inf == count
    inf = scraper.total("ray_oefray_slab_seconds_bucket", subject="P3", le="+Inf")
    assert inf == n_slabs

    # training: one series per run, tagged with the MLflow experiment and run id
    run_id = json.loads((tmp_path / "train.json").read_text())["run_id"]
    tags = {"experiment": EXPERIMENT, "run": run_id}
    assert scraper.total("ray_oefray_epochs_done_total", **tags) == EPOCHS
    tracker = Tracker(store)
    for series, mlflow_name in (
        ("ray_oefray_val_rmse_oef_percent", "val_rmse_OEF"),
        ("ray_oefray_val_loss", "val_loss"),
        ("ray_oefray_train_loss", "loss"),
    ):
        logged = [v for _, v in tracker.metric_history(run_id, mlflow_name)]
        assert len(logged) == EPOCHS
        for labels, value in scraper.seen[series]:
            assert {k: labels[k] for k in tags} == tags
            assert any(math.isclose(value, v, rel_tol=1e-9) for v in logged), (series, value)
    for series in ("ray_oefray_train_samples_per_second", "ray_oefray_epoch_seconds"):
        assert all(v > 0 for _, v in scraper.seen[series])
    rmse = [v for _, v in scraper.seen["ray_oefray_val_rmse_oef_percent"]]
    assert all(1.0 < v < 30.0 for v in rmse)  # OEF RMSE in percent, not a fraction
