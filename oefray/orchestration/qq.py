"""``oefray qq``: reference QQ maps of a user's own data — the QQ inversion, voxel by voxel or
with CAT, on Ray Data — written as a BIDS derivative that ``preprocess --truth`` takes.

Per scan (one at a time; its slabs in parallel):

1. **Read** (one Ray Data pass, materialised in the object store for the passes below): each
   slab's brain voxels (magnitudes, QSM, C-order index, ground truth and labels where present)
   and a seeded per-voxel draw that marks about :attr:`QQConfig.sample` voxels of the scan.
2. **Global step, on the driver, on the sample only**: the CAT clustering
   (:func:`oefray.ml.cat.fit_clusters`), and — with a whole-brain OEF prior — the outer rounds of
   :func:`oefray.physics.qq_solve.solve_qq_prior` that find the multiplier ``g``. On a sample of
   ``n`` of the scan's ``N`` voxels the prior weight is ``lam * n / N``, so that ``g = 2 lam (mean
   OEF - OEF_wb) / N`` is the scan's (the sample's mean stands in for the brain's; its standard
   error is the OEF spread over ``sqrt(n)``, ~0.1 percentage point for 20,000 voxels).
3. **Cluster solutions** (CAT): one pass sums each cluster's echo-1-normalised signals and QSM
   over every voxel of the scan (:func:`oefray.ml.cat.cluster_sums`, reduced on the driver: k x E
   numbers), and each cluster's mean is solved (:func:`oefray.ml.cat.solve_clusters`).
4. **Voxel solve**: one pass solves every voxel (:func:`oefray.physics.qq_solve.solve_qq`, at
   ``g``, from its cluster's solution or the prior start) and writes its slab's results into a
   staging folder; a Ray task assembles the scan's maps from them and computes its sums against
   the ground truth, if any (:func:`oefray.ml.regions.region_sums`): the driver never holds a
   scan's voxels, only samples and sums.
5. **Commit**: the scan's files move into place (a new scan folder by one rename) and the record
   ``qq.json`` is rewritten; an interrupted run loses only the scan in flight, a re-run with the
   same options skips the scans that are done.

The qBOLD residual is computed on the echo-1-normalised scale (each voxel's echoes divided by its
echo 1); ``S0`` is written on the scale of the data (times echo 1 again), as the simulated truth
is. MLflow gets one run (``qq <method>``) with the RMSE of every map against the truth where the
dataset has one (the test split's scans where ``participants.tsv`` has a split, beside the floor
of the training scans' mean), per region and lesion contrast, and the per-scan table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray import __version__
from oefray.config import QQConfig
from oefray.errors import DatasetError, OefrayError
from oefray.io.bids import ScanFiles
from oefray.physics.constants import PARAMETERS, YA

log = logging.getLogger(__name__)

#: The record of the scans done and the options they were made with.
RECORD = "qq.json"
#: The kind of the maps (the name part ``_qq``, as the simulated truth: ``preprocess --truth``).
KIND = "qq"
#: Where every voxel starts without CAT (fraction, fraction, 1/s, echo-1-normalised, ppm): the
#: middle of the healthy-brain ranges of the simulator (:mod:`oefray.physics.parameter_maps`).
PRIOR_START: dict[str, float] = {"Y": 0.6, "v": 0.03, "R2": 15.0, "S0": 1.2, "chi_nb": 0.0}
#: Extra per-voxel maps: the data misfit (cost without the prior term) and the solver status.
EXTRA_MAPS: dict[str, str] = {
    "cost": "QQ data misfit 0.5 (w (F_QSM - chi)^2 + sum_t (S - S_model)^2), echo-1-normalised",
    "status": "QQ solver status (oefray.physics.qq_solve.QQStatus: 0-2 converged, 3 iteration "
    "limit, 4-5 non-finite input)",
}

ProgressFn = Callable[[str], None]

#: Record entries of a scan that are not columns of ``qq_scans.csv``.
_NOT_IN_TABLE = ("files", "bic", "sums", "contrast")


@dataclass
class QQResult:
    """What a ``qq`` run did (serialised into ``results.json``)."""

    out: str
    dataset: str
    method: str
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    scans: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: Per region (names): ``rmse`` and ``floor`` (as :func:`oefray.ml.regions.rmse_from_sums`,
    #: ``all`` pooled), ``contrast`` (each lesion's), where the dataset has a truth.
    regions: dict[str, Any] | None = None
    evaluated_on: list[str] = field(default_factory=list)
    run_id: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "qq",
            "out": self.out,
            "dataset": self.dataset,
            "method": self.method,
            "completed": self.completed,
            "skipped": self.skipped,
            "scans": self.scans,
            "metrics": self.metrics,
            "evaluated_on": self.evaluated_on,
            "run_id": self.run_id,
            "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------------------------
# Ray Data bodies (plain data in and out)
# --------------------------------------------------------------------------------------------


def _read_voxels(
    batch: dict[str, np.ndarray], *, scan: ScanFiles, slab: int, rate: float, seed: int
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` body: the brain voxels of each slab of the batch's item, one block per
    slab, with a seeded ``sample`` draw (probability ``rate``)."""
    from oefray.io.slabs import slab_bounds
    from oefray.orchestration.preprocess import read_slabs

    for z0, z1 in zip(batch["z0"], batch["z1"], strict=True):
        for a, _, voxels in read_slabs(scan, slab_bounds(int(z0), int(z1), slab), 1):
            if isinstance(voxels, OefrayError):
                raise voxels
            xs, ys, zs = np.nonzero(voxels.mask)
            if not len(xs):
                continue  # a slab without brain voxels (an empty block has no tensor type)
            idx = np.ravel_multi_index((xs, ys, zs + a), scan.shape).astype(np.int64)
            rng = np.random.default_rng([seed, a, *map(ord, scan.key)])
            block = {
                "idx": idx,
                "signal": np.ascontiguousarray(voxels.signal, dtype=np.float32),
                "chi": voxels.chi.astype(np.float32),
                "sample": rng.random(len(idx)) < rate,
            }
            for p in PARAMETERS if voxels.truth else ():
                block[f"truth_{p}"] = voxels.truth[p].astype(np.float32)
            for name, values in voxels.labels.items():
                block[f"label_{name}"] = values.astype(np.int16)
            yield block


