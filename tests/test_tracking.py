"""MLflow tracking against a real local SQLite store (no server): URIs, run lifecycle, params,
metric names and steps, artifacts, and a Keras 3 model bundle round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from oefray import tracking
from oefray.errors import OefrayError


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> tracking.Tracker:
    """One SQLite store for the module (creating its tables takes a few seconds)."""
    return tracking.Tracker(tracking.default_tracking_uri(tmp_path_factory.mktemp("store")))


@pytest.fixture
def experiment() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


# -- names and URIs ------------------------------------------------------------------------------


def test_metric_names_are_exactly_the_documented_ones():
    assert tracking.EPOCH_METRICS == (
        "loss",
        "val_loss",
        "val_rmse_Y",
        "val_rmse_v",
        "val_rmse_R2",
        "val_rmse_S0",
        "val_rmse_chi_nb",
        "val_rmse_OEF",
    )
    pooled = [f"test_rmse_{p}" for p in ("S0", "R2", "Y", "v", "chi_nb", "OEF")]
    assert tracking.TEST_METRICS == (*pooled, *(f"{n}_patient_mean" for n in pooled))
    assert tracking.METRIC_NAMES == tracking.EPOCH_METRICS + tracking.TEST_METRICS
    assert tracking.epoch_metrics(0.5, 0.6, {"OEF": 5.0, "Y": 0.05}) == {
        "loss": 0.5,
        "val_loss": 0.6,
        "val_rmse_OEF": 5.0,
        "val_rmse_Y": 0.05,
    }
    assert tracking.final_metrics({"Y": 0.05}, {"OEF": 5.1}) == {
        "test_rmse_Y": 0.05,
        "test_rmse_OEF_patient_mean": 5.1,
    }
    assert tracking.rmse_metric_name("test", "chi_nb", patient_mean=True) == (
        "test_rmse_chi_nb_patient_mean"
    )
    with pytest.raises(ValueError, match="unknown quantity"):
        tracking.final_metrics({"OEF%": 1.0})
    with pytest.raises(ValueError, match="test metrics only"):
        tracking.rmse_metric_name("val", "Y", patient_mean=True)


def test_default_and_resolved_uris(tmp_path, monkeypatch):
    uri = tracking.default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////x/env.db")
    assert tracking.resolve_tracking_uri(None, cwd=tmp_path) == "sqlite:////x/env.db"
    assert tracking.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    db = tmp_path / "other" / "t.db"
    assert tracking.resolve_tracking_uri(str(db)) == f"sqlite:///{db.resolve()}"
    for file_store in ("file:///tmp/mlruns", "./mlruns"):
        with pytest.raises(OefrayError, match="file store"):
            tracking.resolve_tracking_uri(file_store)


def test_ui_command_names_store_and_artifact_root(tmp_path):
    uri = tracking.default_tracking_uri(tmp_path)
    root = (tmp_path / "mlruns" / "artifacts").resolve()
    assert tracking.artifact_root(uri) == root
    assert tracking.ui_command(uri) == (
        f"mlflow ui --backend-store-uri {uri} --default-artifact-root {root.as_uri()}"
    )
    assert "webbrowser" in tracking.ui_command("http://host:5000")


def test_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, os\n"
        "import oefray.tracking\n"
        "print(int('mlflow' in sys.modules), int('ray' in sys.modules), len(os.listdir('.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["0", "0", "0"]


def test_flatten_params():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Train:
        lr: float = 1e-4
        units: tuple[int, ...] = (512, 256)

    flat = tracking.flatten_params(
        {"train": Train(), "data": {"window": {"length": 5}, "subjects": ["P3", "P4"]}, "x": None}
    )
    assert flat == {
        "train.lr": "0.0001",
        "train.units": "[512, 256]",
        "data.window.length": "5",
        "data.subjects": '["P3", "P4"]',
        "x": "None",
    }
    long = tracking.flatten_params({"v": "a" * 10_000})["v"]
    assert len(long) == 6000 and long.endswith("...")
    with pytest.raises(ValueError, match="250"):
        tracking.flatten_params({"k" * 251: 1})


# -- runs ----------------------------------------------------------------------------------------


def test_run_lifecycle_never_leaves_a_run_running(tracker, experiment):
    with tracker.tracked_run(experiment, run_name="ok", tags={"repeat": 0}) as run:
        assert tracker.get_run(run.run_id).info.status == "RUNNING"
    ok = tracker.get_run(run.run_id)
    assert ok.info.status == "FINISHED" and ok.data.tags["repeat"] == "0"

    with pytest.raises(ZeroDivisionError):
        with tracker.tracked_run(experiment, run_name="boom") as failed:
            1 / 0  # noqa: B018
    bad = tracker.get_run(failed.run_id)
    assert bad.info.status == "FAILED"
    assert bad.data.tags["oefray.error"] == "ZeroDivisionError: division by zero"

    with pytest.raises(KeyboardInterrupt):
        with tracker.tracked_run(experiment) as killed:
            raise KeyboardInterrupt
    assert tracker.get_run(killed.run_id).info.status == "KILLED"

    run_id = tracker.start_run(experiment)
    tracker.end_run(run_id, "FINISHED")
    with pytest.raises(ValueError, match="status"):
        tracker.end_run(run_id, "DONE")
    exp_id = tracker.get_or_create_experiment(experiment)
    runs = tracker.client.search_runs([exp_id])
    assert len(runs) == 4 and all(r.info.status != "RUNNING" for r in runs)
    # experiment artifacts live under <store>/artifacts/<experiment>/
    root = tracking.artifact_root(tracker.tracking_uri)
    assert runs[0].info.artifact_uri.startswith((root / experiment).as_uri())


def test_params_metrics_and_artifacts(tracker, experiment, tmp_path):
    params = {"train": {"lr": 1e-4, "batch": 512}, "subjects": ("P3", "P4")}
    with tracker.tracked_run(experiment, params=params) as run:
        for epoch in range(1, 4):
            run.log_epoch_metrics(
                epoch,
                tracking.epoch_metrics(1.0 / epoch, 1.1 / epoch, {"OEF": 10.0 - epoch, "Y": 0.1}),
            )
        logged = run.log_test_metrics(
            {q: 0.1 for q in tracking.RMSE_QUANTITIES},
            {q: 0.2 for q in tracking.RMSE_QUANTITIES},
        )
        report = tmp_path / "rmse.csv"
        report.write_text("subject,OEF\nP6,5.0\n")
        assert run.log_artifact_file(report, "reports") == "reports/rmse.csv"
        (tmp_path / "maps").mkdir()
        (tmp_path / "maps" / "a.txt").write_text("a")
        run.log_artifact_dir(tmp_path / "maps", "maps")

    data = tracker.get_run(run.run_id).data
    assert data.params == {"train.lr": "0.0001", "train.batch": "512", "subjects": '["P3", "P4"]'}
    client = tracker.client
    history = client.get_metric_history(run.run_id, "val_rmse_OEF")
    assert sorted((m.step, m.value) for m in history) == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert tracker.metric_history(run.run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    metrics = tracker.run_metrics(run.run_id)
    assert set(logged) == set(tracking.TEST_METRICS)
    assert set(metrics) == {
        "loss",
        "val_loss",
        "val_rmse_OEF",
        "val_rmse_Y",
        *tracking.TEST_METRICS,
    }
    assert metrics["test_rmse_chi_nb_patient_mean"] == 0.2 and metrics["test_rmse_OEF"] == 0.1

    got = tracker.download_artifacts(run.run_id, "reports/rmse.csv", tmp_path / "dl")
    assert got.read_text() == report.read_text()
    assert (tracker.download_artifacts(run.run_id, "maps", tmp_path / "dl") / "a.txt").is_file()
    with pytest.raises(OefrayError, match="no artifact"):
        tracker.download_artifacts(run.run_id, "nope.csv", tmp_path / "dl")
    with pytest.raises(OefrayError, match="no such file"):
        run.log_artifact_file(tmp_path / "missing.png")


def test_unknown_run_ids_give_one_line_errors(tracker, tmp_path):
    unknown = "0123456789abcdef0123456789abcdef"
    for call in (
        lambda: tracker.get_run(unknown),
        lambda: tracker.run_metrics(unknown),
        lambda: tracker.log_params(unknown, {"a": 1}),
        lambda: tracker.log_epoch_metrics(unknown, 1, {"loss": 1.0}),
        lambda: tracker.end_run(unknown),
        lambda: tracker.download_artifacts(unknown, "x", tmp_path),
        lambda: tracker.load_model_bundle(unknown),
    ):
        with pytest.raises(OefrayError) as info:
            call()
        assert str(info.value) == f"unknown MLflow run id {unknown}"


# -- models --------------------------------------------------------------------------------------


def test_keras_model_bundle_round_trip(tracker, experiment, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.Flatten(), keras.layers.Dense(5)])
    meta = {
        "scalers": {"x_mean": [1.0, 17.2, 0.003, -0.01], "x_std": [0.1, 3.0, 0.001, 0.02]},
        "window": {"length": 5, "target": "center", "features": ["A", "B", "E", "S"]},
    }
    with tracker.tracked_run(experiment) as run:
        model_uri = run.log_keras_model(model, extra_files=meta)
        assert tracker.get_run(run.run_id).info.status == "RUNNING"  # borrowed, not ended
        run.log_epoch_metrics(1, {"loss": 0.1})  # the run still takes metrics afterwards
    assert tracker.get_run(run.run_id).info.status == "FINISHED"
    assert model_uri.startswith("models:/")
    import mlflow

    assert mlflow.active_run() is None  # no MLflow global state left behind

    # the model is attached to the run, and its signature is (-1, 5, 4) -> (-1, 5)
    outputs = tracker.get_run(run.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model_uri.removeprefix("models:/")]
    logged = tracker.client.get_logged_model(outputs[0].model_id)
    assert logged.source_run_id == run.run_id
    assert logged.artifact_location.startswith(
        (tracking.artifact_root(tracker.tracking_uri) / experiment).as_uri()
    )
    model_dir = Path(urlparse(logged.artifact_location).path)
    assert sorted(p.name for p in (model_dir / "model_meta").iterdir()) == [
        "scalers.json",
        "window.json",
    ]
    info = mlflow.models.Model.load(model_dir / "MLmodel")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 5, 4)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 5)

    x = np.random.default_rng(1).normal(size=(7, 5, 4)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    for ref in (model_uri, run.run_id):
        loaded, got_meta = tracker.load_model_bundle(ref)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-6)
        assert got_meta == meta
    # a browsable copy of the side files sits in the run's artifacts
    copy = tracker.download_artifacts(run.run_id, "model_meta/window.json", tmp_path)
    assert json.loads(Path(copy).read_text()) == meta["window"]

    with pytest.raises(ValueError, match="strict JSON"):
        tracker.log_keras_model(run.run_id, model, extra_files={"bad": {"x": float("nan")}})
    with pytest.raises(OefrayError, match="no model logged as 'other'"):
        tracker.load_model_bundle(run.run_id, name="other")
