"""``oefray predict`` and ``oefray evaluate``: a trained model applied to new data, and a run's
evaluation recomputed.

``predict`` sends new BIDS data (any echo scheme, with or without ground truth) through the same
``preprocess`` path as training data, cuts the same windows, and writes NIfTI maps of the five
parameters and OEF on each subject's grid.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray.config import PreprocessConfig
from oefray.errors import OefrayError


def _bundle(tracker, model_uri_or_run_id: str):
    from oefray.ml.scaling import Standardizer
    from oefray.ml.windows import WindowConfig

    model, meta = tracker.load_model_bundle(model_uri_or_run_id)
    missing = {"scalers", "window"} - set(meta)
    if missing:
        raise OefrayError(
            None, f"model {model_uri_or_run_id} lacks {sorted(missing)}: not an oefray model"
        )
    x_scaler = Standardizer.from_dict(meta["scalers"]["x"])
    y_scaler = Standardizer.from_dict(meta["scalers"]["y"])
    return model, x_scaler, y_scaler, WindowConfig(**meta["window"]), meta


@dataclass
class PredictResult:
    """What a predict run wrote (serialised into ``results.json``)."""

    out: str
    model: str
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    rmse: dict[str, float] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "predict",
            "out": self.out,
            "model": self.model,
            "subjects": self.subjects,
            "rmse": self.rmse,
            "seconds": round(self.seconds, 2),
        }


def predict(
    model_uri: str,
    dataset: str | Path,
    out: str | Path,
    *,
    workers: int = 2,
    address: str | None = None,
    tracking_uri: str | None = None,
    force: bool = False,
) -> PredictResult:
    """Predict QQ parameter and OEF maps for every subject of a BIDS dataset.

    Parameters
    ----------
    model_uri : str
        A model URI (``models:/<id>``) or the MLflow run id of a training run.
    dataset : path
        BIDS dataset (DESIGN.md §4), any echo scheme; ground truth optional.
    out : path
        Folder for ``sub-<L>_desc-<P>_pred.nii.gz`` (P in Y, v, R2, S0, chinb, OEF), written as a
        whole (a hidden folder renamed into place).
    workers, address
        Ray runtime for the preprocessing step.
    tracking_uri : str, optional
        MLflow store holding the model.
    force : bool
        Replace ``out`` if it exists.
    """
    from oefray.io import features as fio
    from oefray.io.maps import write_prediction_maps
    from oefray.ml.metrics import oef_percent, per_subject_rmse, pooled_rmse
    from oefray.ml.windows import make_windows_table
    from oefray.orchestration.preprocess import preprocess
    from oefray.orchestration.train import predict_windows
    from oefray.physics.constants import PARAMETERS
    from oefray.reports import rmse_table_frame, write_rmse_csv
    from oefray.tracking import Tracker

    t0 = time.perf_counter()
    out = Path(out).resolve()
    if out.exists() and not force:
        raise OefrayError(out, "already exists; use --force to replace it")
    tracker = Tracker.from_uri(tracking_uri)
    model, x_scaler, y_scaler, window, meta = _bundle(tracker, model_uri)
    normalize = meta.get("features", {}).get("options", {}).get("normalize", "none")
    result = PredictResult(out=str(out), model=model_uri)
    partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory(prefix="oefray-predict-") as tmp:
        features = Path(tmp) / "features"
        pre = preprocess(
            dataset,
            features,
            PreprocessConfig(workers=workers, normalize=normalize, address=address),
        )
        if not pre.ok:
            label, message = next(iter(pre.failed.items()))
            raise OefrayError(None, message)
        manifest = fio.read_manifest(features)
        assert manifest is not None  # preprocess just wrote it
        table = fio.read_features(features)
        with_truth = bool(manifest["has_truth"])
        windows = make_windows_table(table, window, with_targets=with_truth)
        pred = predict_windows(model, x_scaler, y_scaler, windows.x)
        try:
            partial.mkdir(parents=True)
            for label, entry in manifest["subjects"].items():
                sel = windows.subject == label
                values = {p: pred[sel, i] for i, p in enumerate(PARAMETERS)}
                values["OEF"] = oef_percent(pred[sel, PARAMETERS.index("Y")])
                write_prediction_maps(
                    partial, label, values, windows.idx[sel], entry["shape"], entry["affine"]
                )
                result.subjects[label] = {
                    "voxels": int(entry["rows"]),
                    "predicted": int(sel.sum()),
                    "echo_times_s": entry["echo_times_s"],
                }
            if with_truth and windows.y is not None and len(windows):
                rows, columns = per_subject_rmse(pred, windows.y, windows.subject)
                frame = rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
                write_rmse_csv(frame, partial / "rmse_per_patient.csv")
                result.rmse = pooled_rmse(pred, windows.y)
            result.seconds = time.perf_counter() - t0
            (partial / "results.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            if out.exists():
                shutil.rmtree(out)
            os.replace(partial, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return result


def evaluate(run_id: str, *, features: str | Path | None = None, tracking_uri: str | None = None):
    """Recompute the test tables, figures and maps of a training run and log them to it again.

    Uses the run's own model, scalers, window and test subjects; ``features`` overrides the
    features folder recorded in the run (e.g. the same cohort preprocessed elsewhere).

    Returns
    -------
    (pandas.DataFrame, dict)
        The Table 1 frame and the test metrics.
    """
    from oefray.io import features as fio
    from oefray.ml.windows import make_windows_table
    from oefray.orchestration.train import PreparedData, write_evaluation
    from oefray.tracking import Tracker

    tracker = Tracker.from_uri(tracking_uri)
    params = tracker.get_run(run_id).data.params
    model, x_scaler, y_scaler, window, _ = _bundle(tracker, run_id)
    root = Path(features or params.get("features", "")).resolve()
    manifest = fio.read_manifest(root)
    if manifest is None:
        raise OefrayError(root, "no manifest.json: not a features folder (use --features)")
    test_subjects = [s for s in params.get("test_subjects", "").split(",") if s]
    table = fio.read_features(root, test_subjects)
    test = make_windows_table(table, window, test_subjects)
    history = {
        key: [v for _, v in tracker.metric_history(run_id, key)]
        for key in ("loss", "val_loss", "val_rmse_OEF")
    }
    n_epochs = min(len(v) for v in history.values())
    empty = np.zeros((0,), np.float32)
    data = PreparedData(
        x_train=empty,
        y_train=empty,
        x_val=empty,
        y_val=empty,
        test=test,
        x_scaler=x_scaler,
        y_scaler=y_scaler,
        window=window,
        manifest=manifest,
        train_subjects=[],
        test_subjects=test_subjects,
        counts={},
    )
    epochs = [{k: history[k][i] for k in history} for i in range(n_epochs)]
    with tracker.resumed_run(run_id) as run, tempfile.TemporaryDirectory() as tmp:
        return write_evaluation(run, model, data, epochs, Path(tmp))