def _sample_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = batch["sample"]
    return {"signal": batch["signal"][keep], "chi": batch["chi"][keep]}


def _truth_oef_sums(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    y = batch["truth_Y"].astype(np.float64)
    return {"sum": np.array([np.sum(1.0 - y / YA)]), "n": np.array([len(y)])}


def _cluster_sums(batch: dict[str, np.ndarray], *, clusters) -> dict[str, np.ndarray]:
    from oefray.ml.cat import assign, cluster_sums

    labels = assign(clusters, batch["signal"], batch["chi"])
    sums, chi_sums, n = cluster_sums(labels, batch["signal"], batch["chi"], clusters.k)
    return {"sums": sums[None], "chi": chi_sums[None], "n": n[None]}


def _solve_block(
    batch: dict[str, np.ndarray],
    *,
    te_s: tuple[float, ...],
    w: float,
    g: float,
    clusters,
    solutions: np.ndarray | None,
    shared: tuple[str, ...],
    staging: str,
) -> dict[str, np.ndarray]:
    """``map_batches`` body: solve every voxel of the block, write the results to ``staging``
    (one ``.npz`` per block), return one summary row."""
    import numba

    from oefray.ml.cat import assign, starts, voxel_bounds
    from oefray.physics.qq_solve import QQStatus, solve_qq

    numba.set_num_threads(1)  # the task holds one CPU; Ray runs one task per CPU
    signal = batch["signal"].astype(np.float64)
    chi = batch["chi"].astype(np.float64)
    first = signal[:, :1].copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = signal / first
    te = np.asarray(te_s)
    fallback = np.array([PRIOR_START[p] for p in PARAMETERS])
    n = len(chi)
    params = np.full((n, len(PARAMETERS)), np.nan)
    cost = np.full(n, np.nan)
    status = np.full(n, int(QQStatus.NONFINITE_INPUT), dtype=np.int8)
    if solutions is None:  # every voxel from the prior start, all five free
        sol = solve_qq(norm, chi, te, fallback, w=w, g=g)
        params, cost, status = sol.params.copy(), sol.cost, sol.status
    else:
        labels = assign(clusters, signal, chi)
        x0 = starts(solutions, labels, fallback)
        for k in np.unique(labels):
            sel = labels == k
            if k < 0:
                continue  # non-finite input: NaN, NONFINITE_INPUT
            solved = np.isfinite(solutions[k]).all()  # else: all five free from the fallback
            bounds = voxel_bounds(solutions[k], shared) if shared and solved else None
            sol = solve_qq(norm[sel], chi[sel], te, x0[sel], w=w, g=g, bounds=bounds)
            params[sel], cost[sel], status[sel] = sol.params, sol.cost, sol.status
    oef = 1.0 - params[:, PARAMETERS.index("Y")] / YA
    misfit = cost - g * oef
    params[:, PARAMETERS.index("S0")] *= first[:, 0]  # back to the data's scale
    path = Path(staging) / f"block-{uuid.uuid4().hex}.npz"
    extra = {k: batch[k] for k in batch if k.startswith(("truth_", "label_"))}
    np.savez(path, idx=batch["idx"], params=params, cost=misfit, status=status, **extra)
    ok = np.isfinite(oef)
    return {
        "file": np.array([path.name]),
        "n": np.array([n]),
        "oef_sum": np.array([float(oef[ok].sum())]),
        "n_finite": np.array([int(ok.sum())]),
        "converged": np.array([int((status < QQStatus.MAX_ITERATIONS).sum())]),
    }


def _assemble(scan: ScanFiles, staging: str, files: list[str], target: str) -> dict[str, Any]:
    """Ray task: the scan's maps from its blocks' results (into ``target``, a staging scan
    folder), and its sums against the truth per region (:func:`oefray.ml.regions.region_sums`)
    and lesion contrast."""
    from oefray.io.maps import sidecar_path, write_map, write_named_map
    from oefray.ml.regions import evaluate_regions, region_sums

    parts = [np.load(Path(staging) / f) for f in files]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0].files}
    idx, params = data["idx"], data["params"]
    shape, affine = scan.shape, np.asarray(scan.affine)
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    label = scan.prefix.removeprefix("sub-")
    description = f"QQ inversion by oefray {__version__} (oefray qq)"
    values = {p: params[:, k] for k, p in enumerate(PARAMETERS)}
    values["OEF"] = 100.0 * (1.0 - params[:, PARAMETERS.index("Y")] / YA)
    written = [
        write_named_map(out, label, name, v, idx, shape, affine, kind=KIND, what=description)
        for name, v in values.items()
    ]
    for name, what in EXTRA_MAPS.items():
        path = out / f"sub-{label}_desc-{name}_{KIND}.nii.gz"
        write_map(path, data[name].astype(np.float32), idx, shape, affine)
        meta = {"Description": f"{what}.", "SkullStripped": True}
        sidecar_path(path).write_text(json.dumps(meta, indent=2) + "\n")
        written.append(path)
    z = scan.depth // 2
    oef_volume = np.full(int(np.prod(shape)), np.nan, np.float32)
    oef_volume[idx] = values["OEF"]
    result: dict[str, Any] = {
        "files": [p.name for p in written],
        "mid_slice": oef_volume.reshape(shape)[:, :, z],
    }
    if "truth_Y" in data:
        true = np.column_stack([data[f"truth_{p}"] for p in PARAMETERS]).astype(np.float64)
        good = np.isfinite(params).all(axis=1)
        p, t = params[good], true[good]
        tissue = data.get("label_tissue")
        names = {int(c): n for c, n in scan.label_names.items()}
        codes = tissue[good] if tissue is not None else np.full(len(p), -1)
        sums = region_sums(p, t, codes, names)
        lesion = data.get("label_lesion")
        if lesion is not None and (lesion[good] > 0).any():
            sums.update(
                region_sums(p, t, (lesion[good] > 0).astype(int), {1: "lesion"}, pooled=None)
            )
        result["sums"] = sums
        truth_oef = np.full(int(np.prod(shape)), np.nan, np.float32)
        truth_oef[idx] = 100.0 * (1.0 - true[:, PARAMETERS.index("Y")] / YA)
        result["truth_mid_slice"] = truth_oef.reshape(shape)[:, :, z]
        labels = {}
        if tissue is not None:
            labels["tissue"] = tissue[good]
        if lesion is not None:
            labels["lesion"] = lesion[good]
        if "lesion" in labels and labels["lesion"].any():
            report = evaluate_regions(
                p,
                t,
                t.mean(axis=0),
                np.full(len(p), scan.key),
                idx[good],
                labels,
                {scan.key: (shape, affine)},
                names,
            )
            if scan.key in report.contrast:
                result["contrast"] = report.contrast[scan.key].to_dict()
    return result


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def default_out(dataset: Path, method: str) -> Path:
    """``<dataset>/derivatives/qq-<method>``: where ``preprocess --truth qq-<method>`` looks."""
    return dataset / "derivatives" / f"qq-{method}"


