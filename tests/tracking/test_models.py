"""A Keras 3 model bundle round trip through a real local SQLite store, and MLflow's global
tracking URI left as it was found."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from oefray import tracking
from oefray.errors import OefrayError
from oefray.tracking.models import global_tracking_uri


@pytest.mark.parametrize("state", ["unset", "env only", "global", "global and other env"])
def test_global_tracking_uri_is_put_back(monkeypatch, state):
    import mlflow

    saved = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # put back after the test
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # unset, as in a fresh process
    try:
        if state in ("global", "global and other env"):
            mlflow.set_tracking_uri("sqlite:////g/global.db")
        if state in ("env only", "global and other env"):
            os.environ["MLFLOW_TRACKING_URI"] = "sqlite:////e/env.db"
        before = (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set())
        env = os.environ.get("MLFLOW_TRACKING_URI")
        with global_tracking_uri("sqlite:////t/store.db"):
            assert mlflow.get_tracking_uri() == "sqlite:////t/store.db"
        assert (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set()) == before
        assert os.environ.get("MLFLOW_TRACKING_URI") == env
        if state == "env only":  # the URI still follows the variable, as before
            os.environ["MLFLOW_TRACKING_URI"] = "sqlite:////e/later.db"
            assert mlflow.get_tracking_uri() == "sqlite:////e/later.db"
    finally:
        mlflow.set_tracking_uri(saved)  # type: ignore[arg-type]


def test_keras_model_bundle_round_trip(tracker, experiment, tmp_path):
    import keras
    import mlflow

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5, 4)), keras.layers.Flatten(), keras.layers.Dense(5)])
    meta = {
        "scalers": {"x_mean": [1.0, 17.2, 0.003, -0.01], "x_std": [0.1, 3.0, 0.001, 0.02]},
        "window": {"length": 5, "target": "center", "features": ["A", "B", "E", "S"]},
    }
    global_before = (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set())
    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    with tracker.tracked_run(experiment) as run:
        model_uri = run.log_keras_model(model, extra_files=meta)
        assert tracker.get_run(run.run_id).info.status == "RUNNING"  # borrowed, not ended
        run.log_epoch_metrics(1, {"loss": 0.1})  # the run still takes metrics afterwards
    assert tracker.get_run(run.run_id).info.status == "FINISHED"
    assert model_uri.startswith("models:/")
    assert mlflow.active_run() is None  # no MLflow global state left behind
    assert (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set()) == global_before
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert tracker.get_run(run.run_id).data.tags["oefray.model.model"] == model_uri
    assert tracker.model_uri(run.run_id) == model_uri

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
    assert (mlflow.get_tracking_uri(), mlflow.is_tracking_uri_set()) == global_before
    # a browsable copy of the side files sits in the run's artifacts
    copy = tracker.download_artifacts(run.run_id, "model_meta/window.json", tmp_path)
    assert json.loads(Path(copy).read_text()) == meta["window"]

    handle = tracker.run(run.run_id)
    with pytest.raises(ValueError, match="strict JSON"):
        handle.log_keras_model(model, extra_files={"bad": {"x": float("nan")}})
    with pytest.raises(ValueError, match="plain file stem"):
        handle.log_keras_model(model, extra_files={"../x": {}})
    with pytest.raises(OefrayError, match="no model logged as 'other'"):
        tracker.load_model_bundle(run.run_id, name="other")
