"""``oefray study te-shift``: the paper's central claim, measured — does a model trained at one echo
scheme keep its accuracy when the test data come with another?

The test subjects of a BIDS dataset with ground truth are simulated again from their own
ground-truth maps under each echo scheme (qBOLD magnitude with Rician noise, QSM with Gaussian
noise, the same mask and grid), sent through ``preprocess``, and predicted by a trained LSTM
(unchanged), by CCM (its library re-simulated at each scheme, as the method prescribes) and by the
QQ inversions of :attr:`~oefray.config.StudyConfig.qq` (re-solved at each scheme: CAT with the
whole-brain OEF prior taken from the truth, voxel-wise QQ with no prior), beside the floor. The table (method × scheme, test RMSE per parameter and OEF) is written as CSV and
markdown and logged to MLflow; where the dataset has a tissue segmentation (and a lesion mask), a
second table gives each method's OEF RMSE per tissue class and its lesion contrast
(:mod:`oefray.ml.regions`) at each scheme, beside the floor and the truth.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oefray.config import EchoScheme, PreprocessConfig, StudyConfig
from oefray.errors import DatasetError
from oefray.io.files import write_text_atomic
from oefray.physics.constants import RMSE_QUANTITIES
from oefray.tracking.names import CHILD_RUNS_TAG, COMMAND_TAG

#: The default shifted schemes: 10 echoes from 3.0 ms every 3.8 ms, and an uneven 9-echo scheme.
SHIFTED_SCHEMES: dict[str, EchoScheme] = {
    "10 echoes from 3.0 ms every 3.8 ms": EchoScheme.uniform(3.0e-3, 3.8e-3, 10),
    "9 echoes uneven 3-45 ms": EchoScheme(
        tuple(t * 1e-3 for t in (3.0, 5.0, 8.0, 12.0, 17.0, 23.0, 30.0, 37.0, 45.0))
    ),
}


def _resimulate(
    dataset: Path,
    out: Path,
    labels: Sequence[str],
    te_s: Sequence[float],
    *,
    snr: float,
    qsm_noise_ppm: float,
    seed: int,
) -> None:
    """Write ``labels`` of ``dataset`` again from their ground truth at echo times ``te_s``."""
    from oefray.io import bids, scans
    from oefray.physics.measurement import simulate_measurement

    bids.write_dataset_description(out, f"te-shift of {dataset.name}")
    bids.write_participants(out, [{"participant_id": f"sub-{s}", "split": "test"} for s in labels])
    rng = np.random.default_rng(seed)  # one stream across subjects, full-grid draws ("grid")
    for label in labels:
        sub = scans.scan_subject(dataset, label)
        if not sub.truth:
            raise DatasetError(
                dataset, f"sub-{label} has no ground truth (derivatives/qq): cannot re-simulate"
            )
        slab = bids.read_slab(sub, 0, sub.depth)
        tissue, lesion = slab.labels.get("tissue"), slab.labels.get("lesion")
        measured = simulate_measurement(
            slab.truth,
            slab.mask,
            te_s,
            rng,
            snr=snr,
            qsm_noise_ppm=qsm_noise_ppm,
            noise_draws="grid",
        )
        bids.write_subject(
            out,
            label,
            np.asarray(sub.affine),
            measured.magnitude,
            te_s,
            measured.chi,
            slab.mask,
            dict(slab.truth),
            labels=tissue,
            label_names=sub.label_names,
            lesion=None if lesion is None else lesion > 0,
        )


def _schemes(bundle, schemes: dict[str, EchoScheme] | None) -> dict[str, EchoScheme]:
    """The given schemes, else the training scheme plus :data:`SHIFTED_SCHEMES`."""
    out = dict(schemes or {})
    if not out:
        if bundle.echo_times_s:
            out["training scheme"] = EchoScheme(tuple(bundle.echo_times_s))
        out.update(SHIFTED_SCHEMES)
    return out


def _split(dataset: Path):
    from oefray.io import scans

    index = scans.scan_dataset(dataset)
    if any(s.session for s in index.scans.values()):
        raise DatasetError(
            dataset, "te-shift re-simulates a dataset without sessions (oefray simulate's)"
        )
    train = [s for s, v in index.split.items() if v == "train" and s in index.scans]
    test = [s for s, v in index.split.items() if v == "test" and s in index.scans]
    if not train or not test:
        raise DatasetError(
            dataset / "participants.tsv", "needs train and test subjects in a split column"
        )
    return index, train, test


def truth_reference(key: str, *, dataset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One training subject's ground truth inside its mask (the CCM library's reference and the
    floor's mean): C-order indices and parameters (a :data:`oefray.orchestration.reference.
    ReadFn`, run in a Ray Data task)."""
    from oefray.io import bids, scans
    from oefray.physics.constants import PARAMETERS

    sub = scans.scan_subject(Path(dataset), key)
    slab = bids.read_slab(sub, 0, sub.depth)
    return np.flatnonzero(slab.mask), {p: slab.truth[p][slab.mask] for p in PARAMETERS}


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for one value) over the models."""
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return float(np.mean(values)), std


def _region_row(reports, method: str, name: str) -> dict[str, Any]:
    """One row of the per-region table: OEF RMSE of each region and the lesion contrast, mean
    (and std) over ``reports`` (one :class:`oefray.ml.regions.RegionReport` per model)."""
    row: dict[str, Any] = {"method": method, "scheme": name}
    regions = list(dict.fromkeys(r for rep in reports for r in rep.rmse))
    for region in regions:
        values = [rep.rmse[region]["OEF"] for rep in reports if region in rep.rmse]
        row[f"OEF {region}"], row[f"OEF {region}_std"] = _mean_std(values)
    summaries = [rep.contrast_summary() for rep in reports]
    if all(summaries):
        for key in ("contrast_recovered", "cnr"):
            row[key], row[f"{key}_std"] = _mean_std([s_[key] for s_ in summaries])
    return row


def _predicted(model, folders: list[Path], test: list[str]) -> list[dict[str, Any]]:
    """Each scheme's test scans' :class:`~oefray.orchestration.inference.ScanOutput` of a
    method (an LSTM bundle or the CCM libraries of every scheme), one dict per features folder
    of ``folders``: batch inference on Ray Data, one actor pool for all the schemes, no map."""
    from oefray.orchestration.inference import MapsTarget, infer_scans

    outputs = infer_scans(
        model,
        [(folder, key) for folder in folders for key in test],
        MapsTarget.nowhere(),
        with_targets=True,
        slices_for=(),
    )
    return [{key: outputs[(str(folder.resolve()), key)] for key in test} for folder in folders]


def _lstm_rows(per_model: list[dict[str, Any]], train_mean):
    """Mean and std over the models (their test scans' outputs) of the pooled test RMSE of each
    quantity, and the models' :class:`oefray.ml.regions.RegionReport` (empty without labels)."""
    from oefray.orchestration.evaluate import outputs_report, pooled_and_floor

    pooled, reports = [], []
    for outputs in per_model:
        pooled.append(pooled_and_floor(outputs, train_mean)[0])
        if any(o.labelled for o in outputs.values()):
            reports.append(outputs_report(outputs, train_mean))
    mean, std = {}, {}
    for q in RMSE_QUANTITIES:
        mean[q], std[f"{q}_std"] = _mean_std([r[q] for r in pooled])
    return mean, std, reports


def _scheme_rows(name, scheme, lstm_outputs, ccm_outputs, train_mean, lstm_name):
    """The LSTM, CCM and floor rows of one echo scheme, from the scans' outputs (each LSTM
    model's, and CCM's): pooled RMSE rows, and per-region rows (with the truth's lesion CNR)
    where the features carry labels."""
    from oefray.orchestration.evaluate import outputs_report, pooled_and_floor

    lstm, lstm_std, lstm_regions = _lstm_rows(lstm_outputs, train_mean)
    ccm, floor = pooled_and_floor(ccm_outputs, train_mean)
    te_ms = ", ".join(f"{t * 1e3:g}" for t in scheme.te_s)
    nan_std = {f"{q}_std": float("nan") for q in RMSE_QUANTITIES}
    rows = [
        {
            "method": method,
            "scheme": name,
            "te_ms": te_ms,
            **{q: float(values[q]) for q in RMSE_QUANTITIES},
            **std,
        }
        for method, values, std in (
            (lstm_name, lstm, lstm_std),
            ("CCM", ccm, nan_std),
            ("floor", floor, nan_std),
        )
    ]
    if not any(o.labelled for o in ccm_outputs.values()):
        return rows, []
    ccm_report = outputs_report(ccm_outputs, train_mean)
    floor_row = {
        "method": "floor",
        "scheme": name,
        **{f"OEF {r}": v["OEF"] for r, v in ccm_report.floor.items()},
    }
    if ccm_report.contrast:
        floor_row["contrast_recovered"] = 0.0
    region_rows = [
        _region_row(lstm_regions, lstm_name, name),
        _region_row([ccm_report], "CCM", name),
        floor_row,
    ]
    summary = ccm_report.contrast_summary()
    if summary:
        region_rows.append(
            {
                "method": "truth",
                "scheme": name,
                "contrast_recovered": 1.0,
                "cnr": summary["cnr_true"],
            }
        )
    return rows, region_rows


#: What each QQ inversion of the study is told besides the data (its row's name).
QQ_ROWS: dict[str, str] = {
    "cat": "QQ CAT (OEF_wb from the truth)",
    "voxel": "QQ voxel-wise (no prior)",
}


def _qq_rows(name, scheme, ds: Path, out: Path, config) -> tuple[list[dict], list[dict]]:
    """The QQ inversions of :attr:`StudyConfig.qq` on the re-simulated data of one scheme: a
    pooled row and a per-region row each."""
    from oefray.config import QQConfig
    from oefray.orchestration.qq import run_qq

    rows, region_rows = [], []
    te_ms = ", ".join(f"{t * 1e3:g}" for t in scheme.te_s)
    for method in config.qq:
        options = QQConfig(
            method=method,
            oef_wb_source="truth" if method == "cat" else "none",
            workers=config.workers,
            seed=config.seed,
        )
        result = run_qq(ds, out / f"qq-{method}", options, log=False)
        m = result.metrics
        rows.append(
            {
                "method": QQ_ROWS[method],
                "scheme": name,
                "te_ms": te_ms,
                **{q: float(m[f"test_rmse_{q}"]) for q in RMSE_QUANTITIES},
                **{f"{q}_std": float("nan") for q in RMSE_QUANTITIES},
            }
        )
        regions = (result.regions or {}).get("rmse", {})
        row: dict[str, Any] = {"method": QQ_ROWS[method], "scheme": name}
        row.update({f"OEF {r}": v["OEF"] for r, v in regions.items() if r != "all"})
        contrast = (result.regions or {}).get("contrast", [])
        for key in ("contrast_recovered", "cnr"):
            values = [c[key] for c in contrast if np.isfinite(c[key])]
            if values:
                row[key] = float(np.mean(values))
        if len(row) > 2:
            region_rows.append(row)
    return rows, region_rows


def te_shift(
    dataset: str | Path,
    model: str,
    config: StudyConfig | None = None,
    *,
    schemes: dict[str, EchoScheme] | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Test RMSE of the LSTM ``model``, CCM and the floor under each echo scheme.

    Parameters
    ----------
    dataset : path
        BIDS dataset with ground truth and a ``split`` column in ``participants.tsv``.
    model : str
        Training run id (or model URI) of the LSTM, or the parent run of ``tune --repeats``: then
        every repeat's model is evaluated and the LSTM rows give mean and std over the repeats.
    config : StudyConfig, optional
        Re-simulation SNR and QSM noise, CCM clusters, seed, workers, MLflow experiment/store.
    schemes : dict of name to EchoScheme, optional
        Default: the training scheme plus :data:`SHIFTED_SCHEMES`.
    out : path, optional
        Also write ``te_shift.csv`` and ``te_shift.md`` here.

    Returns
    -------
    dict
        ``rows`` (method, scheme, RMSE per quantity), ``markdown``, ``run_id``.
    """
    from functools import partial

    import pandas as pd

    from oefray.io.manifest import FeaturesManifest
    from oefray.ml.ccm import CCMConfig
    from oefray.orchestration.baseline import build_libraries
    from oefray.orchestration.evaluate import load_bundle
    from oefray.orchestration.preprocess import preprocess
    from oefray.orchestration.reference import reference_sample
    from oefray.orchestration.runtime import ray_runtime
    from oefray.physics.constants import PARAMETERS
    from oefray.tracking import Tracker

    config = config or StudyConfig()
    dataset = Path(dataset).resolve()
    tracker = Tracker.from_uri(config.tracking_uri)
    children = _repeat_models(tracker, model)
    bundles = [load_bundle(tracker, m) for m in children or [model]]
    _, train, test = _split(dataset)
    all_schemes = _schemes(bundles[0], schemes)
    lstm_name = f"LSTM ({len(bundles)} seeds)" if children else "LSTM"
    rows, region_rows = [], []
    with (
        ray_runtime(None, config.workers),
        tempfile.TemporaryDirectory(prefix="oefray-te-shift-") as tmp,
    ):
        # the training subjects' truth: the CCM library's reference sample and the floor's mean
        reference = reference_sample(
            train,
            partial(truth_reference, dataset=str(dataset)),
            PARAMETERS,
            CCMConfig().library_size,
            config.seed,
        )
        folders, qq = [], []
        for i, scheme in enumerate(all_schemes.values()):
            ds = Path(tmp) / f"scheme{i}" / "bids"
            _resimulate(
                dataset,
                ds,
                test,
                scheme.te_s,
                snr=config.snr,
                qsm_noise_ppm=config.qsm_noise_ppm,
                seed=config.seed + i,
            )
            folders.append(ds.parent / "features")
            result = preprocess(ds, folders[-1], PreprocessConfig(workers=config.workers))
            if not result.ok:
                raise DatasetError(ds, next(iter(result.failed.values())))
        for name, scheme, folder in zip(all_schemes, all_schemes.values(), folders, strict=True):
            qq.append(_qq_rows(name, scheme, folder.parent / "bids", folder.parent, config))
        # every scheme's test scans at once, per method: one actor pool each
        per_bundle = [_predicted(bundle, folders, test) for bundle in bundles]
        clusters = {} if config.clusters is None else {"clusters": config.clusters}
        ccm_config = CCMConfig(**clusters, seed=config.seed, snr=config.snr)
        # each library at the echo times the features record (as `baseline ccm` builds them)
        te = [tuple(FeaturesManifest.load(f).subjects[test[0]].echo_times_s) for f in folders]
        libraries = build_libraries(reference.sample, list(dict.fromkeys(te)), ccm_config, dataset)
        ccm = _predicted(libraries, folders, test)
        for i, (name, scheme) in enumerate(all_schemes.items()):
            pooled, by_region = _scheme_rows(
                name, scheme, [p[i] for p in per_bundle], ccm[i], reference.mean, lstm_name
            )
            qq_pooled, qq_regions = qq[i]
            # the QQ rows after the LSTM and CCM, before the floor (and the truth)
            rows += pooled[:2] + qq_pooled + pooled[2:]
            region_rows += by_region[:2] + qq_regions + by_region[2:]
    frame = pd.DataFrame(rows)
    regions = pd.DataFrame(region_rows)
    markdown = _markdown(frame) + (("\n" + _regions_markdown(regions)) if region_rows else "")
    run_id = _log_study(tracker, config, model, dataset, all_schemes, frame, regions, markdown, out)
    return {"rows": rows, "region_rows": region_rows, "markdown": markdown, "run_id": run_id}


def _log_study(tracker, config, model, dataset, schemes, frame, regions, markdown, out) -> str:
    """The study's MLflow run with the tables as CSV (``te_shift.csv``, and
    ``te_shift_regions.csv`` where there are regions) and markdown (also written to ``out``)."""
    with (
        tracker.tracked_run(
            config.experiment,
            run_name="te-shift",
            params={
                "model": model,
                "dataset": str(dataset),
                "snr": config.snr,
                "qsm_noise_ppm": config.qsm_noise_ppm,
                "schemes": {k: list(v.te_s) for k, v in schemes.items()},
                "ccm_clusters": config.clusters,
                "qq": list(config.qq),
            },
            tags={COMMAND_TAG: "study te-shift"},
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        target = Path(out).resolve() if out else Path(tmp)
        target.mkdir(parents=True, exist_ok=True)
        frame.to_csv(target / "te_shift.csv", index=False)
        write_text_atomic(target / "te_shift.md", markdown)
        run.log_artifact_file(target / "te_shift.csv")
        run.log_artifact_file(target / "te_shift.md")
        if len(regions):
            regions.to_csv(target / "te_shift_regions.csv", index=False)
            run.log_artifact_file(target / "te_shift_regions.csv")
    return run.run_id


def _repeat_models(tracker, model: str) -> list[str]:
    """The repeats' run ids if ``model`` is a ``tune --repeats`` parent run, else []."""
    if model.startswith(("models:/", "runs:/")) or "/" in model:
        return []
    from oefray.errors import OefrayError

    try:
        tags = tracker.get_run(model).data.tags
    except OefrayError:
        return []  # not a run id: load_bundle says what is wrong with it
    children = tags.get(CHILD_RUNS_TAG, "")
    return children.split(",") if children else []


def _markdown(frame) -> str:
    head = (
        "| method | echo scheme | "
        + " | ".join("OEF (%)" if q == "OEF" else q for q in RMSE_QUANTITIES)
        + " |"
    )
    lines = [head, "|" + "---|" * (len(RMSE_QUANTITIES) + 2)]
    for _, r in frame.iterrows():
        lines.append(
            f"| {r['method']} | {r['scheme']} | "
            + " | ".join(
                f"{r[q]:.4g}" if np.isnan(r[f"{q}_std"]) else f"{r[q]:.4g} ± {r[f'{q}_std']:.2g}"
                for q in RMSE_QUANTITIES
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _regions_markdown(frame) -> str:
    """Per region: OEF RMSE (%) of each tissue class, lesion contrast recovered and CNR, per
    method and scheme (``–`` where a row has no value)."""
    regions = [c[4:] for c in frame.columns if c.startswith("OEF ") and not c.endswith("_std")]
    keys = [f"OEF {r}" for r in regions] + [c for c in ("contrast_recovered", "cnr") if c in frame]
    heads = [f"OEF {r} (%)" for r in regions] + [
        {"contrast_recovered": "contrast recovered", "cnr": "lesion CNR"}[k]
        for k in keys[len(regions) :]
    ]

    def cell(r, key: str) -> str:
        value = r.get(key, float("nan"))
        if value is None or not np.isfinite(value):
            return "–"
        std = r.get(f"{key}_std", float("nan"))
        return f"{value:.4g}" if std is None or not np.isfinite(std) else f"{value:.4g} ± {std:.2g}"

    lines = [
        "| method | echo scheme | " + " | ".join(heads) + " |",
        "|" + "---|" * (len(heads) + 2),
    ]
    for _, r in frame.iterrows():
        lines.append(
            f"| {r['method']} | {r['scheme']} | " + " | ".join(cell(r, k) for k in keys) + " |"
        )
    return "\n".join(lines) + "\n"