def _read_record(out: Path) -> dict[str, Any] | None:
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OefrayError(path, f"unreadable record of oefray qq ({exc})") from None
    if not isinstance(record, dict) or record.get("command") != "qq":
        raise OefrayError(path, "is not the record of oefray qq")
    return record


def _prepare_out(out: Path, dataset: Path, config: QQConfig) -> dict[str, Any]:
    """The output's record (new: an empty one); refuse a folder ``qq`` did not write, and
    without ``--force`` one made with other options."""
    if out.exists() and not out.is_dir():
        raise OefrayError(out, "exists and is not a folder; give a folder for the output")
    if out == dataset or out in dataset.parents:
        raise OefrayError(out, "is the dataset (or holds it); give a derivative folder")
    record = _read_record(out) if out.is_dir() else None
    if record is None:
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise OefrayError(
                out, f"exists and is not an oefray qq output (no {RECORD}): not written into"
            )
        return {"command": "qq", "options": config.options(), "scans": {}}
    if record.get("options") != config.options():
        if not config.force:
            raise OefrayError(
                out / RECORD,
                f"was made with options {record.get('options')}, not {config.options()}; "
                "use another --out, or --force to redo every scan",
            )
        record = {"command": "qq", "options": config.options(), "scans": {}}
    elif config.force:
        record["scans"] = {}
    return record


