"""The ensemble of ``tune --repeats``, scan by scan on Ray Data: per-voxel mean and spread of the
repeats' predicted maps, the spread of OEF per region, and the uncertainty figure.

One Ray Data task per test scan (:func:`scan_ensemble`) downloads that scan's predicted maps
from every repeat's MLflow run, writes the ``ensmean`` and ``ensstd`` maps (named by
:mod:`oefray.io.names`, each with its sidecar) into the parent run's ``maps/``, and returns one
small row: the OEF spread's per-region parts (:mod:`oefray.ml.region_stats`: each tissue class,
the lesion and its mirror region) and, for a scan the figure shows, the middle slice of the OEF
mean and spread. :func:`run_ensemble` merges the parts as the rows arrive: the driver holds no
map and no voxel of the cohort, and draws the first
:data:`~oefray.orchestration.evaluate.FIGURE_SCANS` test scans.

Call :func:`run_ensemble` inside :func:`oefray.orchestration.runtime.ray_runtime`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oefray.errors import OefrayError

#: Region codes of the lesion and its mirror region in the spread's parts (beside the tissue
#: classes' own codes, which are >= 0).
LESION_CODE, MIRROR_CODE = -2, -3


def ensemble_maps(
    artifacts: Any, children: Sequence[str], label: str, out: Path, scratch: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std across the repeats of each predicted map of one scan, written into
    ``out`` (kinds ``ensmean`` and ``ensstd``) with their sidecars.

    Parameters
    ----------
    artifacts : MlflowClient-like
        ``download_artifacts(run_id, path, dst_path)`` of the repeats' runs.
    children : sequence of str
        The repeats' run ids.
    label : str
        The scan's label in its map names (``P6``, ``P6_ses-01``; :func:`oefray.io.names.map_stem`).
        A repeat's map named as oefray named maps before (:func:`oefray.io.names.legacy_stem`)
        is read too.
    out, scratch : Path
        Where the ensemble maps go; where the repeats' maps are downloaded.

    Returns
    -------
    (ndarray, ndarray)
        The OEF mean and std volumes (NaN where a repeat has no value).

    Raises
    ------
    OefrayError
        A label that is not one, or a repeat without the scan's map.
    """
    import nibabel as nib

    from oefray.io.maps import scatter_map, write_named_map
    from oefray.io.names import MAP_NAMES, check_label

    try:  # it names the files read and written: checked before any of them
        check_label(label)
    except ValueError as exc:
        raise OefrayError(None, str(exc)) from None
    oef: tuple[np.ndarray, np.ndarray] | None = None
    for name in MAP_NAMES:
        imgs = []
        for i, run_id in enumerate(children):
            imgs.append(nib.load(_download(artifacts, run_id, label, name, scratch / str(i))))
        stack = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in imgs])
        inside = np.isfinite(stack).all(axis=0)
        idx = np.flatnonzero(inside.ravel())
        flat = stack.reshape(len(imgs), -1)[:, idx]
        stats = {
            "ensmean": flat.mean(axis=0),
            "ensstd": flat.std(axis=0, ddof=1) if len(imgs) > 1 else np.zeros(len(idx)),
        }
        shape, affine = imgs[0].shape, imgs[0].affine
        for kind, values in stats.items():
            write_named_map(out, label, name, values, idx, shape, affine, kind=kind)
        if name == "OEF":
            mean, std = (scatter_map(v, idx, shape) for v in stats.values())
            oef = (mean, std)
    assert oef is not None  # OEF is among MAP_NAMES
    return oef


def _download(artifacts: Any, run_id: str, label: str, name: str, dst: Path) -> str:
    """One repeat's predicted map ``name`` of scan ``label``: its current name, else the name
    oefray gave maps before."""
    from mlflow.exceptions import MlflowException

    from oefray.io.names import legacy_stem, map_stem
    from oefray.orchestration.inference import MAPS_ARTIFACT_DIR

    dst.mkdir(parents=True, exist_ok=True)
    tried = []
    for stem in dict.fromkeys((map_stem(label, name, "pred"), legacy_stem(label, name, "pred"))):
        path = f"{MAPS_ARTIFACT_DIR}/{stem}.nii.gz"
        tried.append(path)
        try:
            return str(artifacts.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OefrayError, OSError):
            continue
    raise OefrayError(None, f"run {run_id} has no map {' or '.join(tried)}")


def spread_parts(spread: np.ndarray, rows, record) -> dict[str, Any]:
    """The OEF spread's per-region parts of one scan (:func:`oefray.ml.region_stats.
    region_parts`): its good-fit voxels ``rows`` (features with ``idx`` and its labels) by tissue
    class, and the lesion and its mirror region counted again under their own names."""
    from oefray.ml.region_stats import merge_parts, region_parts
    from oefray.ml.regions import ABNORMAL_CLASSES, scan_mirror

    idx = rows["idx"].to_numpy()
    values = spread.ravel()[idx]
    names = {int(c): n for c, n in record.label_names.items()}
    columns = rows.column_names
    tissue = rows["tissue"].to_numpy() if "tissue" in columns else np.full(len(idx), -1)
    parts = region_parts(values, tissue.astype(np.int64), names)
    if "lesion" in columns:
        lesion = rows["lesion"].to_numpy() > 0
        bad = [c for c, n in names.items() if n in ABNORMAL_CLASSES]
        abnormal = lesion | np.isin(tissue, bad)
        mirror = scan_mirror(idx, lesion, abnormal, record.shape, record.affine)
        codes = np.where(lesion, LESION_CODE, np.where(mirror, MIRROR_CODE, 0))
        extra = region_parts(values, codes, {LESION_CODE: "lesion", MIRROR_CODE: "lesion mirror"})
        merge_parts(parts, extra)
    return parts


