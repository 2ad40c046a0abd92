"""Fixtures of more than one orchestration test file: one training run and one CCM baseline run
on the `tiny` features, each made once per session (every file that needs one shares it)."""

from __future__ import annotations

import json

import pytest

from oefray.cli import main

#: Epochs of the `trained` run.
EPOCHS = 4


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    """The MLflow store (sqlite) and Ray Train storage of the `trained` run and its tests."""
    root = tmp_path_factory.mktemp("mlflow")
    return {"uri": f"sqlite:///{root}/mlflow.db", "storage": root / "ray_results", "root": root}


@pytest.fixture(scope="session")
def trained(tiny_features, ray_local, store):
    """One 2-worker training run through the CLI, as a user starts it."""
    results = store["root"] / "results.json"
    code = main(
        [
            "train",
            str(tiny_features),
            "--workers",
            "2",
            "--epochs",
            str(EPOCHS),
            "--seed",
            "3",
            "--learning-rate",
            "1e-3",
            "--experiment",
            "test-train",
            "--tracking-uri",
            store["uri"],
            "--storage",
            str(store["storage"]),
            "--results",
            str(results),
        ]
    )
    assert code == 0
    return json.loads(results.read_text())


@pytest.fixture(scope="session")
def ccm_run(tiny_features, tmp_path_factory):
    """One ``oefray baseline ccm`` run (32 clusters) on the `tiny` features, MLflow on sqlite."""
    root = tmp_path_factory.mktemp("ccm")
    uri = f"sqlite:///{root}/mlflow.db"
    code = main(
        [
            "baseline",
            "ccm",
            str(tiny_features),
            "--clusters",
            "32",
            "--experiment",
            "cmp",
            "--tracking-uri",
            uri,
            "--results",
            str(root / "results.json"),
        ]
    )
    assert code == 0
    return {"uri": uri, "root": root, "results": json.loads((root / "results.json").read_text())}
