"""``oefray baseline ccm`` and ``oefray compare`` on the `tiny` cohort, MLflow on sqlite."""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from oefray.cli import main
from oefray.physics.constants import YA
from oefray.tracking import TEST_METRICS, Tracker

pytestmark = pytest.mark.ray  # every test here uses the preprocessed `tiny_features`

QUANTITIES = ("S0", "R2", "Y", "v", "chi_nb", "OEF")


@pytest.fixture(scope="module")
def ccm_run(tiny_features, tmp_path_factory):
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


def test_compare_shows_the_real_numbers(ccm_run, capsys):
    run_id = ccm_run["results"]["run_id"]
    m = Tracker(ccm_run["uri"]).get_run(run_id).data.metrics
    assert main(["compare", "cmp", "--tracking-uri", ccm_run["uri"]]) == 0
    md = capsys.readouterr().out
    assert run_id[:8] in md and "floor: training mean" in md
    for q in QUANTITIES:
        assert f"{m[f'test_rmse_{q}']:.4g}" in md
    assert main(["compare", run_id, "--format", "csv", "--tracking-uri", ccm_run["uri"]]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kind"] for r in rows] == ["baseline ccm", "floor"]
    assert float(rows[0]["OEF"]) == pytest.approx(m["test_rmse_OEF"], rel=1e-12)
    assert float(rows[1]["Y"]) == pytest.approx(m["floor_rmse_Y"], rel=1e-12)
    assert main(["compare", run_id, "--format", "html", "--tracking-uri", ccm_run["uri"]]) == 0
    assert capsys.readouterr().out.startswith("<table>")


def test_compare_unknown_reference(ccm_run, capsys):
    assert main(["compare", "no-such-thing", "--tracking-uri", ccm_run["uri"]]) == 1
    err = capsys.readouterr().err
    assert "'no-such-thing' is neither an MLflow run id nor an experiment name" in err
