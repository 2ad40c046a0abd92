"""``oefray tune --repeats``: seed repeats on Ray Tune with an MLflow parent run, for real."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from oefray.cli import main
from oefray.io import features as fio
from oefray.physics.anatomy import Tissue
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

QUANTITIES = ("S0", "R2", "Y", "v", "chi_nb", "OEF")


@pytest.fixture(scope="module")
def repeats(tiny_features, ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root}/mlflow.db"
    code = main(
        [
            "tune",
            str(tiny_features),
            "--repeats",
            "2",
            "--epochs",
            "2",
            "--seed",
            "7",
            "--workers-per-trial",
            "1",
            "--experiment",
            "test-repeats",
            "--tracking-uri",
            uri,
            "--storage",
            str(root / "ray_results"),
            "--results",
            str(root / "results.json"),
        ]
    )
    assert code == 0
    return {
        "uri": uri,
        "results": json.loads((root / "results.json").read_text()),
        "root": root,
        "features": tiny_features,
    }


def test_children_differ_only_in_seed(repeats):
    tracker = Tracker(repeats["uri"])
    res = repeats["results"]
    parent = tracker.get_run(res["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = [tracker.get_run(r) for r in res["child_run_ids"]]
    assert len(children) == 2 and res["seeds"] == [7, 8]
    for i, child in enumerate(children):
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == res["parent_run_id"]
        assert (child.data.tags["oefray.repeat"], child.data.tags["oefray.seed"]) == (
            str(i),
            str(7 + i),
        )
    a, b = (dict(c.data.params) for c in children)
    # the seed and what it decides: the hash split's seed, and so its window counts
    differ = {k for k in a if a[k] != b.get(k)}
    assert differ <= {"seed", "split.seed", "n_train_windows", "n_val_windows"}
    assert {"seed", "split.seed"} <= differ
    assert a.keys() == b.keys()


def test_parent_summarises_the_children(repeats, tmp_path):
    tracker = Tracker(repeats["uri"])
    res = repeats["results"]
    parent = tracker.get_run(res["parent_run_id"])
    children = [tracker.get_run(r).data.metrics for r in res["child_run_ids"]]
    for q in QUANTITIES:
        values = np.array([c[f"test_rmse_{q}"] for c in children])
        assert parent.data.metrics[f"test_rmse_{q}_mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert parent.data.metrics[f"test_rmse_{q}_std"] == pytest.approx(
            values.std(ddof=1), rel=1e-9
        )
    # per region (the tiny cohort has a segmentation, and P11 an infarct): mean and std too
    for name in (
        "test_rmse_OEF_infarct_core",
        "test_rmse_OEF_WM",
        "test_lesion_contrast_recovered",
    ):
        values = np.array([c[name] for c in children])
        assert parent.data.metrics[f"{name}_mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert parent.data.metrics[f"{name}_std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
    assert (
        parent.data.metrics["floor_rmse_OEF_infarct_core"]
        == children[0]["floor_rmse_OEF_infarct_core"]
    )
    # compare's per-region row of the parent: the region names, mean and std over the repeats
    from oefray.orchestration.compare import region_rows

    row = region_rows([res["parent_run_id"]], tracking_uri=repeats["uri"])[0]
    assert not any(r.endswith(("_mean", "_std")) for r in row["regions"])
    values = np.array([c["test_rmse_OEF_infarct_core"] for c in children])
    mean, std = row["regions"]["infarct_core"]
    assert mean == pytest.approx(values.mean(), rel=1e-12)
    assert std == pytest.approx(values.std(ddof=1), rel=1e-9)
    art = tracker.download_artifacts(res["parent_run_id"], "", tmp_path)
    table = pd.read_csv(art / "repeats_summary.csv", index_col=0)
    assert list(table.index) == list(QUANTITIES)
    assert list(table.columns) == ["mean", "std", "repeat_0", "repeat_1"]
    oef = np.array([c["test_rmse_OEF"] for c in children])
    representative = parent.data.tags["oefray.representative_run"]
    assert representative == res["child_run_ids"][int(np.argmin(np.abs(oef - oef.mean())))]
    assert (art / "representative" / "oef_maps.png").is_file()
    assert (art / "uncertainty.png").stat().st_size > 10_000
    # ensemble: per-voxel mean and std of the repeats' maps, on the subject's grid
    child_maps = [
        tracker.download_artifacts(r, "maps/sub-P6_desc-Y_pred.nii.gz", tmp_path / f"c{i}")
        for i, r in enumerate(res["child_run_ids"])
    ]
    stack = np.stack([np.asarray(nib.load(p).dataobj) for p in child_maps])
    mean = np.asarray(nib.load(art / "maps" / "sub-P6_desc-Y_ensmean.nii.gz").dataobj)
    std = np.asarray(nib.load(art / "maps" / "sub-P6_desc-Y_ensstd.nii.gz").dataobj)
    inside = np.isfinite(stack).all(axis=0)
    np.testing.assert_allclose(mean[inside], stack.mean(axis=0)[inside], rtol=1e-6)
    np.testing.assert_allclose(std[inside], stack.std(axis=0, ddof=1)[inside], rtol=1e-5, atol=1e-7)
    assert np.isnan(mean[~inside]).all()
    # the ensemble spread of OEF per region, recomputed from the ensstd maps and the features
    spread = pd.read_csv(art / "ensemble_spread_per_region.csv").set_index("region")
    test = fio.read_features(repeats["features"], ["P6", "P11"])
    test = test.filter(pc.equal(test["status"], 0))
    values, tissue, lesion = [], [], []
    for label in ("P6", "P11"):
        rows = test.filter(pc.equal(test["subject"], label))
        volume = np.asarray(nib.load(art / "maps" / f"sub-{label}_desc-OEF_ensstd.nii.gz").dataobj)
        values.append(volume.ravel()[rows["idx"].to_numpy()])
        tissue.append(rows["tissue"].to_numpy())
        lesion.append(rows["lesion"].to_numpy() > 0)
    values, tissue, lesion = (np.concatenate(a) for a in (values, tissue, lesion))
    for region, sel in (("WM", tissue == Tissue.WM), ("lesion", lesion)):
        ok = sel & np.isfinite(values)
        assert spread.loc[region, "voxels"] == ok.sum() > 0
        assert spread.loc[region, "mean"] == pytest.approx(values[ok].mean(), rel=1e-6)
        slug = region.replace(" ", "_")
        assert parent.data.metrics[f"ensemble_oef_std_{slug}"] == pytest.approx(
            spread.loc[region, "mean"], rel=1e-9
        )
    assert spread.loc["lesion mirror", "voxels"] > 0
    ratio = spread.loc["lesion", "mean"] / spread.loc["lesion mirror", "mean"]
    assert parent.data.metrics["ensemble_oef_std_lesion_over_mirror"] == pytest.approx(ratio)


def test_te_shift_of_a_repeats_parent_gives_mean_and_std_over_the_repeats(
    repeats, tiny_cohort, ray_local
):
    """`study te-shift --model <repeats parent>` evaluates every repeat's model: its LSTM row is
    the mean and sample std of what each repeat's model scores alone on the same data."""
    from oefray.config import EchoScheme
    from oefray.orchestration.study import te_shift

    res = repeats["results"]
    scheme = {"10 echoes from 3.0 ms every 3.8 ms": EchoScheme.uniform(3.0e-3, 3.8e-3, 10)}
    from oefray.config import StudyConfig

    study = StudyConfig(clusters=16, tracking_uri=repeats["uri"], seed=4, qq=())
    common = {"config": study, "schemes": scheme}
    both = te_shift(tiny_cohort, res["parent_run_id"], **common)
    lstm = [r for r in both["rows"] if r["method"].startswith("LSTM")]
    assert [r["method"] for r in lstm] == ["LSTM (2 seeds)"]
    studies = [te_shift(tiny_cohort, c, **common) for c in res["child_run_ids"]]
    alone = [next(r for r in st["rows"] if r["method"] == "LSTM") for st in studies]
    for q in QUANTITIES:
        values = np.array([r[q] for r in alone])
        assert lstm[0][q] == pytest.approx(values.mean(), rel=1e-9)
        assert lstm[0][f"{q}_std"] == pytest.approx(values.std(ddof=1), rel=1e-6)
    # per region likewise: the infarct core's OEF RMSE and the lesion contrast recovered
    region = next(r for r in both["region_rows"] if r["method"].startswith("LSTM"))
    alone_regions = [next(r for r in st["region_rows"] if r["method"] == "LSTM") for st in studies]
    for key in ("OEF infarct core", "contrast_recovered"):
        values = np.array([r[key] for r in alone_regions])
        assert region[key] == pytest.approx(values.mean(), rel=1e-9)
        assert region[f"{key}_std"] == pytest.approx(values.std(ddof=1), rel=1e-6)
        assert np.isnan(alone[0][f"{q}_std"])
    assert "±" in both["markdown"].splitlines()[2]
