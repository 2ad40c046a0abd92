"""``oefray qq`` for real: the `tiny` cohort (copied: qq writes into its derivatives), Ray local,
MLflow on sqlite; the maps checked against the truth, BIDS's validator and ``preprocess --truth``."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pyarrow.compute as pc
import pytest

from oefray.cli import main
from oefray.io import features as fio
from oefray.physics.constants import PARAMETERS, YA
from oefray.physics.qq import venous_oxygenation
from oefray.tracking import Tracker

from ..bids_validator import assert_valid
from ..conftest import error_lines

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MAPS = {
    "Y": "desc-Y_qq",
    "v": "desc-v_qq",
    "R2": "R2map",
    "S0": "S0map",
    "chi_nb": "desc-nb_Chimap",
    "OEF": "desc-OEF_qq",
}


def _image(path):
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


@pytest.fixture(scope="module")
def cohort(tiny_cohort, tmp_path_factory):
    root = tmp_path_factory.mktemp("qq") / "tiny"
    shutil.copytree(tiny_cohort, root)
    return root


@pytest.fixture(scope="module")
def cat_run(cohort, ray_local, tmp_path_factory):
    store = tmp_path_factory.mktemp("qq-store")
    uri = f"sqlite:///{store}/mlflow.db"
    argv = ["qq", str(cohort), "--oef-wb", "truth", "--tracking-uri", uri, "--experiment", "qq"]
    assert main(argv) == 0
    out = cohort / "derivatives" / "qq-cat"
    return {
        "uri": uri,
        "out": out,
        "argv": argv,
        "results": json.loads((out / "results.json").read_text()),
    }


def _truth(cohort, label, name):
    suffix = MAPS[name] if name != "OEF" else None
    if name == "OEF":
        return 100 * (
            1
            - _image(cohort / "derivatives/qq" / f"sub-{label}/anat/sub-{label}_desc-Y_qq.nii.gz")
            / YA
        )
    return _image(cohort / "derivatives/qq" / f"sub-{label}/anat/sub-{label}_{suffix}.nii.gz")


def test_cat_writes_a_valid_derivative_with_the_truths_mean_oef(cat_run, cohort):
    out = cat_run["out"]
    assert_valid(out)
    desc = json.loads((out / "dataset_description.json").read_text())
    generated = desc["GeneratedBy"][0]
    assert generated["Name"] == "oefray" and '"method": "cat"' in generated["Description"]
    record = json.loads((out / "qq.json").read_text())
    assert set(record["scans"]) == {"P3", "P4", "P6", "P11"}
    for label, scan in record["scans"].items():
        anat = out / f"sub-{label}" / "anat"
        for suffix in MAPS.values():
            assert (anat / f"sub-{label}_{suffix}.nii.gz").is_file()
        status = _image(anat / f"sub-{label}_desc-status_qq.nii.gz")
        mask = (
            _image(
                cohort / "derivatives/qsm" / f"sub-{label}/anat/sub-{label}_desc-brain_mask.nii.gz"
            )
            > 0
        )
        assert np.isfinite(status[mask]).all() and np.isnan(status[~mask]).all()
        # the OEF_wb prior holds as a hard constraint on the clusters, so on the brain's mean
        truth_oef = _truth(cohort, label, "OEF")[mask].mean()
        assert scan["oef_wb"] == pytest.approx(truth_oef, rel=1e-5)
        oef = _image(anat / f"sub-{label}_desc-OEF_qq.nii.gz")[mask]
        assert scan["mean_oef"] == pytest.approx(oef.mean(), rel=1e-5)
        assert abs(scan["mean_oef"] - truth_oef) < 0.5  # percentage points
        assert scan["oef_wb_source"].startswith("the simulation's truth")
        assert 1 <= scan["clusters"] <= 16 and scan["converged_fraction"] > 0.95
        # Y and v are the cluster's: as many distinct values as clusters at most
        y = _image(anat / f"sub-{label}_desc-Y_qq.nii.gz")[mask]
        assert len(np.unique(y)) <= scan["clusters"]
        # S0 on the data's scale: within 5 % of the truth's median
        s0 = _image(anat / f"sub-{label}_S0map.nii.gz")[mask]
        assert np.median(s0) == pytest.approx(
            np.median(_truth(cohort, label, "S0")[mask]), rel=0.05
        )


def test_the_run_logs_rmse_against_the_truth_beside_the_floor(cat_run, cohort):
    """The logged test RMSE (the test split, P6 and P11) recomputed from the maps and the truth;
    the floor from the training scans' mean."""
    tracker = Tracker(cat_run["uri"])
    run = tracker.get_run(cat_run["results"]["run_id"])
    m = run.data.metrics
    assert run.data.tags["oefray.command"] == "qq cat"
    assert run.data.params["evaluated_on"] == "P6,P11"
    preds, truths, train = {}, {}, []
    for label in ("P3", "P4", "P6", "P11"):
        mask = (
            _image(
                cohort / "derivatives/qsm" / f"sub-{label}/anat/sub-{label}_desc-brain_mask.nii.gz"
            )
            > 0
        )
        anat = cat_run["out"] / f"sub-{label}" / "anat"
        truth = {q: _truth(cohort, label, q)[mask] for q in MAPS}
        if label in ("P3", "P4"):
            train.append(truth)
            continue
        preds[label] = {q: _image(anat / f"sub-{label}_{MAPS[q]}.nii.gz")[mask] for q in MAPS}
        truths[label] = truth
    for q in MAPS:
        p = np.concatenate([preds[k][q] for k in preds])
        t = np.concatenate([truths[k][q] for k in truths])
        ok = np.isfinite(p)
        assert ok.mean() > 0.99
        expected = np.sqrt(np.mean((p[ok] - t[ok]) ** 2))
        assert m[f"test_rmse_{q}"] == pytest.approx(expected, rel=1e-4)  # float32 maps
        mean = np.concatenate([t_[q] for t_ in train]).mean()
        floor = np.sqrt(np.mean((t[ok] - mean) ** 2))
        assert m[f"floor_rmse_{q}"] == pytest.approx(floor, rel=1e-4)
    assert "test_rmse_OEF_WM" in m and "test_rmse_OEF_infarct_core" in m
    assert np.isfinite(m["test_lesion_contrast_recovered"]) and m["truth_lesion_cnr"] > 2
    art = tracker.download_artifacts(run.info.run_id, "", cat_run["out"].parent / "dl")
    assert (art / "qq_scans.csv").is_file() and (art / "rmse_per_region.csv").is_file()
    assert (art / "oef_maps.png").stat().st_size > 10_000
    # beside the other methods: compare's rows and the report page
    from oefray.orchestration.compare import compare_runs, region_rows
    from oefray.orchestration.report import build_report

    row = next(r for r in compare_runs([run.info.run_id], tracking_uri=cat_run["uri"]))
    assert row["kind"] == "qq cat" and row["OEF"][0] == m["test_rmse_OEF"]
    regions = region_rows([run.info.run_id], tracking_uri=cat_run["uri"])
    assert regions[0]["regions"]["infarct_core"][0] == m["test_rmse_OEF_infarct_core"]
    html, _ = build_report("qq", tracking_uri=cat_run["uri"])
    assert f'data-run-id="{run.info.run_id}"' in html and "Where the disease is" in html


