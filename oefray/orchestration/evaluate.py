"""Evaluation: a method's test predictions → metrics, Table 1, maps and figures → MLflow.

Every method is evaluated the same way, from per-scan results
(:class:`oefray.orchestration.inference.ScanOutput`: each scan's maps written where it is
evaluated, its additive sums of squared errors per region, its lesion contrast and the figure's
slices) made by Ray Data batch inference (:func:`oefray.orchestration.inference.run_inference`)
and reduced by :func:`log_outputs`: the LSTM after training (:func:`evaluate_model`),
``oefray evaluate`` (:func:`evaluate`), which recomputes a training run's evaluation from its
logged model the same way, and CCM (:mod:`oefray.orchestration.baseline`). The driver of an
evaluation never holds a test voxel.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oefray.errors import FeaturesError, OefrayError
from oefray.io.bundle import ModelBundle
from oefray.io.manifest import FeaturesManifest
from oefray.orchestration.inference import ProgressFn, predict_windows  # noqa: F401 (re-export)
from oefray.tracking.names import (
    COMMAND_TAG,
    EVALUATES_TAG,
    PARENT_RUN_ID_TAG,
    floor_metrics,
    rmse_metric_name,
)

#: The per-epoch metrics of Fig. 3 (training curves).
CURVE_METRICS: tuple[str, ...] = ("loss", "val_loss", rmse_metric_name("val", "OEF"))

#: Test scans drawn in ``oef_maps.png`` (Fig. 4), the first in table order: the paper's 10 test
#: subjects. A figure of every scan of a large cohort would be unreadable, and its size (and the
#: driver's memory drawing it) would grow with the cohort; every scan's maps are logged anyway.
FIGURE_SCANS: int = 10


def log_features_inputs(
    run,
    features: Path,
    manifest: FeaturesManifest,
    train_subjects: list[str],
    test_subjects: list[str],
) -> None:
    """Record what a method learned from and was tested on as MLflow dataset inputs (the runs
    table's Dataset column): the features folder, digested over the subjects of each side."""
    for name, subjects, context in (
        ("features-train", train_subjects, "training"),
        ("features-test", test_subjects, "evaluation"),
    ):
        run.log_dataset_input(
            name=name,
            source=str(features),
            digest=manifest.digest(subjects),
            context=context,
            profile={
                "subjects": list(subjects),
                "voxels": sum(manifest.subjects[s].rows for s in subjects),
            },
        )


def load_bundle(tracker: Any, model_uri_or_run_id: str) -> ModelBundle:
    """The :class:`ModelBundle` logged as a run's model (or at a model URI)."""
    model, files = tracker.load_model_bundle(model_uri_or_run_id)
    return ModelBundle.from_files(model, files, model_uri_or_run_id)


def log_outputs(
    run, outputs: Mapping[str, Any], train_mean: np.ndarray, out_dir: Path
) -> tuple[Any, dict[str, float]]:
    """Log any method's evaluation from its per-scan results (their maps are logged already):
    test and floor metrics, Table 1 CSV, Fig. 4 and, where the scans carry labels, the
    per-region table and lesion contrast (:func:`log_regions`).

    Parameters
    ----------
    outputs : mapping of str to ScanOutput
        Each test scan's :class:`oefray.orchestration.inference.ScanOutput`, in table order.
    train_mean : (5,) array
        The training subjects' mean parameters: the floor predicts it for every voxel.
    out_dir : Path
        Scratch folder of the files logged.

    Returns
    -------
    (pandas.DataFrame, dict)
        The Table 1 frame and every logged metric by name.

    Raises
    ------
    OefrayError
        When no test scan has a voxel with a prediction and a truth.
    """
    from oefray import reports
    from oefray.ml.metrics import per_subject_rmse_from_sums

    totals = _pooled_sums(outputs)
    rows, columns = per_subject_rmse_from_sums(totals)
    table = reports.rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
    patient_mean = {name: float(columns[name][-1]) for name in columns}
    pooled, floor = pooled_and_floor(outputs, train_mean)
    logged = run.log_test_metrics(pooled, patient_mean)
    floor_logged = floor_metrics(floor)
    run.log_metrics(floor_logged)
    logged.update(floor_logged)
    out_dir.mkdir(parents=True, exist_ok=True)
    run.log_artifact_file(reports.write_rmse_csv(table, out_dir / "rmse_per_patient.csv"))
    rmse_oef = dict(zip(rows[:-1], columns["OEF"][:-1].tolist(), strict=True))
    figure = [
        (k, o.truth_slice, o.pred_slice, rmse_oef.get(k, float("nan")))
        for k, o in outputs.items()
        if o.truth_slice is not None
    ][:FIGURE_SCANS]
    outlines = {k: o.outline for k, o in outputs.items() if o.outline is not None}
    run.log_artifact_file(
        reports.plot_oef_maps(figure, out_dir / "oef_maps.png", outlines=outlines)
    )
    if any(o.labelled for o in outputs.values()):
        logged.update(log_regions(run, outputs_report(outputs, train_mean), out_dir))
    return table, logged


def _pooled_sums(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Each scan's pooled sums (:data:`oefray.ml.regions.POOLED_REGION`), by scan key."""
    from oefray.ml.regions import POOLED_REGION

    totals = {
        k: o.sums[POOLED_REGION] for k, o in outputs.items() if POOLED_REGION in (o.sums or {})
    }
    if not totals:
        raise OefrayError(
            None, f"no voxel of the test scans ({', '.join(outputs)}) has a prediction and a truth"
        )
    return totals


def pooled_and_floor(
    outputs: Mapping[str, Any], train_mean: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """The pooled test RMSE of each quantity (``TABLE_COLUMNS``) over the scans' voxels, and the
    floor's (every voxel given the training mean ``train_mean``), from their sums."""
    from oefray.ml.metrics import TABLE_COLUMNS, pooled_rmse_from_sums
    from oefray.ml.regions import POOLED_REGION, floor_from_sums, merge_sums

    totals = _pooled_sums(outputs)
    pooled = merge_sums(*({POOLED_REGION: t} for t in totals.values()))
    floor = floor_from_sums(pooled, train_mean)[POOLED_REGION]
    return pooled_rmse_from_sums(totals), {q: floor[q] for q in TABLE_COLUMNS}


def outputs_report(outputs: Mapping[str, Any], train_mean: np.ndarray):
    """The :class:`oefray.ml.regions.RegionReport` of per-scan results (their sums against the
    truth and lesion contrasts; :func:`oefray.ml.regions.report_from_sums`)."""
    from oefray.ml.regions import report_from_sums

    return report_from_sums(
        {k: o.sums for k, o in outputs.items() if o.sums},
        train_mean,
        {k: o.contrast for k, o in outputs.items() if o.contrast is not None},
    )


def log_regions(run, report, out_dir: Path) -> dict[str, float]:
    """Log a :class:`oefray.ml.regions.RegionReport`: RMSE per region beside the floor, lesion
    contrast beside the truth's, as metrics, ``rmse_per_region.csv`` and ``lesion_contrast.csv``.

    Returns
    -------
    dict of str to float
        The logged metrics by name.
    """
    from oefray.tracking.names import LESION_CONTRAST_METRICS, region_metrics

    logged = {**region_metrics("test", report.rmse), **region_metrics("floor", report.floor)}
    summary = report.contrast_summary()
    logged.update({LESION_CONTRAST_METRICS[k]: v for k, v in summary.items() if np.isfinite(v)})
    run.log_metrics(logged)
    for path in write_region_tables(report, out_dir):
        run.log_artifact_file(path)
    return logged


def write_region_tables(report, out_dir: Path) -> list[Path]:
    """``rmse_per_region.csv`` (region, method = model or floor, each quantity's RMSE, voxels)
    and, where a test scan has a lesion, ``lesion_contrast.csv`` (one row per scan)."""
    import pandas as pd

    rows = [
        {"region": region, "method": method, **values}
        for method, by_region in (("model", report.rmse), ("floor", report.floor))
        for region, values in by_region.items()
    ]
    columns = ["region", "method", "S0", "R2", "Y", "v", "chi_nb", "OEF", "voxels"]
    frame = pd.DataFrame(rows, columns=columns).sort_values(["region", "method"], kind="stable")
    written = [out_dir / "rmse_per_region.csv"]
    frame.to_csv(written[0], index=False, float_format="%.6g")
    if report.contrast:
        contrast = pd.DataFrame([{"scan": k, **c.to_dict()} for k, c in report.contrast.items()])
        written.append(out_dir / "lesion_contrast.csv")
        contrast.to_csv(written[1], index=False, float_format="%.6g")
    return written


def evaluate_model(
    run,
    bundle: ModelBundle,
    features: Path,
    test_subjects: list[str],
    manifest: FeaturesManifest,
    history: list[dict[str, Any]],
    out_dir: Path,
    *,
    gpus: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Any, dict[str, float]]:
    """A trained model's test tables, figures and maps (plus Fig. 3 from ``history``), logged to
    ``run``, by batch inference over the test scans of ``features``
    (:func:`oefray.orchestration.inference.run_inference`): the workers log each scan's maps
    under ``maps/`` themselves, the driver reduces their sums (:func:`log_outputs`).

    Call inside a Ray runtime.

    Parameters
    ----------
    run : TrackedRun
        The run to log to.
    bundle : ModelBundle
        The model, checked against the features' options.
    features : Path
        The features folder (with ground truth) holding ``test_subjects``.
    test_subjects : list of str
        The test scans, in table order.
    manifest : FeaturesManifest
        The features' manifest.
    history : list of dict
        Per-epoch metrics (:data:`CURVE_METRICS`) for the training curves.
    out_dir : Path
        Scratch folder of the files logged.
    gpus : bool
        One GPU per inference actor.
    progress : callable, optional
        ``progress(done, total, message)`` after each scan.

    Returns
    -------
    (pandas.DataFrame, dict)
        The Table 1 frame and every logged metric by name.

    Raises
    ------
    FeaturesError
        Features without ground truth (nothing to evaluate against).
    """
    from oefray import reports
    from oefray.orchestration.inference import MapsTarget, run_inference

    if not manifest.has_truth:
        raise FeaturesError(features, "features carry no ground truth: nothing to evaluate against")
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {k: [h[k] for h in history] for k in CURVE_METRICS}
    run.log_artifact_file(reports.plot_training_curves(curves, out_dir / "training_curves.png"))
    result = run_inference(
        bundle,
        features,
        test_subjects,
        MapsTarget.mlflow_run(run.tracker.tracking_uri, run.run_id),
        with_targets=True,
        gpus=gpus,
        progress=progress,
        slices_for=set(test_subjects[:FIGURE_SCANS]),
    )
    return log_outputs(run, result.scans, bundle.y_scaler.mean, out_dir)


@dataclass
class EvaluateResult:
    """What ``oefray evaluate`` logged: a new run, child of the training run it re-evaluated."""

    run_id: str
    evaluates: str
    features: str
    table: Any
    test_metrics: dict[str, float]


def evaluate(
    run_id: str,
    *,
    features: str | Path | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus: bool = False,
    progress: ProgressFn | None = None,
) -> EvaluateResult:
    """Recompute the test tables, figures and maps of a training run, into a new MLflow run.

    Uses the run's own model, scalers, window and test subjects; ``features`` overrides the
    features folder recorded in the run (e.g. the same cohort preprocessed elsewhere), and must
    have been made with the model's preprocessing options. The new run is a child of the
    training run (tags ``mlflow.parentRunId`` and ``oefray.evaluates``, name
    ``<run name>-evaluate-<n>``): the training run's own metrics are never overwritten. The
    test scans are predicted by batch inference (:func:`evaluate_model`) on the Ray cluster at
    ``address`` (or ``RAY_ADDRESS``), else on a local runtime started for the command with
    ``workers`` CPUs (default: the machine's).

    Parameters
    ----------
    run_id : str
        MLflow run id of a training run.
    features : path, optional
        Features folder (default: the run's).
    tracking_uri : str, optional
        The MLflow store.
    address : str, optional
        Ray cluster address.
    workers : int, optional
        CPUs of a local Ray runtime.
    gpus : bool
        One GPU per inference actor.
    progress : callable, optional
        ``progress(done, total, message)`` after each test scan.

    Raises
    ------
    FeaturesError
        Features made with other options than the model's, of an incompatible format, without
        ground truth, or without the run's test subjects.
    """
    import os

    from oefray.orchestration.runtime import check_gpus, ray_runtime
    from oefray.tracking import Tracker

    if workers is not None and workers < 1:
        raise OefrayError(None, f"--workers must be >= 1, got {workers}")
    tracker = Tracker.from_uri(tracking_uri)
    trained = tracker.get_run(run_id)
    params = trained.data.params
    bundle = load_bundle(tracker, run_id)
    root = Path(features or params.get("features", "")).resolve()
    manifest = FeaturesManifest.load(root)
    bundle.check_features(manifest, root)
    if not manifest.has_truth:
        raise FeaturesError(root, "features carry no ground truth: nothing to evaluate against")
    test_subjects = [s for s in params.get("test_subjects", "").split(",") if s]
    if not test_subjects:
        raise OefrayError(None, f"MLflow run {run_id} records no test subjects")
    missing = [s for s in test_subjects if s not in manifest.subjects]
    if missing:
        raise FeaturesError(
            root, f"lacks the run's test subject(s) {', '.join(missing)}; give --features"
        )
    history = {key: [v for _, v in tracker.metric_history(run_id, key)] for key in CURVE_METRICS}
    n_epochs = min(len(v) for v in history.values())
    epochs = [{k: history[k][i] for k in history} for i in range(n_epochs)]
    experiment = tracker.client.get_experiment(trained.info.experiment_id).name
    earlier = tracker.child_runs(run_id, {COMMAND_TAG: "evaluate"})
    name = f"{trained.info.run_name or run_id[:8]}-evaluate-{len(earlier) + 1}"
    tags = {COMMAND_TAG: "evaluate", PARENT_RUN_ID_TAG: run_id, EVALUATES_TAG: run_id}
    run_params = {"evaluates": run_id, "features": str(root), "test_subjects": test_subjects}
    with ray_runtime(address, workers or os.cpu_count() or 1):
        check_gpus(gpus, 1, address)  # before the MLflow run: a usage error leaves no run
        with (
            tracker.tracked_run(experiment, run_name=name, tags=tags, params=run_params) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            run.log_dataset_input(
                name="features-test",
                source=str(root),
                digest=manifest.digest(test_subjects),
                context="evaluation",
                profile={"subjects": test_subjects},
            )
            table, metrics = evaluate_model(
                run,
                bundle,
                root,
                test_subjects,
                manifest,
                epochs,
                Path(tmp),
                gpus=gpus,
                progress=progress,
            )
    return EvaluateResult(run.run_id, run_id, str(root), table, metrics)
