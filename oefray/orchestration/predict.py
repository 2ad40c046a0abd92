"""``oefray predict``: a trained model applied to new data.

New BIDS data (any echo scheme, with or without ground truth) goes through the same
``preprocess`` path as training data, is cut into the same windows, and comes out as NIfTI maps
of the five parameters and OEF on each subject's grid, written as a whole (a hidden folder
renamed into place).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray.config import PredictConfig
from oefray.errors import OefrayError


@dataclass
class PredictResult:
    """What a predict run wrote (serialised into ``results.json``)."""

    out: str
    model: str
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rmse: dict[str, float] | None = None
    seconds: float = 0.0
    #: With ground truth and labels: RMSE per region (model and floor) and lesion contrast.
    regions: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "predict",
            "out": self.out,
            "model": self.model,
            "subjects": self.subjects,
            "rmse": self.rmse,
            "regions": self.regions,
            "seconds": round(self.seconds, 2),
        }


def _write_maps(
    folder: Path,
    manifest,
    windows,
    pred: np.ndarray,
    result: PredictResult,
    train_mean: np.ndarray | None = None,
) -> None:
    """Every subject's maps into ``folder``, plus the per-patient RMSE table with ground truth."""
    from oefray.io.manifest import scan_prefix
    from oefray.io.maps import subject_dir, write_prediction_maps
    from oefray.ml.metrics import oef_percent, per_subject_rmse, pooled_rmse
    from oefray.physics.constants import PARAMETERS
    from oefray.reports import rmse_table_frame, write_rmse_csv

    for label, record in manifest.subjects.items():
        sel = windows.subject == label
        values = {p: pred[sel, i] for i, p in enumerate(PARAMETERS)}
        values["OEF"] = oef_percent(pred[sel, PARAMETERS.index("Y")])
        write_prediction_maps(
            subject_dir(folder, label),
            scan_prefix(label, record).removeprefix("sub-"),
            values,
            windows.idx[sel],
            record.shape,
            np.asarray(record.affine),
        )
        result.subjects[label] = {
            "voxels": record.rows,
            "predicted": int(sel.sum()),
            "echo_times_s": list(record.echo_times_s),
        }
    if manifest.has_truth and windows.y is not None and len(windows):
        rows, columns = per_subject_rmse(pred, windows.y, windows.subject)
        frame = rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
        write_rmse_csv(frame, folder / "rmse_per_patient.csv")
        result.rmse = pooled_rmse(pred, windows.y)
        if windows.labels and train_mean is not None:  # per tissue class, lesion contrast
            from oefray.orchestration.evaluate import region_report, write_region_tables

            report = region_report(
                pred, windows.y, train_mean, windows.subject, windows.idx, windows.labels, manifest
            )
            write_region_tables(report, folder)
            result.regions = {
                "rmse": report.rmse,
                "floor": report.floor,
                "contrast": {k: c.to_dict() for k, c in report.contrast.items()},
            }


def predict(model_uri: str, dataset: str | Path, out: str | Path, config=None) -> PredictResult:
    """Predict QQ parameter and OEF maps for every subject of a BIDS dataset.

    Parameters
    ----------
    model_uri : str
        A model URI (``models:/<id>``) or the MLflow run id of a training run.
    dataset : path
        BIDS dataset (DESIGN.md §4), any echo scheme; ground truth optional.
    out : path
        Folder of the maps, a BIDS derivative written as a whole (a hidden folder renamed into
        place): ``sub-<L>/anat/`` with ``sub-<L>_desc-pred_R2map``, ``_desc-pred_S0map``,
        ``_desc-nbpred_Chimap``, ``_desc-Y_pred``, ``_desc-v_pred``, ``_desc-OEF_pred``
        (``.nii.gz``, each with a JSON sidecar; names: :mod:`oefray.io.names`), and
        ``rmse_per_patient.csv`` with ground truth.
    config : PredictConfig, optional
        Ray runtime of the preprocessing step, MLflow store holding the model, ``force``.
    """
    from oefray import __version__
    from oefray.io import features as fio
    from oefray.io.files import atomic_folder
    from oefray.io.locks import replacing
    from oefray.io.manifest import FeaturesManifest
    from oefray.io.maps import describe_maps_dataset
    from oefray.io.outputs import check_output, mark_output
    from oefray.ml.windows import make_windows_table
    from oefray.orchestration.evaluate import load_bundle, predict_windows
    from oefray.orchestration.preprocess import preprocess
    from oefray.tracking import Tracker, resolve_tracking_uri
    from oefray.tracking.models import model_reads_store

    t0 = time.perf_counter()
    config = config or PredictConfig()
    out = Path(out).resolve()
    check_output(out, force=config.force, inputs=[Path(dataset)])
    if model_reads_store(model_uri):  # an MLflow store that is there; it is only read
        tracker = Tracker.for_reading(config.tracking_uri)
    else:  # a model folder: no store needed, none created
        tracker = Tracker(resolve_tracking_uri(config.tracking_uri, create=False))
    bundle = load_bundle(tracker, model_uri)
    result = PredictResult(out=str(out), model=model_uri)
    with tempfile.TemporaryDirectory(prefix="oefray-predict-") as tmp:
        features = Path(tmp) / "features"
        pre = preprocess(dataset, features, config.preprocess_config(bundle.normalize))
        if not pre.ok:
            raise OefrayError(None, next(iter(pre.failed.values())))
        manifest = FeaturesManifest.load(features)
        bundle.check_features(manifest, features)
        windows = make_windows_table(
            fio.read_features(features), bundle.window, with_targets=manifest.has_truth
        )
        pred = predict_windows(bundle, windows.x)
        with replacing(out, "predict"), atomic_folder(out, replace=config.force) as partial:
            mark_output(partial, f"oefray predict ({model_uri})", __version__)
            describe_maps_dataset(
                partial,
                f"Maps predicted by oefray {__version__} (oefray predict) with the model "
                f"{model_uri} from the BIDS dataset {Path(dataset).resolve()}.",
                other_files=(
                    "results.json",
                    "rmse_per_patient.csv",
                    "rmse_per_region.csv",
                    "lesion_contrast.csv",
                ),
            )
            _write_maps(partial, manifest, windows, pred, result, bundle.y_scaler.mean)
            result.seconds = time.perf_counter() - t0
    return result
