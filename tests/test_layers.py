"""Layer boundaries (DESIGN.md section 6): the pure layers load neither Ray nor MLflow nor Keras,
and importing the package does no work.

Two checks: importing the layers in a fresh process loads none of the forbidden packages, and
the source of every file of ``oefray/physics``, ``oefray/io`` and ``oefray/ml`` names none of them
in any ``import`` statement, the lazy ones inside functions included (those pass the first check).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "oefray"

PURE = [
    "oefray.physics.constants",
    "oefray.physics.fs",
    "oefray.physics.qq",
    "oefray.physics.decay",
    "oefray.physics.phantom",
    "oefray.io.bids",
    "oefray.io.features",
    "oefray.io.slabs",
    "oefray.io.maps",
    "oefray.io.names",
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


#: What no file of the pure layers may import, anywhere in the file (a module and its submodules).
UPWARD = ("ray", "mlflow", "typer", "rich", "oefray.orchestration", "oefray.tracking", "oefray.cli")
#: The physics imports no file format and no deep-learning library either.
FORBIDDEN = {
    "physics": UPWARD + ("nibabel", "pyarrow", "keras", "tensorflow"),
    "io": UPWARD,
    "ml": UPWARD,
}
_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _imported_names(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """Every module name that ``tree`` (the source of the module ``module``) imports, with its
    line: ``import a.b``, ``from a import b`` (both ``a`` and ``a.b``, since ``b`` may be a
    submodule), relative imports resolved, and ``importlib.import_module("a")`` with a literal."""
    package = module.split(".")[:-1]  # for `oefray.ml.__init__` too: `oefray.ml`
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from ..x import y`: one level is the package itself
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in _IMPORT_FUNCTIONS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.append((node.lineno, arg.value))
    return found


def _violations(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    """``file:line: imports NAME`` for each import of ``path`` that names a forbidden module."""
    relative = path.relative_to(PACKAGE.parent)
    module = ".".join(relative.with_suffix("").parts)
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{relative}:{line}: imports {name}"
        for line, name in sorted(set(_imported_names(tree, module)))
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def _layer_files(layer: str) -> list[Path]:
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"no Python files under {PACKAGE / layer}"
    return files


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_pure_layer_sources_import_nothing_above_them(layer):
    forbidden = FORBIDDEN[layer]
    found = [v for path in _layer_files(layer) for v in _violations(path, forbidden)]
    assert not found, f"oefray/{layer} imports what it must not ({', '.join(forbidden)}):\n" + (
        "\n".join(found)
    )


def test_source_check_sees_lazy_relative_and_dynamic_imports(tmp_path, monkeypatch):
    """The checker itself: each kind of import it claims to see, in a function or not, is found."""
    layer = tmp_path / "oefray" / "ml"
    layer.mkdir(parents=True)
    source = layer / "lazy.py"
    source.write_text(
        "import numpy as np\n"
        "def f():\n"
        "    import ray.data\n"  # line 3
        "    from oefray import tracking\n"  # line 4
        "    from ..orchestration import train\n"  # line 5
        "    from . import scaling\n"  # line 6: allowed
        "    return importlib.import_module('mlflow')\n"  # line 7
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "oefray")
    assert _violations(source, UPWARD) == [
        "oefray/ml/lazy.py:3: imports ray.data",
        "oefray/ml/lazy.py:4: imports oefray.tracking",
        "oefray/ml/lazy.py:5: imports oefray.orchestration",
        "oefray/ml/lazy.py:5: imports oefray.orchestration.train",
        "oefray/ml/lazy.py:7: imports mlflow",
    ]