def _write_side_files(out: Path, dataset: Path, config: QQConfig, record: dict) -> None:
    """``dataset_description.json`` (GeneratedBy with every option), README, ``.bidsignore``,
    and the record."""
    from oefray.io.files import write_text_atomic
    from oefray.io.maps import describe_maps_dataset

    out.mkdir(parents=True, exist_ok=True)
    desc = {
        "Name": f"oefray qq ({config.method}) of {dataset.name}",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "oefray",
                "Version": __version__,
                "Description": "oefray qq: QQ inversion (QSM + qBOLD, Cho et al. 2018)"
                + (" with CAT (Cho et al. 2019)" if config.method == "cat" else "")
                + "; options: "
                + json.dumps(config.options(), sort_keys=True),
            }
        ],
        "SourceDatasets": [{"URL": f"file://{dataset}"}],
    }
    write_text_atomic(out / "dataset_description.json", json.dumps(desc, indent=2) + "\n")
    describe_maps_dataset(
        out,
        f"Reference QQ maps made by oefray {__version__} (oefray qq, method {config.method}) "
        f"from the BIDS dataset {dataset}; options in dataset_description.json and {RECORD}. "
        "Per voxel also the data misfit (desc-cost) and the solver status (desc-status).",
        kind=KIND,
        other_files=(RECORD, "results.json", "qq_scans.csv", "rmse_per_region.csv"),
    )
    write_text_atomic(out / RECORD, json.dumps(record, indent=2) + "\n")


