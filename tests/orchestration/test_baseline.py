"""``oefray baseline ccm`` on the `tiny` cohort, MLflow on sqlite (the run, `ccm_run`, is in
conftest.py; test_compare.py compares it)."""

from __future__ import annotations

import pandas as pd
import pytest

from oefray.physics.constants import YA
from oefray.tracking import TEST_METRICS, Tracker

pytestmark = pytest.mark.ray  # every test here uses the preprocessed `tiny_features`


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
