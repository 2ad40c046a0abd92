"""The ensemble maps of ``tune --repeats`` without Ray or MLflow: the repeats' predicted maps
(named as now, or as oefray named them before) give per-voxel mean and spread maps named by
the same rules, each with its sidecar, and the uncertainty figure finds the OEF ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from oefray.io import maps, names
from oefray.orchestration import repeats

SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


class _Artifacts:
    """Stands in for the tracker: a child run's artifacts are ``<root>/<run id>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def download_artifacts(self, run_id: str, path: str, dst: Path) -> Path:
        shutil.copytree(self.root / run_id / path, Path(dst) / path)
        return Path(dst) / path


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
    repeats._ensemble_maps(_Artifacts(tmp_path), ["child0", "child1"], out)
    written = sorted(p.name for p in (out / "maps").glob("*.nii.gz"))
    assert len(written) == 2 * 6 * 2 and "sub-P6_desc-nbensstd_Chimap.nii.gz" in written
    for label in ("P6", "P11"):
        for name in names.MAP_NAMES:
            stack = np.stack([values[i, label][name].astype(np.float32) for i in range(2)])
            mean = maps.read_map(maps.map_path(out / "maps", label, name, suffix="ensmean"))
            std = maps.read_map(maps.map_path(out / "maps", label, name, suffix="ensstd"))
            np.testing.assert_allclose(mean.reshape(-1)[idx], stack.mean(axis=0), rtol=1e-5)
            np.testing.assert_allclose(
                std.reshape(-1)[idx], stack.std(axis=0, ddof=1), rtol=1e-5, atol=1e-7
            )
    sidecar = json.loads((out / "maps" / "sub-P6_desc-ensstd_R2map.json").read_text())
    assert sidecar["Units"] == "1/s" and "standard deviation" in sidecar["Description"]
    figure = repeats._uncertainty_figure(out / "maps", tmp_path / "uncertainty.png")
    assert figure.stat().st_size > 10_000