def _commit_scan(staged: Path, target: Path) -> None:
    """Move a scan's staged files into place: the folder by one rename when it is new, else
    file by file (only the files ``qq`` wrote are replaced; nothing else is touched)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staged, target)
        return
    for f in staged.iterdir():
        os.replace(f, target / f.name)


def _oef_wb(scan: ScanFiles, config: QQConfig, dataset: Path, ds) -> tuple[float | None, str]:
    """The scan's whole-brain OEF (fraction) and where it came from, or (None, "none")."""
    if config.oef_wb_source == "none":
        return None, "none"
    if config.oef_wb_source == "value":
        return float(config.oef_wb), "given (--oef-wb)"
    if config.oef_wb_source == "truth":
        if not scan.truth:
            raise DatasetError(
                Path(scan.echoes[0]).parent,
                f"--oef-wb truth needs the simulation's ground truth, and {scan.scan.name} has none",
            )
        parts = list(ds.map_batches(_truth_oef_sums, batch_size=None).iter_batches(batch_size=None))
        total = sum(float(b["sum"].sum()) for b in parts)
        n = sum(int(b["n"].sum()) for b in parts)
        return total / n, "the simulation's truth (a simulated cohort only)"
    from oefray.io.bids import load_image
    from oefray.io.scans import find_roi_mask
    from oefray.physics.qq import venous_oxygenation

    assert config.sinus_mask is not None
    roi_path = find_roi_mask(dataset, scan, config.sinus_mask, "sinus")
    roi = np.asarray(load_image(roi_path).dataobj) > 0
    if not roi.any():
        raise DatasetError(roi_path, "the venous-sinus ROI is empty")
    chi = np.asarray(load_image(scan.chi).dataobj, dtype=np.float64)[roi]
    chi = chi[np.isfinite(chi)]
    if not len(chi):
        raise DatasetError(roi_path, "the QSM has no finite value in the venous-sinus ROI")
    oef = 1.0 - float(venous_oxygenation(chi.mean())) / YA
    if not 0.0 < oef < 1.0:
        raise DatasetError(
            roi_path,
            f"mean QSM {chi.mean():.4g} ppm in the venous-sinus ROI gives OEF_wb {oef:.3g}, "
            "outside (0, 1): is the ROI on the sinus and the QSM referenced to water/CSF?",
        )
    return oef, f"venous-sinus ROI {roi_path.name} (mean QSM {chi.mean():.4g} ppm)"


def _sample(ds) -> tuple[np.ndarray, np.ndarray]:
    """The scan's sampled voxels with finite echoes and QSM and a positive echo 1: (signal,
    chi), float64, gathered on the driver (about :attr:`QQConfig.sample` voxels)."""
    rows = list(ds.map_batches(_sample_rows, batch_size=None).iter_batches(batch_size=None))
    signal = np.concatenate([r["signal"] for r in rows]).astype(np.float64)
    chi = np.concatenate([r["chi"] for r in rows]).astype(np.float64)
    finite = np.isfinite(signal).all(axis=1) & np.isfinite(chi) & (signal[:, 0] > 0)
    return signal[finite], chi[finite]


def _global_step(scan, ds, config: QQConfig, oef_wb: float | None):
    """Clustering and cluster solutions (CAT), and the prior's multiplier ``g``, on the driver
    from the sample and the cluster sums: ``(clusters, solutions, g, details)``.

    With CAT the prior acts on the cluster solutions (each cluster's data cost weighted by its
    size, the mean OEF over every voxel of the scan); without, on the sample's voxel-wise
    solutions (the prior weight scaled by the sample's share of the brain), each round from the
    same start, so that the voxel pass at the final ``g`` reproduces the sample's solutions."""
    from oefray.ml.cat import fit_clusters, solve_clusters
    from oefray.physics.qq_solve import solve_qq_prior

    te = np.asarray(scan.te_s)
    prior = config.uses_prior and oef_wb is not None
    details: dict[str, Any] = {}
    if config.method == "cat":
        signal, chi = _sample(ds)
        clusters = fit_clusters(signal, chi, seed=config.seed)
        parts = list(
            ds.map_batches(
                _cluster_sums, batch_size=None, fn_kwargs={"clusters": clusters}
            ).iter_batches(batch_size=None)
        )
        sums = sum(p["sums"].sum(axis=0) for p in parts)
        chi_sums = sum(p["chi"].sum(axis=0) for p in parts)
        n = sum(p["n"].sum(axis=0) for p in parts)
        solutions = solve_clusters(sums, chi_sums, n, te, w=config.w)
        details.update(
            sample=len(chi),
            clusters=clusters.k,
            bic={str(k): v for k, v in clusters.bic.items()},
        )
        g = 0.0
        if prior:
            full = (n > 0) & np.isfinite(solutions).all(axis=1)
            mean = sums[full] / n[full, None]
            solved = solve_qq_prior(
                mean,
                chi_sums[full] / n[full],
                te,
                solutions[full],
                w=config.w,
                lam=config.lam,
                oef_wb=oef_wb,
                weights=n[full],
            )
            solutions = solutions.copy()
            solutions[full] = solved.solution.params
            g = float(solved.g)
            details.update(g=g, rounds=solved.rounds, cluster_mean_oef=solved.mean_oef)
        return clusters, solutions, g, details
    if not prior:
        return None, None, 0.0, details
    signal, chi = _sample(ds)
    fallback = np.array([PRIOR_START[p] for p in PARAMETERS])
    lam = config.lam if math.isinf(config.lam) else config.lam * len(chi) / scan.n_brain
    solved = solve_qq_prior(
        signal / signal[:, :1],
        chi,
        te,
        fallback,
        w=config.w,
        lam=lam,
        oef_wb=oef_wb,
        warm_start=False,
    )
    g = float(solved.g)
    details.update(sample=len(chi), g=g, rounds=solved.rounds, sample_mean_oef=solved.mean_oef)
    return None, None, g, details


