"""Evaluation: a method's test predictions → metrics, Table 1, maps and figures → MLflow.

Every method is evaluated the same way (:func:`log_evaluation`): the LSTM after training
(:func:`evaluate_model`), CCM (:mod:`oefray.orchestration.baseline`), and ``oefray evaluate``
(:func:`evaluate`), which recomputes a training run's evaluation from its logged model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oefray.io.bundle import ModelBundle
from oefray.io.manifest import FeaturesManifest
from oefray.tracking.names import (
    COMMAND_TAG,
    EVALUATES_TAG,
    PARENT_RUN_ID_TAG,
    floor_metrics,
    rmse_metric_name,
)

#: The per-epoch metrics of Fig. 3 (training curves).
CURVE_METRICS: tuple[str, ...] = ("loss", "val_loss", rmse_metric_name("val", "OEF"))


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


def predict_windows(bundle: ModelBundle, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Parameters (n, 5) in physical units for windows ``x`` (n, L, 4) in physical units."""
    if len(x) == 0:
        return np.zeros((0, len(bundle.targets)), np.float32)
    pred = bundle.model.predict(bundle.x_scaler.transform(x), batch_size=batch_size, verbose=0)
    return bundle.y_scaler.inverse_transform(np.asarray(pred, dtype=np.float32))


