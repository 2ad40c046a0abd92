"""ModelBundle: the side files a trained model travels with, versioned, read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oefray.errors import OefrayError
from oefray.io.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, ModelBundle
from oefray.ml.scaling import Standardizer
from oefray.ml.windows import WindowConfig


def _bundle() -> ModelBundle:
    rng = np.random.default_rng(0)
    return ModelBundle(
        model=object(),
        x_scaler=Standardizer.fit(rng.normal(size=(50, 5, 4)).astype(np.float32)),
        y_scaler=Standardizer.fit(rng.normal(size=(50, 5)).astype(np.float32)),
        window=WindowConfig(length=3, anchor="last"),
        model_config={"lstm_units": [8], "epochs": 2},
        features_options={"normalize": "first-echo"},
        echo_times_s=(0.0045, 0.0095),
    )


def test_files_round_trip_through_json():
    bundle = _bundle()
    files = json.loads(json.dumps(bundle.files()))  # what MLflow stores and gives back
    assert files["bundle"] == {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION}
    back = ModelBundle.from_files(bundle.model, files, "models:/m-1")
    assert back.window == bundle.window and back.normalize == "first-echo"
    assert back.echo_times_s == (0.0045, 0.0095) and back.targets == bundle.targets
    assert back.model_config == bundle.model_config
    x = np.random.default_rng(1).normal(size=(7, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(back.x_scaler.transform(x), bundle.x_scaler.transform(x))
    y = np.random.default_rng(2).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(
        back.y_scaler.inverse_transform(y), bundle.y_scaler.inverse_transform(y)
    )


def test_models_logged_before_the_version_file_read_as_version_1():
    files = {k: v for k, v in _bundle().files().items() if k != "bundle"}
    assert ModelBundle.from_files(None, files, "old").window.length == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("scalers"), r"model m lacks \['scalers'\]: not an oefray model"),
        (lambda f: f.update(bundle={"format": BUNDLE_FORMAT, "version": 99}), "version 99"),
        (lambda f: f.update(bundle={"format": "other", "version": 1}), "is other version 1"),
        (lambda f: f.update(window={"length": 0}), "malformed side files"),
    ],
)
def test_foreign_or_broken_side_files_are_one_line(change, message):
    files = _bundle().files()
    change(files)
    with pytest.raises(OefrayError, match=message):
        ModelBundle.from_files(None, files, "m")
