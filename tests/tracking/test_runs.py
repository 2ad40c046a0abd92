"""Experiments and runs against a real local SQLite store (no server): the run lifecycle, params,
metric names and steps, tags, artifacts, dataset inputs, and the experiment kind."""

from __future__ import annotations

import json
import pickle

import pytest

from oefray import tracking
from oefray.errors import OefrayError


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


def test_resumed_run_and_handles_on_existing_runs(tracker, experiment):
    with pytest.raises(KeyboardInterrupt), tracker.tracked_run(experiment) as first:
        first.log_epoch_metrics(1, {"loss": 1.0})
        raise KeyboardInterrupt
    assert tracker.get_run(first.run_id).info.status == "KILLED"
    with tracker.resumed_run(first.run_id) as again:
        assert again == first and tracker.get_run(first.run_id).info.status == "RUNNING"
        again.log_epoch_metrics(2, {"loss": 0.5})
    assert tracker.get_run(first.run_id).info.status == "FINISHED"
    # a handle on an ended run logs to it, and leaves its status alone
    handle = tracker.run(first.run_id)
    assert handle == first and pickle.loads(pickle.dumps(handle)) == handle
    handle.set_tags({"oefray.stopped_early": "asha", "long": "x" * 9000})
    handle.log_metrics({"floor_rmse_OEF": 9.0, "skipped": None})
    got = tracker.get_run(first.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.tags["oefray.stopped_early"] == "asha" and len(got.data.tags["long"]) == 8000
    assert got.data.metrics["floor_rmse_OEF"] == 9.0 and "skipped" not in got.data.metrics
    assert tracker.metric_history(first.run_id, "loss") == [(1, 1.0), (2, 0.5)]


def test_params_metrics_and_artifacts(tracker, experiment, tmp_path):
    params = {"train": {"lr": 1e-4, "batch": 512}, "subjects": ("P3", "P4")}
    with tracker.tracked_run(experiment, params=params) as run:
        for epoch in range(1, 4):
            run.log_epoch_metrics(
                epoch,
                {
                    "loss": 1.0 / epoch,
                    "val_loss": 1.1 / epoch,
                    "val_rmse_OEF": 10.0 - epoch,
                    "val_rmse_Y": 0.1,
                },
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

    assert tracker.list_artifacts(run.run_id) == ["maps/a.txt", "reports/rmse.csv"]
    got = tracker.download_artifacts(run.run_id, "reports/rmse.csv", tmp_path / "dl")
    assert got.read_text() == report.read_text()
    assert (tracker.download_artifacts(run.run_id, "maps", tmp_path / "dl") / "a.txt").is_file()
    with pytest.raises(OefrayError, match="no artifact"):
        tracker.download_artifacts(run.run_id, "nope.csv", tmp_path / "dl")
    with pytest.raises(OefrayError, match="no such file"):
        run.log_artifact_file(tmp_path / "missing.png")
    with pytest.raises(OefrayError, match="no such folder"):
        run.log_artifact_dir(tmp_path / "missing")


def test_dataset_input_shows_on_the_run(tracker, experiment, tmp_path):
    digest = "0123456789abcdef"  # FeaturesManifest.digest's kind (tests/io/test_manifest.py)
    features = str(tmp_path / "features")
    with tracker.tracked_run(experiment) as run:
        for _ in range(2):  # again, as a resumed training does: nothing added
            run.log_dataset_input(
                name="features",
                source=features,
                digest=digest,
                context="training",
                profile={"subjects": 2, "train_windows": 1000},
            )
        with pytest.raises(ValueError, match="36"):
            run.log_dataset_input(name="f", source=features, digest="d" * 37, context="training")
    inputs = tracker.client.get_run(run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest, dataset.source_type) == ("features", digest, "local")
    assert json.loads(dataset.source) == {"uri": features}
    assert json.loads(dataset.profile) == {"subjects": 2, "train_windows": 1000}
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}


def test_experiments_are_model_training_experiments(tracker, experiment):
    client = tracker.client
    exp_id = tracker.get_or_create_experiment(experiment)
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # one made elsewhere gets the tag when oefray logs a run into it; a kind set by hand stays
    bare = client.create_experiment(f"{experiment}-bare")
    chosen = client.create_experiment(f"{experiment}-genai", tags={"mlflow.experimentKind": "x"})
    assert "mlflow.experimentKind" not in client.get_experiment(bare).tags
    with tracker.tracked_run(f"{experiment}-bare"), tracker.tracked_run(f"{experiment}-genai"):
        pass
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "x"


def test_unknown_run_ids_give_one_line_errors(tracker, tmp_path):
    unknown = "0123456789abcdef0123456789abcdef"
    handle = tracker.run(unknown)
    for call in (
        lambda: tracker.get_run(unknown),
        lambda: tracker.run_metrics(unknown),
        lambda: handle.log_params({"a": 1}),
        lambda: handle.log_epoch_metrics(1, {"loss": 1.0}),
        lambda: handle.set_tags({"a": 1}),
        lambda: handle.log_dataset_input(name="f", source="/f", digest="d", context="training"),
        lambda: tracker.end_run(unknown),
        lambda: tracker.download_artifacts(unknown, "x", tmp_path),
        lambda: tracker.load_model_bundle(unknown),
        lambda: tracker.resumed_run(unknown).__enter__(),
    ):
        with pytest.raises(OefrayError) as info:
            call()
        assert str(info.value) == f"unknown MLflow run id {unknown}"