def test_the_papers_regime_train_on_cats_maps_score_against_both(
    cat_run, cohort, tiny_features, tmp_path
):
    """qq -> preprocess --truth qq-cat (CAT's maps are the targets) -> train -> its test RMSE
    is against CAT's maps of the test subjects (the paper's Tables 1-3); evaluate on the
    features of the simulation's truth scores the same network against the truth."""
    features = tmp_path / "features"
    assert main(["preprocess", str(cohort), "--out", str(features), "--truth", "qq-cat"]) == 0
    table = fio.read_features(features, ["P6"])
    table = table.filter(pc.equal(table["status"], 0))
    idx = table["idx"].to_numpy()
    for q in PARAMETERS:
        qq_map = _image(cat_run["out"] / "sub-P6/anat" / f"sub-P6_{MAPS[q]}.nii.gz").ravel()
        np.testing.assert_allclose(table[q].to_numpy(), qq_map[idx], rtol=1e-6)
    uri = cat_run["uri"]
    trained = tmp_path / "train.json"
    argv = ["train", str(features), "--workers", "1", "--epochs", "1", "--seed", "2"]
    argv += ["--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--results", str(trained)]
    assert main(argv) == 0
    run_id = json.loads(trained.read_text())["run_id"]
    evaluated = tmp_path / "evaluate.json"
    argv = ["evaluate", run_id, "--features", str(tiny_features), "--tracking-uri", uri]
    assert main([*argv, "--results", str(evaluated)]) == 0
    tracker = Tracker(uri)
    against_cat = tracker.get_run(run_id).data.metrics
    against_truth = tracker.get_run(json.loads(evaluated.read_text())["run_id"]).data.metrics
    # two different references: the same network's test OEF RMSE differs between them
    assert np.isfinite(against_cat["test_rmse_OEF"]) and np.isfinite(against_truth["test_rmse_OEF"])
    assert against_cat["test_rmse_OEF"] != pytest.approx(against_truth["test_rmse_OEF"], rel=1e-3)


