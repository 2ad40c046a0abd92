"""Batch inference on Ray Data (:mod:`oefray.orchestration.inference`) for real: the `trained`
run's model (conftest.py) on an actor pool over the `tiny` features, against the driver path it
replaced: the windows of the test scans gathered, predicted on the driver
(:func:`~oefray.orchestration.inference.predict_windows`) and evaluated by the array functions
(:func:`~oefray.ml.metrics.per_subject_rmse`, :func:`~oefray.ml.metrics.pooled_rmse`,
:func:`~oefray.ml.regions.evaluate_regions`), which stay the independent reference here.

Tolerances: the sums path against the array path on the same predictions, rtol 1e-9 (float64
sums against float64 means; the floor's ``sumsq - 2 m sum + n m^2`` loses at most a few digits
of the 16 to cancellation); the workers' maps against the driver's, exactly (the same float32
network on the same inputs)."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import OefrayError
from oefray.io import features as fio
from oefray.io.manifest import FeaturesManifest
from oefray.io.maps import map_path, read_map, sidecar_path
from oefray.io.names import MAP_NAMES
from oefray.ml.metrics import (
    per_subject_rmse,
    per_subject_rmse_from_sums,
    pooled_rmse,
    pooled_rmse_from_sums,
)
from oefray.ml.regions import (
    POOLED_REGION,
    evaluate_regions,
    floor_from_sums,
    merge_sums,
    report_from_sums,
)
from oefray.ml.windows import make_windows_table
from oefray.orchestration.evaluate import load_bundle, log_outputs
from oefray.orchestration.inference import (
    MAPS_ARTIFACT_DIR,
    InferenceResult,
    MapsTarget,
    ScanOutput,
    predict_windows,
    run_inference,
    scan_output,
)
from oefray.physics.constants import PARAMETERS
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCANS = ("P3", "P4", "P6", "P11")
TEST = ("P6", "P11")
RTOL = 1e-9


@pytest.fixture(scope="module")
def bundle(trained, store):
    return load_bundle(Tracker(store["uri"]), trained["run_id"])


@pytest.fixture(scope="module")
def driver(bundle, tiny_features):
    """The driver path: every scan's windows gathered on the driver and predicted there, scan
    by scan (the network's batches as a worker's: a batch of other rows may round a float32
    output differently in its last bit)."""
    windows = make_windows_table(fio.read_features(tiny_features, list(SCANS)), bundle.window)
    pred = np.concatenate(
        [predict_windows(bundle, windows.x[windows.subject == key]) for key in SCANS]
    )
    return windows, pred


@pytest.fixture(scope="module")
def inferred(bundle, tiny_features, ray_local, tmp_path_factory):
    """The four scans on ONE actor (so that it must reuse its model), maps into a folder."""
    out = tmp_path_factory.mktemp("inference") / "maps"
    lines = []
    result = run_inference(
        bundle,
        tiny_features,
        list(SCANS),
        MapsTarget.folder(out),
        with_targets=True,
        actors=1,
        progress=lambda done, total, msg: lines.append((done, total, msg)),
    )
    return {"result": result, "out": out, "progress": lines}


def _by_scan(windows, pred):
    for key in dict.fromkeys(windows.subject):
        sel = windows.subject == key
        yield key, sel, pred[sel]


def _driver_outputs(driver, manifest, folder, keys=SCANS) -> dict[str, ScanOutput]:
    """:func:`scan_output` of each scan of ``keys`` on the driver's predictions."""
    windows, pred = driver
    return {
        key: scan_output(
            key,
            manifest.subjects[key],
            p,
            windows.y[sel],
            windows.idx[sel],
            {k: v[sel] for k, v in windows.labels.items()},
            folder,
        )
        for key, sel, p in _by_scan(windows, pred)
        if key in keys
    }


