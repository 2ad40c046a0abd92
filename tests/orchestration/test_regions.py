"""Labels as data, and accuracy per region: the `tiny` cohort's segmentation and lesion mask
from ``oefray simulate`` through ``preprocess`` (the ``tissue`` and ``lesion`` columns) to the
per-region table and lesion contrast every evaluation logs (here ``baseline ccm`` and
``train``), each checked against a computation from the images themselves."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest

from oefray.io import features as fio
from oefray.io.manifest import FeaturesManifest
from oefray.ml.metrics import oef_percent
from oefray.ml.regions import lesion_contrast, mirror_region
from oefray.physics.anatomy import TISSUE_NAMES, Tissue
from oefray.tracking import Tracker

pytestmark = pytest.mark.ray


def _image(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_simulate_writes_the_segmentation_and_lesion_mask(tiny_cohort):
    qq = tiny_cohort / "derivatives" / "qq"
    for label in ("P3", "P4", "P6", "P11"):
        anat = qq / f"sub-{label}" / "anat"
        dseg = _image(anat / f"sub-{label}_dseg.nii.gz")
        mask = _image(
            tiny_cohort
            / "derivatives"
            / "qsm"
            / f"sub-{label}"
            / "anat"
            / f"sub-{label}_desc-brain_mask.nii.gz"
        )
        # the brain mask is exactly the brain tissue classes of the segmentation
        np.testing.assert_array_equal(mask == 1, dseg >= Tissue.CORTICAL_GM)
        lesion = anat / f"sub-{label}_label-lesion_mask.nii.gz"
        core = dseg == Tissue.INFARCT_CORE
        assert lesion.is_file() == bool(core.any()), label
        if core.any():
            np.testing.assert_array_equal(_image(lesion) == 1, core)
        table = (anat / f"sub-{label}_dseg.tsv").read_text().splitlines()
        assert table[0] == "index\tname"
        assert {int(r.split("\t")[0]): r.split("\t")[1] for r in table[1:]} == TISSUE_NAMES
    assert (qq / "sub-P11" / "anat" / "sub-P11_label-lesion_mask.nii.gz").is_file()


def test_preprocess_carries_tissue_and_lesion(tiny_cohort, tiny_features):
    manifest = FeaturesManifest.load(tiny_features)
    assert fio.label_columns(manifest) == ("tissue", "lesion")
    table = fio.read_features(tiny_features)
    for label in manifest.subjects:
        rows = table.filter(pc.equal(table["subject"], label))
        anat = tiny_cohort / "derivatives" / "qq" / f"sub-{label}" / "anat"
        dseg = _image(anat / f"sub-{label}_dseg.nii.gz").ravel()
        idx = rows["idx"].to_numpy()
        np.testing.assert_array_equal(rows["tissue"].to_numpy(), dseg[idx])
        lesion_path = anat / f"sub-{label}_label-lesion_mask.nii.gz"
        lesion = _image(lesion_path).ravel()[idx] if lesion_path.is_file() else 0
        np.testing.assert_array_equal(rows["lesion"].to_numpy(), lesion)
        assert manifest.subjects[label].label_names == {str(k): v for k, v in TISSUE_NAMES.items()}


def test_every_evaluation_logs_regions_beside_the_floor_and_the_truth(
    ccm_run, tiny_features, tmp_path
):
    """baseline ccm's per-region table and lesion contrast, recomputed from the features and
    the logged maps."""
    tracker = Tracker(ccm_run["uri"])
    run = tracker.get_run(ccm_run["results"]["run_id"])
    m = run.data.metrics
    art = tracker.download_artifacts(run.info.run_id, "", tmp_path)
    regions = pd.read_csv(art / "rmse_per_region.csv")
    test = fio.read_features(tiny_features, ["P6", "P11"])
    test = test.filter(pc.equal(test["status"], 0))
    pred_oef = {}
    for label in ("P6", "P11"):
        volume = _image(art / "maps" / f"sub-{label}_desc-OEF_pred.nii.gz").ravel()
        rows = test.filter(pc.equal(test["subject"], label))
        pred_oef[label] = volume[rows["idx"].to_numpy()]
    pred = np.concatenate([pred_oef["P6"], pred_oef["P11"]])
    true = oef_percent(test["Y"].to_numpy())
    tissue = test["tissue"].to_numpy()
    for code, name in ((Tissue.WM, "WM"), (Tissue.INFARCT_CORE, "infarct core")):
        sel = tissue == code
        row = regions[(regions.region == name) & (regions.method == "model")].iloc[0]
        rmse = float(np.sqrt(np.mean((pred[sel] - true[sel]) ** 2)))
        assert row["OEF"] == pytest.approx(rmse, rel=1e-4)  # float32 maps, float64 metrics
        assert row["voxels"] == sel.sum()
        slug = name.replace(" ", "_")
        assert m[f"test_rmse_OEF_{slug}"] == pytest.approx(rmse, rel=1e-4)
        assert f"floor_rmse_OEF_{slug}" in m
    assert set(regions.method) == {"model", "floor"}
    # lesion contrast of P11 (the test subject with an infarct) against its mirror region
    rows = test.filter(pc.equal(test["subject"], "P11"))
    record = FeaturesManifest.load(tiny_features).subjects["P11"]
    shape = record.shape
    idx = rows["idx"].to_numpy()
    lesion = rows["lesion"].to_numpy() == 1
    abnormal = lesion | np.isin(rows["tissue"].to_numpy(), [Tissue.INFARCT_CORE, Tissue.PENUMBRA])
    les_vol = np.zeros(int(np.prod(shape)), bool)
    les_vol[idx[lesion]] = True
    normal = np.zeros(int(np.prod(shape)), bool)
    normal[idx[~abnormal]] = True
    mirror = mirror_region(les_vol.reshape(shape), normal.reshape(shape), record.affine).ravel()[
        idx
    ]
    expected = lesion_contrast(pred_oef["P11"], oef_percent(rows["Y"].to_numpy()), lesion, mirror)
    logged = pd.read_csv(art / "lesion_contrast.csv").set_index("scan").loc["P11"]
    assert logged["lesion_voxels"] == lesion.sum() and logged["mirror_voxels"] == mirror.sum() > 0
    assert logged["contrast_recovered"] == pytest.approx(expected.recovered, rel=1e-3, abs=1e-4)
    assert m["test_lesion_contrast_recovered"] == pytest.approx(
        expected.recovered, rel=1e-3, abs=1e-4
    )
    assert m["truth_lesion_cnr"] == pytest.approx(expected.cnr_true, rel=1e-4)
    assert m["truth_lesion_cnr"] > 2  # an infarct core is plain to see in the truth


def test_train_logs_regions_too(trained, store):
    m = Tracker(store["uri"]).get_run(trained["run_id"]).data.metrics
    for name in ("test_rmse_OEF_infarct_core", "floor_rmse_OEF_infarct_core", "test_rmse_OEF_WM"):
        assert np.isfinite(m[name]), name
    assert "truth_lesion_cnr" in m and "test_lesion_contrast_recovered" in m


def test_compare_prints_regions_beside_the_floor_and_the_truth(ccm_run, tmp_path, capsys):
    import json

    from oefray.cli import main

    run_id = ccm_run["results"]["run_id"]
    results = tmp_path / "compare.json"
    assert (
        main(["compare", run_id, "--tracking-uri", ccm_run["uri"], "--results", str(results)]) == 0
    )
    out = capsys.readouterr().out
    regions = json.loads(results.read_text())["regions"]
    assert [r["kind"] for r in regions] == ["baseline ccm", "floor", "truth"]
    m = Tracker(ccm_run["uri"]).get_run(run_id).data.metrics
    model, floor, truth = regions
    assert model["regions"]["infarct_core"][0] == m["test_rmse_OEF_infarct_core"]
    assert floor["regions"]["infarct_core"][0] == m["floor_rmse_OEF_infarct_core"]
    assert model["contrast_recovered"][0] == m["test_lesion_contrast_recovered"]
    assert truth["cnr"][0] == m["truth_lesion_cnr"] and truth["contrast_recovered"][0] == 1.0
    header = next(line for line in out.splitlines() if "contrast recovered" in line)
    assert "OEF infarct\\_core" in header and "OEF penumbra" in header and "OEF WM" in header
    assert out.count("| floor: training mean | floor |") == 2  # the RMSE table and this one
    # CSV: one table per stream; --regions gives this one
    args = ["compare", run_id, "--tracking-uri", ccm_run["uri"], "--format", "csv"]
    assert main([*args, "--results", str(results)]) == 0
    assert "contrast recovered" not in capsys.readouterr().out
    assert main([*args, "--regions", "--results", str(results)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("run,kind,OEF WM,") and rows[-1].startswith("truth,truth,")


def test_oversampling_repeats_lesion_samples_and_leaves_the_floor_alone(tiny_features):
    """--oversample 3: each training sample in a lesion three times (validation and test as
    they were), the scalers and so the floor fitted on every sample once."""
    from oefray.config import TrainConfig
    from oefray.orchestration.data import prepare_data

    once = prepare_data(
        tiny_features, TrainConfig(seed=1, train_subjects=("P3", "P11"), test_subjects=("P6",))
    )
    thrice = prepare_data(
        tiny_features,
        TrainConfig(seed=1, train_subjects=("P3", "P11"), test_subjects=("P6",), oversample=3),
    )
    n_lesion = once.counts["train_lesion_samples"]
    assert n_lesion > 10  # P11 has an infarct
    assert thrice.counts["train_windows"] == once.counts["train_windows"] + 2 * n_lesion
    assert thrice.counts["train_lesion_samples"] == 3 * n_lesion
    assert thrice.counts["val_windows"] == once.counts["val_windows"]
    val_once, val_thrice = (
        sorted(d.val.take_all(), key=lambda r: r["order"]) for d in (once, thrice)
    )
    np.testing.assert_array_equal(
        np.stack([r["x"] for r in val_thrice]), np.stack([r["x"] for r in val_once])
    )
    assert thrice.train.count() == thrice.counts["train_windows"]
    np.testing.assert_array_equal(thrice.y_scaler.mean, once.y_scaler.mean)
    assert thrice.counts["test_windows"] == once.counts["test_windows"]
    with pytest.raises(Exception, match="--oversample needs lesions"):
        prepare_data(
            tiny_features,
            TrainConfig(train_subjects=("P3", "P4"), test_subjects=("P6",), oversample=2),
        )
