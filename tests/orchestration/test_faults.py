"""Fault tolerance, with real processes killed: a Ray Train worker mid-training, a Ray Data worker
mid-preprocess. (An interrupted `tune --search` is in test_search.py, an interrupted
`preprocess` in test_interrupt.py, an interrupted `train` in test_train.py.)"""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest

from oefray.config import PreprocessConfig, TrainConfig
from oefray.io.features import read_features, read_manifest
from oefray.orchestration.preprocess import preprocess
from oefray.orchestration.train import train
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _own_ray_processes(title: str) -> list[psutil.Process]:
    """Processes of this test's Ray runtime (descendants of pytest) whose title starts so."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if cmdline and cmdline[0].startswith(title):
            found.append(proc)
    return found


def test_killed_train_worker_is_restarted_from_the_last_checkpoint(
    tiny_features, ray_local, tmp_path
):
    """SIGKILL one of two Ray Train workers after two epochs: Ray Train (FailureConfig) restarts
    the worker group from the last checkpoint and the run completes as one MLflow run."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = TrainConfig(
        epochs=8,
        batch_size=64,  # several seconds of training after the kill
        workers=2,
        seed=3,
        max_failures=1,
        experiment="test-faults",
        tracking_uri=uri,
    )
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = train(tiny_features, config, storage_path=tmp_path / "rr")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    tracker = Tracker(uri)
    victim, deadline = None, time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        runs = tracker.client.search_runs([tracker.get_or_create_experiment("test-faults")])
        if runs and len(tracker.metric_history(runs[0].info.run_id, "loss")) >= 2:
            workers = _own_ray_processes("ray::RayTrainWorker")
            assert len(workers) == 2, [w.cmdline()[0] for w in workers]
            victim = workers[-1]
            break
        time.sleep(0.2)
    assert victim is not None, f"training ended before a worker could be killed: {outcome}"
    epochs_before = len(tracker.metric_history(runs[0].info.run_id, "loss"))
    victim.send_signal(signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.epochs_run == 8  # type: ignore[attr-defined]
    assert epochs_before < 8, "the kill came after the last epoch"

    all_runs = tracker.client.search_runs([tracker.get_or_create_experiment("test-faults")])
    assert [r.info.run_id for r in all_runs] == [result.run_id]  # type: ignore[attr-defined]
    run = all_runs[0]
    assert run.info.status == "FINISHED"
    restored = int(run.data.tags["oefray.resumed_from_epoch"])
    assert 1 <= restored <= epochs_before  # from a checkpoint, not from scratch
    steps = sorted({s for s, _ in tracker.metric_history(run.info.run_id, "loss")})
    assert steps == list(range(8))
    assert not victim.is_running()
    assert "test_rmse_OEF" in run.data.metrics


def test_killed_preprocess_worker_task_is_retried_and_output_is_identical(
    tiny_cohort, ray_local, tmp_path
):
    """SIGKILL a Ray worker while it fits a slab: Ray retries the task and the Parquet is equal
    to an undisturbed run's (one z plane per task, so there are many tasks to hit)."""
    reference = tmp_path / "reference"
    assert preprocess(tiny_cohort, reference, PreprocessConfig(slab=1)).ok

    disturbed = tmp_path / "disturbed"
    outcome: dict[str, object] = {}
    killed: list[str] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            for proc in _own_ray_processes("ray::"):
                try:
                    title = proc.cmdline()[0]
                    if "_fit_slabs" in title:
                        proc.send_signal(signal.SIGKILL)
                        killed.append(title)
                        return
                except psutil.Error:
                    continue
            time.sleep(0.001)

    hunter = threading.Thread(target=killer)
    hunter.start()
    try:
        outcome["result"] = preprocess(tiny_cohort, disturbed, PreprocessConfig(slab=1))
    finally:
        stop.set()
        hunter.join()
    assert killed, "no fit task was caught running"
    assert outcome["result"].ok  # type: ignore[attr-defined]
    ref, got = read_features(reference), read_features(disturbed)
    key = ["subject", "i", "j", "k"]
    assert got.num_rows == ref.num_rows > 0
    assert got.sort_by([(k, "ascending") for k in key]).equals(
        ref.sort_by([(k, "ascending") for k in key])
    )
    ref_m, got_m = read_manifest(reference), read_manifest(disturbed)
    assert {s: e["checksum"] for s, e in got_m["subjects"].items()} == {
        s: e["checksum"] for s, e in ref_m["subjects"].items()
    }