def test_sums_give_the_array_paths_tables(driver, tiny_features, tmp_path):
    """Table 1 (per patient, Avg.), pooled, floor, per region and lesion contrast from per-scan
    sums equal the array functions on the same predictions (rtol 1e-9)."""
    windows, pred = driver
    manifest = FeaturesManifest.load(tiny_features)
    outputs = _driver_outputs(driver, manifest, tmp_path)
    mean = np.asarray([0.55, 0.035, 14.0, 1.1e3, 0.05])  # any training mean (the floor's)
    totals = {k: o.sums[POOLED_REGION] for k, o in outputs.items()}
    rows, columns = per_subject_rmse_from_sums(totals)
    ref_rows, ref_columns = per_subject_rmse(pred, windows.y, windows.subject)
    assert rows == ref_rows == [*SCANS, "Avg."]
    for name, values in ref_columns.items():
        np.testing.assert_allclose(columns[name], values, rtol=RTOL, err_msg=name)
    pooled = pooled_rmse_from_sums(totals)
    reference = pooled_rmse(pred, windows.y)
    assert list(pooled) == list(reference)
    np.testing.assert_allclose(list(pooled.values()), list(reference.values()), rtol=RTOL)
    floor = floor_from_sums(merge_sums(*(o.sums for o in outputs.values())), mean)
    floor_ref = pooled_rmse(np.broadcast_to(mean, windows.y.shape), windows.y)
    for q, v in floor_ref.items():
        assert floor[POOLED_REGION][q] == pytest.approx(v, rel=RTOL), q

    report = report_from_sums(
        {k: o.sums for k, o in outputs.items()},
        mean,
        {k: o.contrast for k, o in outputs.items() if o.contrast is not None},
    )
    grids = {k: (r.shape, r.affine) for k, r in manifest.subjects.items()}
    names = {int(c): n for c, n in manifest.subjects["P3"].label_names.items()}
    ref = evaluate_regions(
        pred, windows.y, mean, windows.subject, windows.idx, windows.labels, grids, names
    )
    assert set(report.rmse) == set(ref.rmse) and "lesion" in ref.rmse and "WM" in ref.rmse
    for mine, theirs in ((report.rmse, ref.rmse), (report.floor, ref.floor)):
        for region, values in theirs.items():
            assert mine[region]["voxels"] == values["voxels"], region
            for q, v in values.items():
                assert mine[region][q] == pytest.approx(v, rel=RTOL), (region, q)
    assert set(report.contrast) == set(ref.contrast) == {"P11"}
    for field, value in ref.contrast["P11"].to_dict().items():
        assert report.contrast["P11"].to_dict()[field] == pytest.approx(value, rel=RTOL), field
    for k, v in ref.contrast_summary().items():
        assert report.contrast_summary()[k] == pytest.approx(v, rel=RTOL), k


def test_workers_maps_equal_the_driver_path(inferred, driver, tiny_features, tmp_path):
    """Each scan's maps, written by a worker, hold the driver's own prediction voxel for voxel,
    with the same file names and sidecars; the workers' sums equal the driver's."""
    windows, pred = driver
    manifest = FeaturesManifest.load(tiny_features)
    result: InferenceResult = inferred["result"]
    outputs = _driver_outputs(driver, manifest, tmp_path / "driver")
    y = PARAMETERS.index("Y")
    for key, sel, p in _by_scan(windows, pred):
        anat = inferred["out"] / f"sub-{key}" / "anat"
        record = manifest.subjects[key]
        assert sorted(f.name for f in anat.iterdir()) == sorted(
            f.name for f in (tmp_path / "driver").iterdir() if f.name.startswith(f"sub-{key}_")
        )
        for name in MAP_NAMES:
            worker = nib.load(map_path(anat, key, name))
            ours = nib.load(map_path(tmp_path / "driver", key, name))
            np.testing.assert_array_equal(np.asarray(worker.dataobj), np.asarray(ours.dataobj))
            np.testing.assert_array_equal(worker.affine, ours.affine)
            assert worker.shape == tuple(record.shape)
            assert (
                sidecar_path(map_path(anat, key, name)).read_text()
                == sidecar_path(map_path(tmp_path / "driver", key, name)).read_text()
            )
        # and the prediction itself: Y at each window's anchor, NaN everywhere else
        y_map = read_map(map_path(anat, key, "Y")).ravel()
        np.testing.assert_array_equal(y_map[windows.idx[sel]], p[:, y])
        assert np.isnan(y_map).sum() == y_map.size - sel.sum()
        got, expected = result.scans[key], outputs[key]
        assert got.windows == expected.windows == sel.sum()
        assert (
            got.voxels == record.rows and got.excluded + got.no_window + got.windows == got.voxels
        )
        for region, s in expected.sums.items():
            assert got.sums[region]["n"] == s["n"], (key, region)
            np.testing.assert_allclose(got.sums[region]["sse"], s["sse"], rtol=RTOL)
            np.testing.assert_allclose(got.sums[region]["sum"], s["sum"], rtol=RTOL)
        np.testing.assert_array_equal(got.pred_slice, expected.pred_slice)
        np.testing.assert_array_equal(got.truth_slice, expected.truth_slice)
        assert (got.outline is None) == (expected.outline is None)
    assert result.windows == len(windows)
    # one progress line per scan, counting up
    assert [(d, t) for d, t, _ in inferred["progress"]] == [(i, 4) for i in range(1, 5)]