def test_a_rerun_skips_the_done_scans_and_other_options_are_refused(cat_run, cohort, capsys):
    out = cat_run["out"]
    y = out / "sub-P6/anat/sub-P6_desc-Y_qq.nii.gz"
    before = y.stat().st_mtime_ns
    assert main(cat_run["argv"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["completed"] == [] and sorted(again["skipped"]) == ["P11", "P3", "P4", "P6"]
    assert y.stat().st_mtime_ns == before
    capsys.readouterr()
    record = (out / "qq.json").read_text()
    assert main([*cat_run["argv"], "--w", "10"]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "qq.json" in lines[0] and "--force" in lines[0]
    assert (out / "qq.json").read_text() == record and y.stat().st_mtime_ns == before


def test_voxel_method_without_prior_and_a_sinus_roi(cohort, ray_local, tmp_path):
    """λ = 0: every voxel solved alone from the prior start; and OEF_wb from a venous-sinus ROI
    whose QSM is set to 0.3 ppm: 1 - Y(0.3 ppm) / Ya by the formula."""
    out = tmp_path / "voxel"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert (
        main(
            [
                "qq",
                str(cohort),
                "--method",
                "voxel",
                "--out",
                str(out),
                "--subjects",
                "P6",
                "--tracking-uri",
                uri,
            ]
        )
        == 0
    )
    scan = json.loads((out / "qq.json").read_text())["scans"]["P6"]
    assert scan["oef_wb"] is None and scan["g"] == 0.0
    assert json.loads((out / "qq.json").read_text())["options"]["shared"] == []
    # a sinus ROI: a 2x2x2 block of the QSM set to 0.3 ppm
    roi_root = cohort.parent / "with-sinus"
    shutil.copytree(cohort, roi_root)
    qsm_path = roi_root / "derivatives/qsm/sub-P6/anat/sub-P6_Chimap.nii.gz"
    img = nib.load(qsm_path)
    chi = np.asarray(img.dataobj, dtype=np.float32)
    roi = np.zeros(chi.shape, np.uint8)
    roi[9:11, 10:12, 7:9] = 1
    chi[roi > 0] = 0.3
    nib.save(nib.Nifti1Image(chi, img.affine, img.header), qsm_path)
    anat = roi_root / "derivatives/roi/sub-P6/anat"
    anat.mkdir(parents=True)
    nib.save(nib.Nifti1Image(roi, img.affine), anat / "sub-P6_label-sinus_mask.nii.gz")
    (roi_root / "derivatives/roi/dataset_description.json").write_text(
        json.dumps({"Name": "roi", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    out2 = tmp_path / "sinus"
    argv = ["qq", str(roi_root), "--sinus-mask", "roi", "--out", str(out2), "--subjects", "P6"]
    assert main([*argv, "--tracking-uri", uri]) == 0
    scan = json.loads((out2 / "qq.json").read_text())["scans"]["P6"]
    expected = 100 * (1 - venous_oxygenation(0.3) / YA)
    assert scan["oef_wb"] == pytest.approx(expected, rel=1e-5)
    assert "sinus" in scan["oef_wb_source"]


@pytest.mark.parametrize(
    ("extra", "code", "needle"),
    [
        (["--oef-wb", "1.5"], 2, "OEF_wb must be a fraction in (0, 1), got 1.5"),
        (["--oef-wb", "38"], 2, "a percentage?"),
        (["--oef-wb", "high"], 2, "expected a fraction in (0, 1) or 'truth'"),
        (["--sinus-mask", "nosuch"], 1, "no such derivative (--sinus-mask)"),
        (["--method", "fancy"], 2, "unknown QQ method"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cohort, tmp_path, capsys, extra, code, needle):
    out = tmp_path / "out"
    assert (
        main(
            [
                "qq",
                str(cohort),
                "--out",
                str(out),
                "--tracking-uri",
                f"sqlite:///{tmp_path}/m.db",
                *extra,
            ]
        )
        == code
    )
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and needle in lines[0]
    assert not out.exists()


def test_a_sinus_roi_off_the_grid_a_single_echo_and_no_qsm_are_one_line(cohort, tmp_path, capsys):
    root = tmp_path / "bad"
    shutil.copytree(cohort, root, ignore=shutil.ignore_patterns("qq-cat"))
    anat = root / "derivatives/roi/sub-P3/anat"
    anat.mkdir(parents=True)
    nib.save(
        nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)),
        anat / "sub-P3_label-sinus_mask.nii.gz",
    )
    out = tmp_path / "out"
    assert (
        main(["qq", str(root), "--sinus-mask", "roi", "--subjects", "P3", "--out", str(out)]) == 1
    )
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "sub-P3_label-sinus_mask.nii.gz" in lines[0] and "shape" in lines[0]
    assert not out.exists()
    for echo in (root / "sub-P6/anat").glob("sub-P6_echo-[2-8]_*"):  # a single echo
        echo.unlink()
    assert main(["qq", str(root), "--subjects", "P6", "--out", str(out)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "sub-P6/anat" in lines[0] and "need at least 2" in lines[0]
    assert not out.exists()
    (root / "derivatives/qsm/sub-P4/anat/sub-P4_Chimap.nii.gz").unlink()
    assert main(["qq", str(root), "--subjects", "P4", "--out", str(out)]) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "sub-P4" in lines[0] and "QSM" in lines[0].upper()
    assert not out.exists()


def test_a_folder_qq_did_not_write_is_refused_even_with_force(cohort, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        assert main(["qq", str(cohort), "--out", str(mine), "--subjects", "P3", *extra]) == 1
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "not an oefray qq output" in lines[0]
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
