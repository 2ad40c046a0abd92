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
    "oefray.config",
    "oefray.errors",
]


@pytest.mark.parametrize("forbidden", ["ray", "mlflow", "tensorflow", "keras"])
def test_pure_layers_do_not_import(forbidden):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in PURE)
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