def _solve_scan(scan: ScanFiles, dataset: Path, config: QQConfig, staging: Path) -> dict:
    """Steps 1-4 of the module docstring for one scan; its staged folder and summary."""
    import ray
    import ray.data

    from oefray.orchestration.preprocess import plan_tasks

    t0 = time.perf_counter()
    items = plan_tasks([scan], config.slab)
    rate = min(1.0, config.sample / max(scan.n_brain, 1))
    ds = (
        ray.data.from_items(items, override_num_blocks=len(items))
        .map_batches(
            _read_voxels,
            batch_size=1,
            fn_kwargs={"scan": scan, "slab": config.slab, "rate": rate, "seed": config.seed},
        )
        .materialize()
    )
    oef_wb, source = _oef_wb(scan, config, dataset, ds)
    clusters, solutions, g, details = _global_step(scan, ds, config, oef_wb)
    blocks = staging / "blocks"
    blocks.mkdir(parents=True, exist_ok=True)
    summary = list(
        ds.map_batches(
            _solve_block,
            batch_size=None,
            fn_kwargs={
                "te_s": tuple(scan.te_s),
                "w": config.w,
                "g": g,
                "clusters": clusters,
                "solutions": solutions,
                "shared": tuple(config.shared),
                "staging": str(blocks),
            },
        ).iter_batches(batch_size=None)
    )
    files = [str(f) for b in summary for f in b["file"]]
    n = sum(int(b["n"].sum()) for b in summary)
    finite = sum(int(b["n_finite"].sum()) for b in summary)
    mean_oef = sum(float(b["oef_sum"].sum()) for b in summary) / max(finite, 1)
    converged = sum(int(b["converged"].sum()) for b in summary)
    target = staging / "scan"
    assembled = ray.get(
        ray.remote(_assemble).options(num_cpus=1).remote(scan, str(blocks), files, str(target))
    )
    shutil.rmtree(blocks, ignore_errors=True)
    del ds
    return {
        "staged": target,
        "assembled": assembled,
        "summary": {
            "voxels": n,
            "mean_oef": 100.0 * mean_oef,
            "converged_fraction": converged / max(n, 1),
            "oef_wb": None if oef_wb is None else 100.0 * oef_wb,
            "oef_wb_source": source,
            "g": g,
            "seconds": time.perf_counter() - t0,
            **details,
        },
    }


