"""The ensemble maps of ``tune --repeats`` without Ray or MLflow (:mod:`oefray.orchestration.
ensemble`): the repeats' predicted maps of a scan (named as now, or as oefray named them before)
give per-voxel mean and spread maps named by the same rules, each with its sidecar; the OEF
spread's per-region parts add up to the summary of the voxels gathered; and the uncertainty
figure draws the OEF mean and spread."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from oefray.errors import OefrayError
from oefray.io import maps, names
from oefray.io.manifest import SubjectRecord
from oefray.ml.region_stats import summarize_parts
from oefray.orchestration.ensemble import ensemble_maps, spread_parts
from oefray.reports import plot_uncertainty_maps

SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


class _Artifacts:
    """Stands in for MLflow's client: a child run's artifacts are ``<root>/<run id>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        target = Path(dst) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / run_id / path, target)  # FileNotFoundError when missing
        return str(target)


def test_ensemble_maps_of_new_and_old_names(tmp_path):
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(int(np.prod(SHAPE)), 50, replace=False))
    values = {}
    for i in range(2):
        folder = tmp_path / f"child{i}" / "maps"
        for label in ("P6", "P11"):
            values[i, label] = {n: rng.normal(size=idx.size) for n in names.MAP_NAMES}
            maps.write_prediction_maps(folder, label, values[i, label], idx, SHAPE, AFFINE)
            if i == 1:  # a repeat whose maps carry the names of before (sub-P6_desc-R2_pred)
                for name in names.MAP_NAMES:
                    old = names.legacy_stem(label, name, "pred") + ".nii.gz"
                    maps.map_path(folder, label, name).rename(folder / old)
    out = tmp_path / "ensemble"
    panels = []
    for label in ("P6", "P11"):
        got = ensemble_maps(_Artifacts(tmp_path), ["child0", "child1"], label, out, tmp_path / "dl")
        panels.append((label, got[0][:, :, 2], got[1][:, :, 2]))
        for name in names.MAP_NAMES:
            stack = np.stack([values[i, label][name].astype(np.float32) for i in range(2)])
            mean = maps.read_map(maps.map_path(out, label, name, suffix="ensmean"))
            std = maps.read_map(maps.map_path(out, label, name, suffix="ensstd"))
            np.testing.assert_allclose(mean.reshape(-1)[idx], stack.mean(axis=0), rtol=1e-5)
            np.testing.assert_allclose(
                std.reshape(-1)[idx], stack.std(axis=0, ddof=1), rtol=1e-5, atol=1e-7
            )
            if name == "OEF":  # the volumes returned are the maps written
                np.testing.assert_array_equal(got[0], mean)
                np.testing.assert_array_equal(got[1], std)
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(written) == 2 * 6 * 2 and "sub-P6_desc-nbensstd_Chimap.nii.gz" in written
    sidecar = json.loads((out / "sub-P6_desc-ensstd_R2map.json").read_text())
    assert sidecar["Units"] == "1/s" and "standard deviation" in sidecar["Description"]
    figure = plot_uncertainty_maps(panels, tmp_path / "uncertainty.png")
    assert figure.stat().st_size > 10_000
    # a label that is not one (text read from a manifest) names no file: nothing is read
    with pytest.raises(OefrayError, match="label must be a BIDS subject label"):
        ensemble_maps(_Artifacts(tmp_path), ["child0"], "../P6", out, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(OefrayError, match="^run child2 has no map maps/sub-P6_desc-Y_pred.nii.gz$"):
        ensemble_maps(_Artifacts(tmp_path), ["child0", "child2"], "P6", out, tmp_path / "dl")


def test_spread_parts_are_the_regions_of_the_scan_with_lesion_and_mirror(tmp_path):
    """Tissue classes by code, the lesion and its mirror region counted again: the summary of
    the parts is the mean (exact) and median (to a bin) of the voxels of each region."""
    from oefray.ml.regions import scan_mirror

    rng = np.random.default_rng(1)
    shape = (12, 6, 4)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-11.0, 0.0, 0.0]  # x = 0 midway across the grid
    idx = np.arange(int(np.prod(shape)))
    ijk = np.column_stack(np.unravel_index(idx, shape))
    lesion = (ijk[:, 0] < 3) & (ijk[:, 1] < 3)
    tissue = np.where(lesion, 6, np.where(ijk[:, 2] < 2, 3, 4))
    spread = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    rows = pa.table(
        {"idx": idx, "tissue": tissue.astype(np.int16), "lesion": lesion.astype(np.uint8)}
    )
    record = SubjectRecord(
        rows=len(idx),
        checksum="0" * 64,
        status_counts={},
        split="test",
        shape=shape,
        affine=tuple(tuple(r) for r in affine.tolist()),
        echo_times_s=(0.005, 0.01),
        label_names={"3": "cortical GM", "4": "WM", "6": "infarct core"},
    )
    got = summarize_parts(spread_parts(spread, rows, record))
    values = spread.ravel()
    mirror = scan_mirror(idx, lesion, tissue == 6, shape, affine)
    assert mirror.any()
    expected = {
        "cortical GM": tissue == 3,
        "WM": tissue == 4,
        "infarct core": tissue == 6,
        "lesion": lesion,
        "lesion mirror": mirror,
    }
    assert list(got) == list(expected)
    for region, sel in expected.items():
        assert got[region]["voxels"] == sel.sum()
        assert got[region]["mean"] == pytest.approx(values[sel].astype(np.float64).mean(), rel=1e-9)
        assert abs(got[region]["median"] - np.median(values[sel])) <= 0.01
