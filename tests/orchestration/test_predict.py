"""``oefray predict`` and ``oefray evaluate`` for real: the `trained` run (conftest.py) applied to
new data with another echo scheme, and its test tables recomputed; MLflow on sqlite."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from oefray.cli import main
from oefray.config import EchoScheme, PredictConfig, SimulationConfig
from oefray.orchestration.predict import predict
from oefray.orchestration.simulate import simulate_cohort
from oefray.tracking import Tracker

from ..bids_validator import assert_valid
from ..conftest import error_lines

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_evaluate_recomputes_the_same_table_in_a_new_run(trained, store, tmp_path, capsys):
    """`oefray evaluate RUN` logs to a new run under the training run (its name counts up),
    with the same test metrics; the training run's own metrics are left as they were."""
    tracker = Tracker(store["uri"])
    before = tracker.get_run(trained["run_id"]).data.metrics
    results = tmp_path / "evaluate.json"
    for n in (1, 2):
        args = ["evaluate", trained["run_id"], "--tracking-uri", store["uri"]]
        assert main([*args, "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert f"test OEF RMSE {before['test_rmse_OEF']:.3f} %" in out
        payload = json.loads(results.read_text())
        assert payload["evaluates"] == trained["run_id"] != payload["run_id"]
        run = tracker.get_run(payload["run_id"])
        assert run.info.status == "FINISHED"
        assert (
            run.info.run_name == f"{tracker.get_run(trained['run_id']).info.run_name}-evaluate-{n}"
        )
        assert run.data.tags["mlflow.parentRunId"] == trained["run_id"]
        assert run.data.tags["oefray.evaluates"] == trained["run_id"]
        assert run.data.metrics["test_rmse_OEF"] == pytest.approx(before["test_rmse_OEF"], abs=1e-6)
    after = tracker.get_run(trained["run_id"])
    assert after.data.metrics == before and after.info.status == "FINISHED"
    assert len(tracker.metric_history(trained["run_id"], "test_rmse_OEF")) == 1


def test_evaluate_refuses_features_made_with_other_options(
    trained, store, tiny_cohort, ray_local, tmp_path, capsys
):
    """Row: `oefray evaluate RUN --features F`, F preprocessed with other options than the run's,
    gave exit 0 and overwrote the run's test metrics. Now: one line, nothing logged."""
    from oefray.config import PreprocessConfig
    from oefray.orchestration.preprocess import preprocess

    other = tmp_path / "first-echo"
    assert preprocess(tiny_cohort, other, PreprocessConfig(normalize="first-echo")).ok
    tracker = Tracker(store["uri"])
    before = tracker.get_run(trained["run_id"]).data.metrics
    evaluations = len(tracker.child_runs(trained["run_id"]))
    args = ["evaluate", trained["run_id"], "--features", str(other), "--tracking-uri", store["uri"]]
    assert main(args) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"oefray: error: {other / '_manifest.json'}: features made with options "
        "{'normalize': 'first-echo'}, the model was trained on {'normalize': 'none'}; "
        "preprocess the data with those (oefray predict does)"
    )
    assert tracker.get_run(trained["run_id"]).data.metrics == before
    assert len(tracker.child_runs(trained["run_id"])) == evaluations


def test_predict_another_echo_scheme(trained, store, ray_local, tmp_path):
    """New data with 10 echoes from 3.0 ms every 3.8 ms: maps on the input grid, with RMSE."""
    ds = tmp_path / "bids"
    scheme = EchoScheme.uniform(3.0e-3, 3.8e-3, 10)
    simulate_cohort(
        ds, SimulationConfig(preset="tiny", subjects=("P6", "Z1"), echoes=scheme, seed=21)
    )
    out = tmp_path / "maps"
    result = predict(trained["run_id"], ds, out, PredictConfig(tracking_uri=store["uri"]))
    cli_out = tmp_path / "cli"
    args = ["predict", trained["run_id"], str(ds), "--out", str(cli_out)]
    assert main([*args, "--tracking-uri", store["uri"]]) == 0
    assert set(result.subjects) == {"P6", "Z1"} and result.rmse is not None
    assert result.subjects["Z1"]["echo_times_s"] == pytest.approx(list(scheme.te_s))
    mask = nib.load(
        ds / "derivatives" / "qsm" / "sub-Z1" / "anat" / "sub-Z1_desc-brain_mask.nii.gz"
    )
    oef = nib.load(out / "sub-Z1" / "anat" / "sub-Z1_desc-OEF_pred.nii.gz")
    assert oef.shape == mask.shape
    np.testing.assert_allclose(oef.affine, mask.affine, atol=1e-5)
    values = np.asarray(oef.dataobj)
    inside = np.isfinite(values)
    assert inside.sum() == result.subjects["Z1"]["predicted"] > 500
    assert np.all(np.asarray(mask.dataobj)[inside] == 1)
    assert 0 < np.median(values[inside]) < 80  # OEF in percent
    # a BIDS derivative: every map with its sidecar, R2, S0 and chi_nb under BIDS suffixes
    assert sorted(p.name for p in (out / "sub-Z1" / "anat").glob("*.nii.gz")) == [
        "sub-Z1_desc-OEF_pred.nii.gz",
        "sub-Z1_desc-Y_pred.nii.gz",
        "sub-Z1_desc-nbpred_Chimap.nii.gz",
        "sub-Z1_desc-pred_R2map.nii.gz",
        "sub-Z1_desc-pred_S0map.nii.gz",
        "sub-Z1_desc-v_pred.nii.gz",
    ]
    assert {w["code"] for w in assert_valid(cli_out)} <= {"TOO_FEW_AUTHORS"}
    cli_results = json.loads((cli_out / "results.json").read_text())
    assert cli_results["command"] == "predict" and cli_results["subjects"] == result.subjects
    np.testing.assert_array_equal(
        np.asarray(nib.load(cli_out / "sub-Z1" / "anat" / "sub-Z1_desc-OEF_pred.nii.gz").dataobj),
        values,
    )

    # new data without ground truth: the same maps, no RMSE
    shutil.rmtree(ds / "derivatives" / "qq")
    bare = predict(
        trained["run_id"], ds, tmp_path / "bare", PredictConfig(tracking_uri=store["uri"])
    )
    assert (
        bare.rmse is None and bare.subjects["Z1"]["predicted"] == result.subjects["Z1"]["predicted"]
    )
    np.testing.assert_array_equal(
        np.asarray(
            nib.load(tmp_path / "bare" / "sub-Z1" / "anat" / "sub-Z1_desc-OEF_pred.nii.gz").dataobj
        ),
        values,
    )
    assert not (tmp_path / "bare" / "rmse_per_patient.csv").exists()
