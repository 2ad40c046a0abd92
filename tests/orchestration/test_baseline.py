"""``oefray baseline ccm`` on the `tiny` cohort, MLflow on sqlite (the run, `ccm_run`, is in
conftest.py; test_compare.py compares it).

The run is made on Ray, scan by scan (:mod:`oefray.orchestration.baseline`); the independent
reference here is the method on arrays gathered in the test: every good training voxel read at
once (:func:`oefray.io.features.read_features`), :func:`oefray.ml.ccm.estimate_snr`,
:func:`oefray.ml.ccm.build_library` and :func:`oefray.ml.ccm.predict` over the test voxels,
scored by :func:`oefray.ml.metrics.pooled_rmse`. The tiny cohort's training scans hold fewer
voxels than the library's default size, so the reference sample is every voxel, in read order,
and the library is the same up to k-means' summation order (a Ray task runs BLAS on one thread,
the test process on several): centroids to rtol 1e-9; the metrics to rtol 1e-7 (a float32
prediction may round the other way in its last bit, and float64 sums stand against float64
means).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from oefray.cli import main
from oefray.io import features as fio
from oefray.io.manifest import FeaturesManifest
from oefray.ml.ccm import CCMConfig, build_library, estimate_snr, predict
from oefray.ml.metrics import pooled_rmse
from oefray.orchestration.baseline import CCMPayload
from oefray.orchestration.inference import MapsTarget, run_inference
from oefray.physics.constants import PARAMETERS, YA
from oefray.tracking import TEST_METRICS, Tracker

from ..conftest import error_lines

pytestmark = pytest.mark.ray  # every test here uses the preprocessed `tiny_features`

RTOL = 1e-7


def _good(features, scans):
    table = fio.read_features(features, scans)
    return table.filter(pc.equal(table["status"], 0))


@pytest.fixture(scope="module")
def gathered(tiny_features):
    """CCM on arrays gathered in the test (the module's docstring), 32 clusters as `ccm_run`."""
    manifest = FeaturesManifest.load(tiny_features)
    train, test = manifest.split_subjects(tiny_features)
    good = _good(tiny_features, train)
    params = np.column_stack([good[p].to_numpy() for p in PARAMETERS]).astype(np.float64)
    abe = [good[c].to_numpy().astype(np.float64) for c in ("A", "B", "E")]
    te = np.asarray(manifest.subjects[train[0]].echo_times_s)
    snr = estimate_snr(*abe, te)
    library = build_library(params, te, CCMConfig(clusters=32, snr=snr))
    tested = _good(tiny_features, test)
    x = np.column_stack([tested[c].to_numpy() for c in ("A", "B", "E", "S")])
    true = np.column_stack([tested[p].to_numpy() for p in PARAMETERS]).astype(np.float32)
    pred = predict(library, x).astype(np.float32)
    mean = params.mean(axis=0)
    return {
        "library": library,
        "snr": snr,
        "n_train": len(params),
        "n_test": len(x),
        "test": pooled_rmse(pred, true),
        "floor": pooled_rmse(np.broadcast_to(mean, true.shape), true),
        "test_keys": test,
    }


def test_ccm_logs_like_an_lstm_run(ccm_run, tmp_path):
    tracker = Tracker(ccm_run["uri"])
    run = tracker.get_run(ccm_run["results"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["oefray.command"] == "baseline ccm"
    m = run.data.metrics
    assert set(TEST_METRICS) <= set(m)
    assert m["test_rmse_OEF"] == pytest.approx(100 * m["test_rmse_Y"] / YA, rel=1e-9)
    # the library knows the tissue: R2 and S0 errors are well below the floor's
    assert m["test_rmse_R2"] < 0.8 * m["floor_rmse_R2"]
    assert run.data.params["ccm.clusters"] == "32"
    art = tracker.download_artifacts(run.info.run_id, "", tmp_path)
    table = pd.read_csv(art / "rmse_per_patient.csv", index_col=0)
    assert list(table.index) == ["P6", "P11", "Avg."]
    assert (art / "oef_maps.png").is_file() and (art / "ccm_library.json").is_file()
    assert (art / "maps" / "sub-P11_desc-OEF_pred.nii.gz").is_file()


def test_ccm_on_ray_equals_ccm_on_gathered_arrays(ccm_run, gathered, tmp_path):
    tracker = Tracker(ccm_run["uri"])
    run = tracker.get_run(ccm_run["results"]["run_id"])
    art = tracker.download_artifacts(run.info.run_id, "ccm_library.json", tmp_path)
    ((key, library),) = json.loads(art.read_text()).items()
    expected = gathered["library"].to_dict()
    assert library["config"] == expected["config"] and library["te_s"] == expected["te_s"]
    for name in ("centroid_params", "centroid_features", "feature_mean", "feature_std"):
        np.testing.assert_allclose(library[name], expected[name], rtol=1e-9, err_msg=name)
    assert key == ",".join(f"{t:g}" for t in gathered["library"].te_s)
    params = run.data.params
    assert float(params["estimated_snr"]) == gathered["snr"]
    assert (
        int(params["n_training_voxels"]) == int(params["n_library_voxels"]) == gathered["n_train"]
    )
    assert int(params["n_test_voxels"]) == gathered["n_test"]
    m = run.data.metrics
    for q, value in gathered["test"].items():
        assert m[f"test_rmse_{q}"] == pytest.approx(value, rel=RTOL), q
    for q, value in gathered["floor"].items():
        assert m[f"floor_rmse_{q}"] == pytest.approx(value, rel=RTOL), q


def test_ccm_queries_run_in_actors_that_load_the_libraries_once(gathered, tiny_features):
    te = tuple(float(t) for t in gathered["library"].te_s)
    payload = CCMPayload(((te, gathered["library"].to_dict()),))
    result = run_inference(
        payload,
        tiny_features,
        gathered["test_keys"],
        MapsTarget.nowhere(),
        with_targets=True,
        actors=1,
        slices_for=(),
    )
    ((pid, loads),) = result.workers().items()
    assert pid != os.getpid() and loads == {1}
    assert result.windows == gathered["n_test"]
    assert all(o.files == [] and o.pred_slice.size == 0 for o in result.scans.values())


def test_a_library_that_cannot_be_built_is_one_line_and_opens_no_run(
    tiny_features, tmp_path, capsys
):
    uri = f"sqlite:///{tmp_path}/m.db"
    args = ["baseline", "ccm", str(tiny_features), "--clusters", "1000000"]
    assert main([*args, "--tracking-uri", uri, "--results", str(tmp_path / "r.json")]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"oefray: error: {tiny_features}: cannot build the CCM library: only ")
    assert line.endswith("fewer than clusters=1000000")
    client = Tracker(uri).client
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert not (tmp_path / "r.json").exists()
