"""The Ray runtime every command runs on: a local one started for the command, or a cluster.

- :func:`ray_runtime` — use the runtime already initialised, connect to ``--address`` (or
  ``RAY_ADDRESS``), or start a local one; shut down only what it started.
- :data:`LOOPBACK_SWITCH` — Ray's switch that makes a local runtime listen on 127.0.0.1 only;
  importing this module turns it on (unless the environment already sets it).
- :func:`training_cpus` — the CPUs a local runtime gets for a training command.
- :func:`check_gpus` — refuse ``--gpus`` on a local runtime without GPUs.
- :func:`storage_path` — where Ray Train/Tune keep checkpoints and experiment state.
- :func:`probe_tcp` — fail fast, in one line, when a cluster address does not answer.

A local runtime listens on 127.0.0.1 only (ray 2.60): its GCS server, raylet (node and object
manager), workers' gRPC servers, dashboard agent, runtime-env agent and metrics export port all
bind the loopback address when the node's IP is a localhost address, and the machine's network
interfaces otherwise. ``ray.init`` takes the node's IP from ``ray.util.get_node_ip_address()``,
and ``ray.init(_node_ip_address="127.0.0.1")`` is no way around it: ``ray.init`` turns a
localhost address back into the machine's IP (``services.resolve_ip_for_localhost``). That
function answers 127.0.0.1 before a runtime exists only where Ray's multi-node support is off:
by default on macOS and Windows, and wherever ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set
when ``ray`` was first imported. Importing this module sets it (it is read once, at that
import), so every oefray command, which imports Ray only when it runs, starts a loopback-only
runtime. A driver connecting to a cluster (``--address``) is not affected: it takes the IP of
the node it joins. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` in the environment keeps Ray's own
behaviour (a local runtime on the machine's IP). Not Ray's, so not covered: the gRPC server that
TensorFlow's ``MultiWorkerMirroredStrategy`` starts in each Ray Train worker listens on all
interfaces (TensorFlow 2.21 binds the wildcard address, with no option), one or more workers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oefray.errors import OefrayError

#: Default storage of Ray Train checkpoints and Ray Tune experiments, relative to the cwd.
DEFAULT_STORAGE = "ray_results"

#: CPUs of a local runtime for training: at least this many, so that a 1-worker training still
#: leaves a CPU for Ray Data's feeding tasks and the trainer's coordinator.
MIN_TRAINING_CPUS = 2

#: Ray's switch of multi-node support, read once when ``ray`` is first imported in a process:
#: "0" makes a runtime that ``ray.init`` starts take 127.0.0.1 as its node IP, so that it listens
#: on the loopback address only.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

os.environ.setdefault(LOOPBACK_SWITCH, "0")

log = logging.getLogger(__name__)


def probe_tcp(host: str, port: int, what: str, address: str, timeout_s: float = 5.0) -> None:
    """Connect to ``host:port`` once; raise one line naming ``address`` and ``what`` if refused.

    ``ray.init`` and ``requests`` would otherwise retry or wait for minutes.

    Raises
    ------
    OefrayError
        ``<address>: cannot reach the <what> (<reason>)``.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise OefrayError(address, f"cannot reach the {what} ({exc.strerror or exc})") from None


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Probe a ``[scheme://]host:port`` cluster address; other forms ("auto", "local") are
    ``ray.init``'s business."""
    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)/?", address.strip())
    if match is not None:
        probe_tcp(match[1], int(match[2]), "Ray cluster", address, timeout_s)


def cluster_address(address: str | None) -> str | None:
    """The cluster to connect to: ``address``, else ``RAY_ADDRESS``, else None (local)."""
    return address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_runtime(address: str | None, cpus: int) -> Iterator[None]:
    """Use the Ray runtime already initialised, connect to ``address``/``RAY_ADDRESS``, or
    start a local one with ``cpus`` CPUs, listening on 127.0.0.1 only (see the module's
    docstring); shut down only what this call started.

    Raises
    ------
    OefrayError
        When the cluster does not answer or refuses the connection.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = cluster_address(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "configure_logging": True}
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise OefrayError(address, f"cannot connect to the Ray cluster ({exc})") from None
    else:
        _warn_unless_loopback(ray.util.get_node_ip_address())
        ray.init(num_cpus=cpus, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: ray 2.60 gives an IP
        return host == "localhost"


def _warn_unless_loopback(node_ip: str) -> None:
    """Warn when a local runtime is about to listen on ``node_ip``, a network address, although
    :data:`LOOPBACK_SWITCH` asks for loopback (Ray was imported before this module set it)."""
    if os.environ.get(LOOPBACK_SWITCH) == "0" and not _is_loopback(node_ip):
        log.warning(
            "the local Ray runtime listens on %s, reachable from the network, not on 127.0.0.1: "
            "Ray was imported before oefray.orchestration.runtime (set %s=0 in the environment, "
            "or import oefray first)",
            node_ip,
            LOOPBACK_SWITCH,
        )


def available_memory_bytes() -> int:
    """Memory this node can still give without swapping: ``MemAvailable`` of /proc/meminfo
    (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def spare_cpus(reserved: float) -> float:
    """CPUs of the running Ray cluster left once ``reserved`` are taken (the training workers):
    what Ray Data can run its tasks on while the workers train."""
    import ray

    return float(ray.cluster_resources().get("CPU", 0.0)) - float(reserved)


def training_cpus(workers: int) -> int:
    """CPUs of a local runtime for a training with ``workers`` Ray Train workers."""
    return max(int(workers), MIN_TRAINING_CPUS)


def check_gpus(gpus: bool, workers: int, address: str | None) -> None:
    """On a local runtime, refuse ``--gpus`` without GPUs (Ray would wait for them forever);
    an autoscaling cluster may still add GPU nodes, so remote clusters are not checked.

    Call inside :func:`ray_runtime`.
    """
    import ray

    if not gpus or cluster_address(address):
        return
    have = int(ray.cluster_resources().get("GPU", 0))
    if have < workers:
        raise OefrayError(
            None, f"--gpus needs {workers} GPU(s), this machine's Ray runtime has {have}"
        )


def storage_path(path: str | os.PathLike[str] | None) -> Path:
    """Absolute storage folder of Ray Train/Tune: ``path``, else ``./ray_results``."""
    return Path(path or Path.cwd() / DEFAULT_STORAGE).resolve()