def test_the_model_is_loaded_once_per_actor(inferred):
    """Four scans on one actor: one worker process, which had loaded the model once for each."""
    workers = inferred["result"].workers()
    assert len(workers) == 1
    ((pid, loads),) = workers.items()
    assert pid != os.getpid() and loads == {1}


def test_the_driver_holds_no_window_arrays(inferred, tiny_features):
    """What reaches the driver: counts, sums (6 numbers a region), one 2-D slice per figure
    panel; no array of windows, predictions or truth."""
    manifest = FeaturesManifest.load(tiny_features)
    arrays = []

    def walk(value):
        if isinstance(value, np.ndarray):
            arrays.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                walk(getattr(value, name))

    result = inferred["result"]
    walk(result)
    for key, out in result.scans.items():
        x, y, _ = manifest.subjects[key].shape
        for s in out.sums.values():
            assert len(s["sse"]) == len(s["sum"]) == len(s["sumsq"]) == len(PARAMETERS) + 1
        for a in (out.pred_slice, out.truth_slice):
            assert a.shape == (x, y)
    assert arrays and all(a.ndim == 2 for a in arrays)
    assert sum(a.size for a in arrays) < result.windows


def test_an_evaluation_logs_what_the_driver_path_logs(trained, store, driver, tiny_features):
    """The training run (its maps uploaded by the workers, its tables from their sums) against
    the driver's predictions, mapped and logged into a new run: the same artifact names under
    maps/, the same Table 1 and test metrics."""
    tracker = Tracker(store["uri"])
    manifest = FeaturesManifest.load(tiny_features)
    bundle_mean = load_bundle(tracker, trained["run_id"]).y_scaler.mean
    scratch = store["root"] / "driver-path"
    with tracker.tracked_run("test-inference", run_name="driver-path") as run:
        outputs = _driver_outputs(driver, manifest, scratch / "maps", keys=TEST)
        run.log_artifact_dir(scratch / "maps", MAPS_ARTIFACT_DIR)
        table, logged = log_outputs(run, outputs, bundle_mean, scratch)
    assert tracker.list_artifacts(run.run_id, "maps") == tracker.list_artifacts(
        trained["run_id"], "maps"
    )
    assert len(tracker.list_artifacts(run.run_id, "maps")) == 2 * len(TEST) * len(MAP_NAMES)
    logged_by_train = tracker.get_run(trained["run_id"]).data.metrics
    for name, value in logged.items():
        assert logged_by_train[name] == pytest.approx(value, rel=RTOL), name
    assert list(table.index) == [*TEST, "Avg."]


def test_bad_scans_are_one_line(bundle, tiny_features, ray_local, tmp_path):
    maps = MapsTarget.folder(tmp_path / "maps")
    with pytest.raises(OefrayError, match="scan\\(s\\) not in the features: P99$"):
        run_inference(bundle, tiny_features, ["P6", "P99"], maps, with_targets=True)
    with pytest.raises(OefrayError, match="no scan to predict$"):
        run_inference(bundle, tiny_features, [], maps, with_targets=True)
    # a features file changed since preprocess: the worker's one line reaches the driver
    copy = tmp_path / "features"
    shutil.copytree(tiny_features, copy)
    name = next(iter(json.loads((copy / "_manifest.json").read_text())["subjects"]["P6"]["files"]))
    victim = fio.scan_dir(copy, "P6") / name
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(OefrayError) as caught:
        run_inference(bundle, copy, ["P6"], maps, with_targets=True, actors=1)
    assert str(caught.value).startswith(f"{victim}: content does not match its checksum")
    assert "\n" not in str(caught.value)