def run_qq(
    dataset: str | Path,
    out: str | Path | None = None,
    config: QQConfig | None = None,
    *,
    subjects: list[str] | None = None,
    progress: ProgressFn | None = None,
    log: bool = True,
) -> QQResult:
    """QQ maps of every scan of a BIDS dataset (see the module docstring).

    Parameters
    ----------
    dataset : path
        BIDS dataset with multi-echo magnitudes (>= 2 echoes), QSM and a brain mask.
    out : path, optional
        The derivative to write (default :func:`default_out`).
    config : QQConfig, optional
    subjects : list of str, optional
        Subject labels or scan keys (default: every scan).
    progress : callable, optional
        Called with one line per scan done.
    log : bool
        Log the MLflow run (a caller that reports the figures itself, such as ``study
        te-shift``, does not).

    Raises
    ------
    DatasetError, OefrayError
        One line naming the file and the problem; nothing is written for a bad input.
    """
    from oefray.io.files import write_text_atomic
    from oefray.io.locks import writing
    from oefray.io.scans import scan_dataset
    from oefray.orchestration.preprocess import data_context
    from oefray.orchestration.runtime import ray_runtime

    t0 = time.perf_counter()
    config = config or QQConfig()
    dataset = Path(dataset).resolve()
    index = scan_dataset(dataset, subjects, config.selection)
    if index.errors:
        raise next(iter(index.errors.values()))
    if not index.scans:
        raise DatasetError(dataset, "has no scans")
    if config.oef_wb_source == "truth":
        missing = [s.scan.name for s in index.scans.values() if not s.truth]
        if missing:
            raise DatasetError(
                dataset,
                f"--oef-wb truth needs the simulation's ground truth; {', '.join(missing)} "
                "have none",
            )
    out = Path(out).resolve() if out else default_out(dataset, config.method)
    record = _prepare_out(out, dataset, config)
    if config.sinus_mask:  # every ROI found and on its grid before any work
        from oefray.io.scans import find_roi_mask

        for scan in index.scans.values():
            find_roi_mask(dataset, scan, config.sinus_mask, "sinus")
    result = QQResult(out=str(out), dataset=str(dataset), method=config.method)
    pending = [s for k, s in index.scans.items() if k not in record["scans"]]
    result.skipped = [k for k in index.scans if k in record["scans"]]
    new = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with writing(out, "qq"):
            _write_side_files(out, dataset, config, record)
            assembled: dict[str, dict] = {}
            with ray_runtime(config.address, config.workers), data_context(summary_blocks=False):
                logging.getLogger("ray.data").setLevel(logging.WARNING)
                for scan in pending:
                    staging = out / f".staging-{uuid.uuid4().hex[:8]}"
                    try:
                        done = _solve_scan(scan, dataset, config, staging)
                        _commit_scan(done["staged"], out / scan.scan.bids_dir)
                    finally:
                        shutil.rmtree(staging, ignore_errors=True)
                    files = done["assembled"]["files"]
                    evaluation = {
                        k: done["assembled"][k]
                        for k in ("sums", "contrast")
                        if k in done["assembled"]
                    }
                    record["scans"][scan.key] = {"files": files, **done["summary"], **evaluation}
                    write_text_atomic(out / RECORD, json.dumps(record, indent=2) + "\n")
                    assembled[scan.key] = done["assembled"]
                    result.completed.append(scan.key)
                    s = done["summary"]
                    if progress:
                        progress(
                            f"qq {config.method}: {scan.scan.name} done ({s['voxels']:,} voxels, "
                            f"mean OEF {s['mean_oef']:.2f} %, {s['seconds']:.1f} s)"
                        )
            result.scans = {
                k: dict(record["scans"][k]) for k in index.scans if k in record["scans"]
            }
            result.seconds = time.perf_counter() - t0
            _evaluate(result, index)
            if log:
                _log_run(result, config, assembled, out)
            write_text_atomic(out / "results.json", json.dumps(result.to_dict(), indent=2) + "\n")
    except BaseException:
        if new and not record["scans"]:  # nothing of value written: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    return result


