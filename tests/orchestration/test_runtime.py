"""The local Ray runtime of a command listens on 127.0.0.1 only.

Each check runs in a fresh Python process: the session's ``ray_local`` fixture holds a runtime
in this one (``ray_runtime`` would reuse it), and Ray reads its switch of multi-node support
(:data:`~oefray.orchestration.runtime.LOOPBACK_SWITCH`) once, when it is first imported.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys

import pytest

from oefray.orchestration import runtime

#: Starts ``ray_runtime(None, 2)`` as a command does (oefray imported first, then Ray), runs a Ray
#: task and a Ray Data pipeline on it, scrapes the metrics export port on 127.0.0.1, and collects
#: the listening TCP sockets of this process and every process below it (GCS server, raylet,
#: workers, agents) for a few seconds, since the agents open theirs while the node comes up.
_LOCAL_RUNTIME = r"""
import json, time, urllib.request
import psutil
from oefray.orchestration.runtime import ray_runtime
import ray, ray.data

with ray_runtime(None, 2):
    @ray.remote
    def square(x):
        return x * x

    squares = ray.get([square.remote(i) for i in range(4)])
    rows = ray.data.range(8, override_num_blocks=4).map(lambda r: {"id": 2 * r["id"]}).take_all()
    (node,) = ray.nodes()
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    with urllib.request.urlopen(url, timeout=60) as reply:
        scraped = reply.status == 200 and b"ray_" in reply.read()
    me = psutil.Process()
    listening = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for proc in [me, *me.children(recursive=True)]:
            try:
                name, conns = proc.name(), proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN:
                    listening[f"{conn.laddr.ip} {conn.laddr.port}"] = name
        time.sleep(0.5)
print(json.dumps({
    "node_ip": node["NodeManagerAddress"],
    "metrics_port": node["MetricsExportPort"],
    "scraped": scraped,
    "squares": squares,
    "rows": sorted(r["id"] for r in rows),
    "listening": listening,
}))
"""


def _env(**extra: str) -> dict[str, str]:
    """This environment without Ray's switch (the child shows what importing oefray does) nor a
    cluster address."""
    env = {k: v for k, v in os.environ.items() if k not in (runtime.LOOPBACK_SWITCH, "RAY_ADDRESS")}
    return {**env, "RAY_DISABLE_USAGE_STATS": "1", **extra}


def _python(code: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )


def _loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 seen through an IPv6 socket (``::ffff:127.0.0.1``)."""
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


@pytest.mark.ray
@pytest.mark.slow
def test_local_runtime_listens_on_loopback_only():
    done = _python(_LOCAL_RUNTIME, _env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["squares"] == [0, 1, 4, 9]
    assert seen["rows"] == list(range(0, 16, 2))
    assert seen["node_ip"] == "127.0.0.1"
    assert seen["scraped"], "the metrics export port did not answer on 127.0.0.1"
    listening = {tuple(k.split()): name for k, name in seen["listening"].items()}
    names = set(listening.values())
    # not vacuous: the core processes were found, each with its sockets
    assert {"gcs_server", "raylet"} <= names, listening
    assert str(seen["metrics_port"]) in {port for _, port in listening}, listening
    exposed = {
        f"{ip}:{port} ({name})" for (ip, port), name in listening.items() if not _loopback(ip)
    }
    assert not exposed, f"listening beyond 127.0.0.1: {sorted(exposed)}"


@pytest.mark.slow
def test_the_switch_works_only_before_ray_is_imported():
    """Ray reads the switch when it is imported: importing oefray first gives 127.0.0.1 as the
    node IP of a runtime to start; importing Ray first leaves Ray's own choice (no runtime is
    started here: ``get_node_ip_address`` answers before one exists)."""
    oefray, probe = "import oefray.orchestration.runtime", "print(ray.util.get_node_ip_address())"
    answers = {}
    for case, code in {
        "oefray first": f"{oefray}; import ray; {probe}",
        "ray first": f"import ray; {oefray}; {probe}",
        "ray alone": f"import ray; {probe}",
    }.items():
        done = _python(code, _env(), timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        answers[case] = done.stdout.split()[-1]
    assert answers["oefray first"] == "127.0.0.1"
    assert answers["ray first"] == answers["ray alone"]  # the machine's IP where it has one


def test_the_environment_decides_over_oefray():
    """``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` set by the user is kept as it is."""
    code = (
        f"import os, oefray.orchestration.runtime; print(os.environ[{runtime.LOOPBACK_SWITCH!r}])"
    )
    done = _python(code, _env(**{runtime.LOOPBACK_SWITCH: "1"}), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "1"


def test_a_network_address_is_warned_about(caplog, monkeypatch):
    monkeypatch.setenv(runtime.LOOPBACK_SWITCH, "0")
    with caplog.at_level(logging.WARNING, logger="oefray"):
        for ip in ("127.0.0.1", "::1", "localhost"):
            runtime._warn_unless_loopback(ip)
        assert not caplog.records
        runtime._warn_unless_loopback("192.0.2.2")
    (record,) = caplog.records
    assert "listens on 192.0.2.2, reachable from the network" in record.getMessage()
    caplog.clear()
    monkeypatch.setenv(runtime.LOOPBACK_SWITCH, "1")  # the user asked for Ray's own choice
    runtime._warn_unless_loopback("192.0.2.2")
    assert not caplog.records
