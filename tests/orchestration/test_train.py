"""``oefray train`` for real: Ray Train with 2 CPU workers, Keras 3, MLflow on a local sqlite
store, on the `tiny` cohort. The run (`trained`, in conftest.py) is shared with the tests of
``predict``/``evaluate`` (test_predict.py) and ``study`` (test_study.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from oefray.cli import main
from oefray.config import TrainConfig
from oefray.io import features as fio
from oefray.io.maps import map_path, read_map
from oefray.io.names import MAP_NAMES
from oefray.ml.windows import WindowConfig, make_windows_table
from oefray.orchestration.evaluate import load_bundle, predict_windows
from oefray.orchestration.train import train
from oefray.physics.constants import PARAMETERS, YA
from oefray.tracking import EPOCH_METRICS, TEST_METRICS, Tracker

from .conftest import EPOCHS

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_run_holds_params_metrics_and_artifacts(trained, store, tiny_features, tmp_path):
    tracker = Tracker(store["uri"])
    run = tracker.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert (p["preset"], p["seed"], p["workers"], p["window.length"], p["window.anchor"]) == (
        "small",
        "3",
        "2",
        "5",
        "centre",
    )
    assert p["model.lstm_units"] == "[64, 48, 32, 16]" and p["model.learning_rate"] == "0.001"
    assert p["train_subjects"] == "P3,P4" and p["test_subjects"] == "P6,P11"
    assert (p["split.seed"], p["split.val_fraction"], p["split.train_keep"]) == ("3", "0.2", "1.0")
    # 2 workers on 2 CPUs: the windows were materialised, each worker's tiny shard cached
    assert run.data.tags["oefray.data_feed"] == "cache"
    assert 0 < float(run.data.tags["oefray.shard_mb"]) < 1
    manifest = fio.read_manifest(tiny_features)
    assert p["features_checksums.P6"] == manifest["subjects"]["P6"]["checksum"]
    assert json.loads(p["echo_times_s"]) == pytest.approx(manifest["echo_times_s"])

    # per-epoch metrics, one value per epoch, and the two replicas stayed identical
    for key in EPOCH_METRICS + ("replica_weight_spread",):
        history = tracker.metric_history(trained["run_id"], key)
        assert [s for s, _ in history] == list(range(EPOCHS)), key
    loss = [v for _, v in tracker.metric_history(trained["run_id"], "loss")]
    assert loss[-1] < 0.9 * loss[0]  # training really happened
    assert all(
        v == 0.0 for _, v in tracker.metric_history(trained["run_id"], "replica_weight_spread")
    )

    # final test metrics with exactly the agreed names; OEF RMSE is 100 RMSE(Y) / Ya (closed form)
    m = run.data.metrics
    assert set(TEST_METRICS) <= set(m)
    assert m["test_rmse_OEF"] == pytest.approx(100 * m["test_rmse_Y"] / YA, rel=1e-9)
    assert 0 < m["test_rmse_Y"] < 0.2 and 0 < m["floor_rmse_Y"] < 0.2

    # artifacts: Table 1 CSV (matching the metrics), figures, maps on each test subject's grid
    art = tracker.download_artifacts(trained["run_id"], "", tmp_path)
    table = pd.read_csv(art / "rmse_per_patient.csv", index_col=0)
    assert list(table.columns) == ["S0", "R2", "Y", "v", "chi_nb", "OEF"]
    assert list(table.index) == ["P6", "P11", "Avg."]
    assert table.loc["Avg.", "OEF"] == pytest.approx(m["test_rmse_OEF_patient_mean"], rel=1e-9)
    for png in ("training_curves.png", "oef_maps.png"):
        assert (art / png).stat().st_size > 10_000
    for label in ("P6", "P11"):
        entry = manifest["subjects"][label]
        for name in MAP_NAMES:  # sub-<L>_desc-pred_R2map.nii.gz, ..._desc-OEF_pred.nii.gz
            img = nib.load(map_path(art / "maps", label, name))
            assert img.shape == tuple(entry["shape"])
            np.testing.assert_allclose(img.affine, entry["affine"], atol=1e-5)
    assert (art / "model_meta" / "scalers.json").is_file()


def test_logged_model_reproduces_the_maps(trained, store, tiny_features, tmp_path):
    tracker = Tracker(store["uri"])
    bundle = load_bundle(tracker, trained["run_id"])
    assert bundle.window == WindowConfig(length=5, anchor="centre")
    test = make_windows_table(fio.read_features(tiny_features, ["P6"]), bundle.window, ["P6"])
    pred = predict_windows(bundle, test.x)
    art = tracker.download_artifacts(trained["run_id"], "maps", tmp_path)
    y_map = read_map(art / "sub-P6_desc-Y_pred.nii.gz").ravel()
    np.testing.assert_allclose(
        y_map[test.idx], pred[:, PARAMETERS.index("Y")], rtol=1e-5, atol=1e-6
    )
    # voxels without a full window (and outside the brain) carry no prediction
    assert np.isnan(y_map).sum() == y_map.size - len(test.idx)


def test_interrupted_run_resumes_from_its_last_checkpoint(
    tiny_features, ray_local, store, tmp_path
):
    """SIGTERM a real `oefray train` after two epochs; `--resume RUN_ID` continues from the
    checkpoint: the epochs already done are neither redone nor logged twice."""
    cmd = [
        sys.executable,
        "-m",
        "oefray.cli",
        "train",
        str(tiny_features),
        "--workers",
        "1",
        "--epochs",
        "6",
        "--seed",
        "5",
        "--experiment",
        "test-resume",
        "--tracking-uri",
        store["uri"],
        "--storage",
        str(store["storage"]),
        "--results",
        str(tmp_path / "r.json"),
    ]
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, RAY_ADDRESS=""),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tracker = Tracker(store["uri"])
    run_id, deadline = None, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        runs = tracker.client.search_runs(
            [tracker.get_or_create_experiment("test-resume")], max_results=1
        )
        if runs and len(tracker.metric_history(runs[0].info.run_id, "loss")) >= 2:
            run_id = runs[0].info.run_id
            break
        time.sleep(0.5)
    assert run_id is not None and proc.poll() is None, "training ended before it was interrupted"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    head = tracker.metric_history(run_id, "loss")
    assert tracker.get_run(run_id).info.status == "KILLED"
    assert 2 <= len(head) < 6

    resumed = train(
        tiny_features,
        TrainConfig(
            epochs=6, seed=5, workers=1, experiment="test-resume", tracking_uri=store["uri"]
        ),
        storage_path=store["storage"],
        resume=run_id,
    )
    assert resumed.run_id == run_id and resumed.epochs_run == 6
    run = tracker.get_run(run_id)
    assert run.info.status == "FINISHED"
    restored = int(run.data.tags["oefray.resumed_from_epoch"])
    assert 1 <= restored <= len(head)  # continued from a checkpoint, not from scratch
    history = tracker.metric_history(run_id, "loss")
    # epochs before the restored checkpoint are not redone; every epoch up to 6 is there, and
    # only an epoch whose checkpoint was not yet registered when the run was killed repeats
    assert history[:restored] == head[:restored]
    assert sorted({s for s, _ in history}) == list(range(6))
    assert len(history) == 6 + (len(head) - restored)


def test_a_shard_over_the_cache_budget_streams_every_epoch(tiny_features, ray_local, store):
    """--cache-gb 0: the worker streams its shard from Ray Data every epoch (lazy: 1 worker on
    2 CPUs leaves one to Ray Data's tasks) through the local shuffle buffer, runs the full
    steps of its shard each epoch, and learns."""
    from oefray.ml.model import model_config

    config = TrainConfig(
        epochs=2,
        workers=1,
        cache_gb=0.0,
        seed=4,
        learning_rate=1e-3,
        experiment="test-stream",
        tracking_uri=store["uri"],
    )
    result = train(tiny_features, config, storage_path=store["storage"])
    tracker = Tracker(store["uri"])
    run = tracker.get_run(result.run_id)
    assert run.data.tags["oefray.data_feed"] == "stream"
    n_train = result.counts["train_windows"]
    b = min(model_config("small").batch_size, n_train)
    for (_, sps), (_, secs) in zip(
        tracker.metric_history(result.run_id, "samples_per_second"),
        tracker.metric_history(result.run_id, "epoch_seconds"),
        strict=True,
    ):
        assert round(sps * secs) == (n_train // b) * b  # every full batch of the shard, once
    loss = [v for _, v in tracker.metric_history(result.run_id, "loss")]
    assert len(loss) == 2 and loss[1] < loss[0]
    assert 0 < result.test_metrics["test_rmse_OEF"] < result.test_metrics["floor_rmse_OEF"] * 1.5


def test_gpus_without_gpus_is_refused(tiny_features, ray_local, store, capsys):
    code = main(
        ["train", str(tiny_features), "--gpus", "--epochs", "1", "--tracking-uri", store["uri"]]
    )
    assert code == 1
    assert "--gpus needs 1 GPU(s), this machine's Ray runtime has 0" in capsys.readouterr().err


def test_train_refuses_bad_input(tmp_path, tiny_features, capsys):
    cfg = tmp_path / "train.toml"
    cfg.write_text("[train]\nepochs = 2\nlearnin_rate = 0.1\n")
    assert main(["train", str(tiny_features), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "train.toml: unknown config key(s): learnin_rate" in err
    assert main(["train", str(tmp_path / "nope")]) == 1
    assert "not a features folder" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path}/m.db"
    assert main(["evaluate", "0123456789abcdef", "--tracking-uri", uri]) == 1
    assert "unknown MLflow run id 0123456789abcdef" in capsys.readouterr().err