def _evaluate(result: QQResult, index) -> None:
    """``result.metrics`` and ``result.regions``: run figures, and the RMSE against the truth
    (the test split's scans, per region, beside the floor of the training scans' mean) and the
    lesion contrast, from each scan's recorded sums."""
    from oefray.ml.regions import floor_from_sums, merge_sums, rmse_from_sums
    from oefray.tracking.names import LESION_CONTRAST_METRICS, region_metrics, rmse_metric_name

    split = index.split
    test = [k for k in index.scans if split.get(k) == "test"] or list(index.scans)
    train = [k for k in index.scans if split.get(k) == "train"]
    metrics: dict[str, float] = {
        "qq_seconds": result.seconds,
        "qq_scans": float(len(result.scans)),
    }
    voxels = sum(s["voxels"] for k, s in result.scans.items() if k in result.completed)
    if result.completed and result.seconds > 0:
        metrics["qq_voxels_per_second"] = voxels / result.seconds
    done = [result.scans[k] for k in result.scans]
    if done:
        total = sum(s["voxels"] for s in done)
        metrics["qq_converged_fraction"] = (
            sum(s["converged_fraction"] * s["voxels"] for s in done) / total
        )
        metrics["qq_mean_oef"] = sum(s["mean_oef"] * s["voxels"] for s in done) / total
    sums = {k: s["sums"] for k, s in result.scans.items() if "sums" in s}
    result.evaluated_on = [k for k in test if k in sums]
    if result.evaluated_on:
        pooled = merge_sums(*(sums[k] for k in result.evaluated_on))
        rmse = rmse_from_sums(pooled)
        metrics.update(
            {rmse_metric_name("test", q): v for q, v in rmse["all"].items() if q != "voxels"}
        )
        metrics.update(region_metrics("test", {r: v for r, v in rmse.items() if r != "all"}))
        result.regions = {"rmse": rmse}
        train_sums = merge_sums(*(sums[k] for k in train if k in sums))
        if "all" in train_sums:
            mean = np.asarray(train_sums["all"]["sum"][: len(PARAMETERS)]) / train_sums["all"]["n"]
            floor = floor_from_sums(pooled, mean)
            metrics.update(
                {rmse_metric_name("floor", q): v for q, v in floor["all"].items() if q != "voxels"}
            )
            metrics.update(region_metrics("floor", {r: v for r, v in floor.items() if r != "all"}))
            result.regions["floor"] = floor
        contrast = [result.scans[k]["contrast"] for k in test if "contrast" in result.scans[k]]
        if contrast:
            for key, name in LESION_CONTRAST_METRICS.items():
                values = [c[key] for c in contrast if np.isfinite(c[key])]
                if values:
                    metrics[name] = float(np.mean(values))
            result.regions["contrast"] = contrast
    result.metrics = metrics


def _log_run(result: QQResult, config: QQConfig, assembled: dict, out: Path) -> None:
    """The MLflow run: options, metrics (:func:`_evaluate`), the per-scan table, the per-region
    table, the OEF figure of the scans solved in this run."""
    import pandas as pd

    from oefray import reports
    from oefray.io.files import write_text_atomic
    from oefray.ml.regions import rmse_from_sums
    from oefray.tracking import Tracker
    from oefray.tracking.names import COMMAND_TAG

    metrics = result.metrics
    test = result.evaluated_on
    tables = []
    for method, key in (("qq", "rmse"), ("floor", "floor")):
        for r, v in (result.regions or {}).get(key, {}).items():
            if r != "all":
                tables.append({"region": r, "method": method, **v})
    tracker = Tracker.from_uri(config.tracking_uri)
    params = {
        **config.options(),
        "dataset": str(result.dataset),
        "out": str(out),
        "scans": ",".join(result.scans),
        "evaluated_on": ",".join(test),
        "lam": "inf" if math.isinf(config.lam) else config.lam,
    }
    with (
        tracker.tracked_run(
            config.experiment,
            run_name=f"qq-{config.method}",
            params=params,
            tags={COMMAND_TAG: f"qq {config.method}"},
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        tmp_path = Path(tmp)
        frame = pd.DataFrame(
            [
                {"scan": k, **{c: v for c, v in s.items() if c not in _NOT_IN_TABLE}}
                for k, s in result.scans.items()
            ]
        )
        frame.to_csv(tmp_path / "qq_scans.csv", index=False)
        write_text_atomic(out / "qq_scans.csv", (tmp_path / "qq_scans.csv").read_text())
        run.log_artifact_file(tmp_path / "qq_scans.csv")
        if tables:
            regions = pd.DataFrame(tables)
            regions.to_csv(tmp_path / "rmse_per_region.csv", index=False, float_format="%.6g")
            write_text_atomic(
                out / "rmse_per_region.csv", (tmp_path / "rmse_per_region.csv").read_text()
            )
            run.log_artifact_file(tmp_path / "rmse_per_region.csv")
        panels = [
            (k, a["truth_mid_slice"], a["mid_slice"], rmse_from_sums(a["sums"])["all"]["OEF"])
            for k, a in assembled.items()
            if "truth_mid_slice" in a and k in test
        ]
        if panels:
            run.log_artifact_file(reports.plot_oef_maps(panels, tmp_path / "oef_maps.png"))
        result.run_id = run.run_id