def scan_ensemble(
    batch: dict[str, np.ndarray],
    *,
    tracking_uri: str,
    children: list[str],
    parent: str,
    features: str,
    figure: list[str],
) -> dict[str, np.ndarray]:
    """Ray Data batch function: each scan of ``batch`` (column ``scan``) — its ensemble maps
    logged to the ``parent`` run, its spread parts (JSON) and, for a scan of ``figure``, the OEF
    mean and spread on its middle slice; a scan that fails gives its one line in ``error``."""
    import pyarrow.compute as pc
    from mlflow.tracking import MlflowClient

    from oefray.io import features as fio
    from oefray.io.manifest import FeaturesManifest, scan_prefix
    from oefray.orchestration.inference import MAPS_ARTIFACT_DIR

    client = MlflowClient(tracking_uri)
    manifest = FeaturesManifest.load(features)
    rows: dict[str, list] = {k: [] for k in ("scan", "parts", "error", "mean", "std")}
    for key in map(str, batch["scan"]):
        record = manifest.subjects[key]
        empty = np.full((1, 1), np.nan, np.float32)
        mean_slice, std_slice, parts, error = empty, empty, {}, ""
        try:
            with tempfile.TemporaryDirectory(prefix="oefray-ensemble-") as tmp:
                out = Path(tmp) / "maps"
                label = scan_prefix(key, record).removeprefix("sub-")
                mean, std = ensemble_maps(client, children, label, out, Path(tmp) / "runs")
                client.log_artifacts(parent, str(out), MAPS_ARTIFACT_DIR)
            good = fio.read_features(features, [key])
            parts = spread_parts(std, good.filter(pc.equal(good["status"], 0)), record)
            if key in figure:
                z = mean.shape[2] // 2
                mean_slice, std_slice = mean[:, :, z], std[:, :, z]
        except OefrayError as exc:
            error = str(exc)
        rows["scan"].append(key)
        rows["parts"].append(json.dumps(parts))
        rows["error"].append(error)
        rows["mean"].append(mean_slice)
        rows["std"].append(std_slice)
    # batch_size=1: one scan, so the slices of a row stack whatever the scans' grids
    return {k: np.stack(v) if k in ("mean", "std") else np.array(v) for k, v in rows.items()}


@dataclass
class Ensemble:
    """What the driver keeps of the ensemble: the spread of OEF per region and the figure."""

    spread: Any  # pandas DataFrame: region, mean, median, voxels
    figure: Path


def run_ensemble(
    tracking_uri: str,
    children: list[str],
    parent: str,
    features: str | Path,
    test: list[str],
    out_dir: Path,
) -> Ensemble:
    """The ensemble of the repeats ``children`` over the ``test`` scans (the module's
    docstring); the maps go to the ``parent`` run, the figure to ``out_dir``.

    Raises
    ------
    OefrayError
        A scan that fails (a repeat without its map, a features file that fails its checksum).
    """
    import pandas as pd

    from oefray.ml.region_stats import merge_parts, summarize_parts
    from oefray.orchestration.data import scan_keys_dataset
    from oefray.orchestration.evaluate import FIGURE_SCANS
    from oefray.reports import plot_uncertainty_maps

    figure = test[:FIGURE_SCANS]
    ds = scan_keys_dataset([{"scan": k} for k in test]).map_batches(
        scan_ensemble,
        batch_size=1,
        fn_kwargs={
            "tracking_uri": tracking_uri,
            "children": list(children),
            "parent": parent,
            "features": str(Path(features).resolve()),
            "figure": figure,
        },
    )
    parts: dict[str, Any] = {}
    panels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    done: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, key in enumerate(map(str, batch["scan"])):
            if str(batch["error"][i]):
                raise OefrayError(None, str(batch["error"][i]))
            if key in done:  # a retried task's repeat: its parts are in already
                continue
            done.add(key)
            merge_parts(parts, json.loads(str(batch["parts"][i])))
            if key in figure:
                panels[key] = (np.asarray(batch["mean"][i]), np.asarray(batch["std"][i]))
    # the tissue classes first, then the lesion and its mirror region
    order = [r for r in parts if r not in ("lesion", "lesion mirror")]
    order += [r for r in ("lesion", "lesion mirror") if r in parts]
    summary = summarize_parts({r: parts[r] for r in order})
    spread = pd.DataFrame(
        [{"region": r, **m} for r, m in summary.items()],
        columns=["region", "mean", "median", "voxels"],
    )
    path = plot_uncertainty_maps(
        [(k, *panels[k]) for k in figure if k in panels], out_dir / "uncertainty.png"
    )
    return Ensemble(spread=spread, figure=path)
