"""Params and tag values as MLflow stores them, within its limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from oefray import tracking
from oefray.tracking import params


def test_flatten_params():
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
    assert tracking.flatten_params({"empty": {}}) == {"empty": "{}"}


def test_values_and_tags():
    assert params.param_value(Path("/data/features")) == "/data/features"
    assert params.param_value({"b", "a"}) == '["a", "b"]'
    assert params.tag_value(3) == "3"
    tag = params.tag_value("t" * 9000)
    assert len(tag) == 8000 and tag.endswith("...")
    assert params.truncate("abc", 3) == "abc"


def test_limits_are_mlflows():
    from mlflow.utils import validation

    assert params.MAX_PARAM_VALUE == validation.MAX_PARAM_VAL_LENGTH
    assert params.MAX_TAG_VALUE == validation.MAX_TAG_VAL_LENGTH
    assert params.MAX_KEY == validation.MAX_ENTITY_KEY_LENGTH
    assert params.BATCH_PARAMS == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert params.BATCH_METRICS == validation.MAX_METRICS_PER_BATCH
    assert params.MAX_DATASET_DIGEST == validation.MAX_DATASET_DIGEST_SIZE
