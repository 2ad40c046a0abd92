"""Metric, tag and artifact names: exactly the documented ones, spelled by one module."""

from __future__ import annotations

import pytest

from oefray.physics.constants import RMSE_QUANTITIES
from oefray.tracking import names


def test_metric_names_are_exactly_the_documented_ones():
    assert names.EPOCH_METRICS == (
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
    assert names.TEST_METRICS == (*pooled, *(f"{n}_patient_mean" for n in pooled))
    assert names.FLOOR_METRICS == tuple(n.replace("test_", "floor_") for n in pooled)
    assert names.REPEATS_METRICS == (*(f"{n}_mean" for n in pooled), *(f"{n}_std" for n in pooled))
    assert names.METRIC_NAMES == (
        names.EPOCH_METRICS
        + ("replica_weight_spread",)
        + names.TEST_METRICS
        + names.FLOOR_METRICS
        + names.REPEATS_METRICS
        + ("trials_completed", "trials_stopped_early")
    )
    assert len(set(names.METRIC_NAMES)) == len(names.METRIC_NAMES)
    assert names.final_metrics({"Y": 0.05}, {"OEF": 5.1}) == {
        "test_rmse_Y": 0.05,
        "test_rmse_OEF_patient_mean": 5.1,
    }
    assert names.floor_metrics({"OEF": 9.0, "Y": 0.1}) == {
        "floor_rmse_OEF": 9.0,
        "floor_rmse_Y": 0.1,
    }
    assert names.repeats_metrics({"OEF": 5.0}, {"OEF": 0.2}) == {
        "test_rmse_OEF_mean": 5.0,
        "test_rmse_OEF_std": 0.2,
    }
    assert names.best_metric_name("val_rmse_OEF") == "best_val_rmse_OEF"
    with pytest.raises(ValueError, match="unknown quantity"):
        names.final_metrics({"OEF%": 1.0})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("val", "OEF"), "val_rmse_OEF"),
        (("test", "chi_nb"), "test_rmse_chi_nb"),
        (("floor", "R2"), "floor_rmse_R2"),
        (("test", "chi_nb", "patient_mean"), "test_rmse_chi_nb_patient_mean"),
        (("test", "Y", "mean"), "test_rmse_Y_mean"),
        (("test", "S0", "std"), "test_rmse_S0_std"),
    ],
)
def test_rmse_metric_name(args, expected):
    assert names.rmse_metric_name(*args) == expected


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("val", "Y", "patient_mean"), "test metrics only"),
        (("floor", "Y", "mean"), "test metrics only"),
        (("val", "OEF", "std"), "test metrics only"),
        (("train", "Y"), "split"),
        (("test", "OEF%"), "unknown quantity"),
        (("test", "Y", "median"), "stat"),
    ],
)
def test_rmse_metric_name_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        names.rmse_metric_name(*args)


def test_quantities_come_from_physics():
    assert names.RMSE_QUANTITIES is RMSE_QUANTITIES


def test_tag_names():
    tags = {v for k, v in vars(names).items() if k.endswith("_TAG")}
    assert {
        "oefray.command",
        "oefray.seed",
        "oefray.repeat",
        "oefray.child_runs",
        "oefray.representative_run",
        "oefray.best_run",
        "oefray.trial_id",
        "oefray.resumed_from_epoch",
        "oefray.best_epoch",
        "oefray.epochs_run",
        "oefray.data_feed",
        "oefray.shard_mb",
        "oefray.error",
        "oefray.stopped_early",
        "oefray.tune_state",
        "oefray.evaluates",
        "mlflow.parentRunId",
        "mlflow.experimentKind",
        "mlflow.data.context",
    } == tags
    assert names.model_tag("model") == "oefray.model.model"
    assert names.model_meta_artifact_dir("model") == "model_meta"


def test_mlflow_tags_are_mlflows():
    from mlflow.utils import mlflow_tags

    assert names.PARENT_RUN_ID_TAG == mlflow_tags.MLFLOW_PARENT_RUN_ID
    assert names.DATASET_CONTEXT_TAG == mlflow_tags.MLFLOW_DATASET_CONTEXT
