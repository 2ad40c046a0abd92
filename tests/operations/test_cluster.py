"""``cluster.yaml`` as ``ray up`` sees it: Ray 2.60's own config preparation and schema validation.

``ray up`` (``ray.autoscaler._private.commands._bootstrap_config``) runs ``prepare_config`` (fills
defaults, merges setup commands, sets per-type worker bounds), then the provider's resource
autodetection and ``validate_config`` (the JSON schema plus cross-field checks), then the
provider's ``bootstrap_config`` (IAM role, key pair, security group: AWS calls). Everything but the
AWS calls runs here; node resources are declared in the file, so no autodetection is needed.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _commands(config: dict, key: str) -> str:
    return "\n".join(config[key])


def test_cluster_yaml_passes_rays_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head.cpu"
    assert set(prepared["available_node_types"]) == {"head.cpu", "worker.gpu"}
    # what prepare_config filled in from Ray's AWS defaults is there too
    assert prepared["cluster_synced_files"] == []
    assert prepared["auth"]["ssh_user"] == "ubuntu"


def test_gpu_worker_type_autoscales(prepared):
    head = prepared["available_node_types"]["head.cpu"]
    gpu = prepared["available_node_types"]["worker.gpu"]
    assert head["resources"] == {"CPU": 8} and head["max_workers"] == 0
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] == 8
    assert gpu["min_workers"] == 0 < gpu["max_workers"] == 4 <= prepared["max_workers"]
    assert gpu["node_config"]["InstanceType"] == "g5.2xlarge"  # 1 NVIDIA A10G
    assert head["node_config"]["InstanceType"].startswith("m6i")  # no GPU on the head
    assert prepared["idle_timeout_minutes"] > 0


def test_setup_installs_oefray_with_gpu_extra_on_gpu_workers(prepared):
    # prepare_config merges the common setup_commands in front of each node kind's own
    worker = _commands(prepared, "worker_setup_commands")
    head = _commands(prepared, "head_setup_commands")
    assert 'pip install --python ~/oefray-venv/bin/python -e "$HOME/oefray[gpu]"' in worker
    assert "pip install --python ~/oefray-venv/bin/python -e ~/oefray" in head
    assert "[gpu]" not in head
    for commands in (worker, head):
        assert "uv venv --python 3.11 ~/oefray-venv" in commands
        assert "mount -t nfs4" in commands  # the shared storage, on every node
    mounts = prepared["file_mounts"]
    assert mounts["~/oefray/oefray"] == "./oefray"
    assert mounts["~/oefray/pyproject.toml"] == "./pyproject.toml"


def test_head_runs_mlflow_and_every_node_uses_the_token(prepared):
    head = _commands(prepared, "head_start_ray_commands")
    worker = _commands(prepared, "worker_start_ray_commands")
    assert "mlflow server --host 0.0.0.0 --port 5000" in head
    assert '--backend-store-uri "sqlite:///$OEFRAY_SHARED/mlflow/mlflow.db"' in head
    assert '--artifacts-destination "$OEFRAY_SHARED/mlflow/artifacts"' in head
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    for commands in (head, worker):
        assert "RAY_AUTH_MODE=token" in commands
        assert 'MLFLOW_TRACKING_URI="${OEFRAY_MLFLOW_URI:-http://' in commands
    assert "http://$RAY_HEAD_IP:5000" in worker
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_every_command_is_valid_shell(prepared):
    keys = [k for k in prepared if k.endswith("_commands")]
    assert len(keys) == 6
    for key in keys:
        for command in prepared[key]:
            done = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert done.returncode == 0, f"{key}: {command!r}: {done.stderr}"


def test_file_mounts_exist_and_hash_as_ray_up_does(prepared, monkeypatch):
    from ray.autoscaler._private.util import hash_runtime_conf

    local = {r: p for r, p in prepared["file_mounts"].items() if not p.startswith("~")}
    assert len(local) == 3
    for path in local.values():
        assert (REPO / path).exists(), path
    monkeypatch.chdir(REPO)  # `ray up` runs from the repository root
    runtime_hash, contents_hash = hash_runtime_conf(local, [], {"test": 1}, True)
    assert len(runtime_hash) > 20 and len(contents_hash) > 20


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        (
            lambda c: c["available_node_types"]["worker.gpu"].update(max_workers="4"),
            "is not of type",
        ),
        (lambda c: c["available_node_types"]["worker.gpu"].update(gpus=1), "Additional properties"),
        (lambda c: c.update(head_node_type="head.gpu"), "must be one of"),
        (lambda c: c["available_node_types"]["worker.gpu"].update(min_workers=5), "smaller than"),
    ],
)
def test_validation_is_not_vacuous(raw, edit, error):
    """The same validator rejects a broken variant of the file (so passing means something)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = copy.deepcopy(raw)
    edit(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=error):
        validate_config(prepare_config(config))


@pytest.mark.slow
def test_head_commands_start_a_tracking_server_workers_reach(prepared, tmp_path):
    """The settings and MLflow commands of the head, run as written (HOME, port and shared folder
    moved to this test's): a client on the node's network address, as Train workers on other
    nodes use it, logs a run and an artifact that land on the shared storage."""
    import os
    import signal
    import socket
    import sys
    import time
    import urllib.request

    from mlflow import MlflowClient

    home = tmp_path / "home"
    home.mkdir()
    (home / "oefray-venv").symlink_to(Path(sys.prefix))  # this venv stands in for the node's
    shared = tmp_path / "shared"
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(home)}
    settings, *_ = prepared["setup_commands"]
    subprocess.run(["bash", "-c", settings], env=env, check=True)
    text = (home / "oefray.env").read_text()
    assert 'OEFRAY_MLFLOW_URI=""' in text  # the default: a server on the head
    (home / "oefray.env").write_text(text.replace("/shared/oefray", str(shared)))
    stop, start = prepared["head_start_ray_commands"][1:3]
    start = start.replace("5000", str(port))
    subprocess.run(["bash", "-c", stop], env=env, check=True)
    subprocess.run(["bash", "-c", start], env=env, check=True)
    pid = int((home / "mlflow.pid").read_text())
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, (home / "mlflow.log").read_text()[-2000:]
                time.sleep(1)
        ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
        client = MlflowClient(tracking_uri=f"http://{ip}:{port}")
        run = client.create_run(client.create_experiment("cluster-test"))
        client.log_metric(run.info.run_id, "test_rmse_OEF", 5.23)
        artifact = tmp_path / "table1.csv"
        artifact.write_text("subject,OEF\nP6,5.2\n")
        client.log_artifact(run.info.run_id, str(artifact))
        assert client.get_run(run.info.run_id).data.metrics == {"test_rmse_OEF": 5.23}
        stored = list((shared / "mlflow" / "artifacts").rglob("table1.csv"))
        assert [p.read_text() for p in stored] == ["subject,OEF\nP6,5.2\n"]
        assert (shared / "mlflow" / "mlflow.db").stat().st_size > 0
    finally:
        os.killpg(pid, signal.SIGTERM)  # setsid: the server's pid is its process group
