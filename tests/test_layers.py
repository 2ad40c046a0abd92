"""Layer boundaries (DESIGN.md section 6): the pure layers load neither Ray nor MLflow nor Keras,
and importing the package does no work."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "oefray.physics.constants",
    "oefray.physics.fs",
    "oefray.physics.qq",
    "oefray.physics.decay",
    "oefray.physics.phantom",
    "oefray.io.bids",
    "oefray.io.features",
    "oefray.io.maps",
    "oefray.config",
    "oefray.errors",
    "oefray.reports",
    "oefray.tracking",
    "oefray.ml.windows",
    "oefray.ml.scaling",
    "oefray.ml.metrics",
]
#: The Keras part of the ML layer: TensorFlow is its business, Ray and MLflow are not.
KERAS = ["oefray.ml.model", "oefray.ml.training"]


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [(PURE, f) for f in ("ray", "mlflow", "tensorflow", "keras")]
    + [(KERAS, f) for f in ("ray", "mlflow")],
)
def test_pure_layers_do_not_import(modules, forbidden):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"loaded = sorted(m for m in sys.modules if m == {forbidden!r} or m.startswith({forbidden!r} + '.'))\n"
        + "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{forbidden} loaded by the pure layers: {out.stdout[:300]}"


def test_cli_import_is_light_and_side_effect_free(tmp_path):
    code = (
        "import sys, os\n"
        "import oefray.cli, oefray.orchestration.preprocess, oefray.orchestration.simulate\n"
        "print(int('ray' in sys.modules), int('mlflow' in sys.modules), len(os.listdir('.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.split() == ["0", "0", "0"]  # ray is imported lazily, nothing written