def log_evaluation(
    run,
    pred: np.ndarray,
    true: np.ndarray,
    subject: np.ndarray,
    idx: np.ndarray,
    test_subjects: list[str],
    manifest: FeaturesManifest,
    train_mean: np.ndarray,
    out_dir: Path,
    labels: Mapping[str, np.ndarray] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Log any method's test predictions the same way: metrics, Table 1 CSV, maps, Fig. 4, and,
    with ``labels``, the per-region table and lesion contrast (:func:`log_regions`).

    Parameters
    ----------
    pred, true : (n, 5) arrays
        Predicted and true parameters (physical units) of the test voxels.
    subject, idx : (n,) arrays
        Each voxel's subject and C-order index in that subject's grid.
    train_mean : (5,) array
        The training subjects' mean parameters: the floor predicts it for every voxel.
    labels : mapping of str to (n,) arrays, optional
        The test voxels' ``tissue`` and ``lesion`` labels (:attr:`Windows.labels`).

    Returns
    -------
    (pandas.DataFrame, dict)
        The Table 1 frame and every logged metric by name.
    """
    from oefray import reports
    from oefray.ml.metrics import per_subject_rmse, pooled_rmse

    rows, columns = per_subject_rmse(pred, true, subject)
    table = reports.rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
    patient_mean = {name: float(columns[name][-1]) for name in columns}
    logged = run.log_test_metrics(pooled_rmse(pred, true), patient_mean)
    # the floor: every test voxel gets the training subjects' mean parameters
    floor = pooled_rmse(np.broadcast_to(np.asarray(train_mean, np.float64), true.shape), true)
    floor_logged = floor_metrics(floor)
    run.log_metrics(floor_logged)
    logged.update(floor_logged)
    out_dir.mkdir(parents=True, exist_ok=True)
    run.log_artifact_file(reports.write_rmse_csv(table, out_dir / "rmse_per_patient.csv"))
    rmse_oef = {label: float(columns["OEF"][rows.index(label)]) for label in test_subjects}
    lesion = None if not labels or "lesion" not in labels else np.asarray(labels["lesion"]) > 0
    panels = _write_maps(
        pred, true, subject, idx, test_subjects, manifest, out_dir / "maps", lesion
    )
    run.log_artifact_dir(out_dir / "maps", "maps")
    figure = [(label, truth, guess, rmse_oef[label]) for label, truth, guess, _ in panels]
    outlines = {label: outline for label, _, _, outline in panels if outline is not None}
    run.log_artifact_file(
        reports.plot_oef_maps(figure, out_dir / "oef_maps.png", outlines=outlines)
    )
    if labels:
        logged.update(
            log_regions(run, pred, true, train_mean, subject, idx, labels, manifest, out_dir)
        )
    return table, logged


def log_regions(
    run,
    pred: np.ndarray,
    true: np.ndarray,
    train_mean: np.ndarray,
    subject: np.ndarray,
    idx: np.ndarray,
    labels: Mapping[str, np.ndarray],
    manifest: FeaturesManifest,
    out_dir: Path,
) -> dict[str, float]:
    """RMSE per tissue class and lesion contrast (:func:`oefray.ml.regions.evaluate_regions`),
    beside the floor and the truth: metrics, ``rmse_per_region.csv`` and ``lesion_contrast.csv``.

    Returns
    -------
    dict of str to float
        The logged metrics by name.
    """
    from oefray.tracking.names import LESION_CONTRAST_METRICS, region_metrics

    report = region_report(pred, true, train_mean, subject, idx, labels, manifest)
    logged = {**region_metrics("test", report.rmse), **region_metrics("floor", report.floor)}
    summary = report.contrast_summary()
    logged.update({LESION_CONTRAST_METRICS[k]: v for k, v in summary.items() if np.isfinite(v)})
    run.log_metrics(logged)
    for path in write_region_tables(report, out_dir):
        run.log_artifact_file(path)
    return logged


def region_report(pred, true, train_mean, subject, idx, labels, manifest: FeaturesManifest):
    """:func:`oefray.ml.regions.evaluate_regions` with each scan's grid and class names from
    the features' manifest."""
    from oefray.ml.regions import evaluate_regions

    keys = list(dict.fromkeys(np.asarray(subject).astype(str)))
    grids = {k: (manifest.subjects[k].shape, manifest.subjects[k].affine) for k in keys}
    names: dict[int, str] = {}
    for k in keys:
        names.update({int(c): n for c, n in manifest.subjects[k].label_names.items()})
    return evaluate_regions(pred, true, train_mean, subject, idx, labels, grids, names)


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


def _write_maps(
    pred: np.ndarray,
    true: np.ndarray,
    subject: np.ndarray,
    idx: np.ndarray,
    labels: list[str],
    manifest: FeaturesManifest,
    maps_dir: Path,
    lesion: np.ndarray | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Predicted NIfTI maps of every subject; returns a slice of OEF truth and prediction of
    each (the mid slice, or the slice with the most lesion voxels where ``lesion`` marks some),
    with the lesion's outline on it (None without a lesion)."""
    from oefray.io.manifest import scan_prefix
    from oefray.io.maps import scatter_map, write_prediction_maps
    from oefray.ml.metrics import oef_percent
    from oefray.physics.constants import PARAMETERS

    y = PARAMETERS.index("Y")
    panels = []
    for label in labels:
        record = manifest.subjects[label]
        shape, affine = record.shape, np.asarray(record.affine)
        sel = subject == label
        values = {p: pred[sel, i] for i, p in enumerate(PARAMETERS)}
        values["OEF"] = oef_percent(pred[sel, y])
        stem = scan_prefix(label, record).removeprefix("sub-")
        write_prediction_maps(maps_dir, stem, values, idx[sel], shape, affine)
        z, outline = shape[2] // 2, None
        if lesion is not None and lesion[sel].any():
            mask = scatter_map(lesion[sel].astype(np.float32), idx[sel], shape, fill=0.0) > 0
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            outline = mask[:, :, z]
        truth = scatter_map(oef_percent(true[sel, y]), idx[sel], shape)[:, :, z]
        guess = scatter_map(values["OEF"], idx[sel], shape)[:, :, z]
        panels.append((label, truth, guess, outline))
    return panels


def evaluate_model(
    run,
    bundle: ModelBundle,
    test: Any,
    test_subjects: list[str],
    manifest: FeaturesManifest,
    history: list[dict[str, Any]],
    out_dir: Path,
) -> tuple[Any, dict[str, float]]:
    """A trained model's test tables, figures and maps (plus Fig. 3 from ``history``), logged to
    ``run``; ``test`` is the test subjects' :class:`oefray.ml.windows.Windows`."""
    from oefray import reports

    pred = predict_windows(bundle, test.x)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {k: [h[k] for h in history] for k in CURVE_METRICS}
    run.log_artifact_file(reports.plot_training_curves(curves, out_dir / "training_curves.png"))
    return log_evaluation(
        run,
        pred,
        test.y,
        test.subject,
        test.idx,
        test_subjects,
        manifest,
        bundle.y_scaler.mean,
        out_dir,
        labels=test.labels,
    )


@dataclass
class EvaluateResult:
    """What ``oefray evaluate`` logged: a new run, child of the training run it re-evaluated."""

    run_id: str
    evaluates: str
    features: str
    table: Any
    test_metrics: dict[str, float]


def evaluate(
    run_id: str, *, features: str | Path | None = None, tracking_uri: str | None = None
) -> EvaluateResult:
    """Recompute the test tables, figures and maps of a training run, into a new MLflow run.

    Uses the run's own model, scalers, window and test subjects; ``features`` overrides the
    features folder recorded in the run (e.g. the same cohort preprocessed elsewhere), and must
    have been made with the model's preprocessing options. The new run is a child of the
    training run (tags ``mlflow.parentRunId`` and ``oefray.evaluates``, name
    ``<run name>-evaluate-<n>``): the training run's own metrics are never overwritten.

    Raises
    ------
    FeaturesError
        Features made with other options than the model's, or of an incompatible format.
    """
    from oefray.io import features as fio
    from oefray.ml.windows import make_windows_table
    from oefray.tracking import Tracker

    tracker = Tracker.from_uri(tracking_uri)
    trained = tracker.get_run(run_id)
    params = trained.data.params
    bundle = load_bundle(tracker, run_id)
    root = Path(features or params.get("features", "")).resolve()
    manifest = FeaturesManifest.load(root)
    bundle.check_features(manifest, root)
    test_subjects = [s for s in params.get("test_subjects", "").split(",") if s]
    test = make_windows_table(fio.read_features(root, test_subjects), bundle.window, test_subjects)
    history = {key: [v for _, v in tracker.metric_history(run_id, key)] for key in CURVE_METRICS}
    n_epochs = min(len(v) for v in history.values())
    epochs = [{k: history[k][i] for k in history} for i in range(n_epochs)]
    experiment = tracker.client.get_experiment(trained.info.experiment_id).name
    earlier = tracker.child_runs(run_id, {COMMAND_TAG: "evaluate"})
    name = f"{trained.info.run_name or run_id[:8]}-evaluate-{len(earlier) + 1}"
    tags = {COMMAND_TAG: "evaluate", PARENT_RUN_ID_TAG: run_id, EVALUATES_TAG: run_id}
    run_params = {"evaluates": run_id, "features": str(root), "test_subjects": test_subjects}
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
            run, bundle, test, test_subjects, manifest, epochs, Path(tmp)
        )
    return EvaluateResult(run.run_id, run_id, str(root), table, metrics)
