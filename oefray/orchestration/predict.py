"""``oefray predict``: a trained model applied to new data.

New BIDS data (any echo scheme, with or without ground truth) goes through the same
``preprocess`` path as training data, is cut into the same windows by batch inference on Ray Data
(:mod:`oefray.orchestration.inference`: one scan per call, its maps written by the worker), and
comes out as NIfTI maps of the five parameters and OEF on each subject's grid, written as a whole
(a hidden folder renamed into place).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oefray.config import PredictConfig
from oefray.errors import OefrayError
from oefray.orchestration.inference import ProgressFn


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


def _summarise(folder: Path, manifest, inferred, result: PredictResult, train_mean) -> None:
    """``result`` from the scans' outputs (their maps are written), and, with ground truth, the
    per-patient RMSE table and, with labels, the per-region tables into ``folder``, from the
    scans' sums."""
    from oefray.ml.metrics import per_subject_rmse_from_sums, pooled_rmse_from_sums
    from oefray.ml.regions import POOLED_REGION
    from oefray.orchestration.evaluate import outputs_report, write_region_tables
    from oefray.reports import rmse_table_frame, write_rmse_csv

    for label, record in manifest.subjects.items():
        result.subjects[label] = {
            "voxels": record.rows,
            "predicted": inferred.scans[label].windows,
            "echo_times_s": list(record.echo_times_s),
        }
    outputs = inferred.scans
    totals = {
        k: o.sums[POOLED_REGION] for k, o in outputs.items() if POOLED_REGION in (o.sums or {})
    }
    if not manifest.has_truth or not totals:
        return
    rows, columns = per_subject_rmse_from_sums(totals)
    frame = rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
    write_rmse_csv(frame, folder / "rmse_per_patient.csv")
    result.rmse = pooled_rmse_from_sums(totals)
    if any(o.labelled for o in outputs.values()):  # per tissue class, lesion contrast
        report = outputs_report(outputs, train_mean)
        write_region_tables(report, folder)
        result.regions = {
            "rmse": report.rmse,
            "floor": report.floor,
            "contrast": {k: c.to_dict() for k, c in report.contrast.items()},
        }


def predict(
    model_uri: str,
    dataset: str | Path,
    out: str | Path,
    config=None,
    *,
    progress: ProgressFn | None = None,
) -> PredictResult:
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
        Ray runtime (of the preprocessing and the inference), ``gpus``, MLflow store holding the
        model, ``force``.
    progress : callable, optional
        ``progress(done, total, message)``: the preprocessing's slabs, then the scans predicted.

    Notes
    -----
    One Ray runtime for the whole command (the cluster at ``config.address``, else a local one
    with ``config.workers`` CPUs): the data is preprocessed into a temporary features folder,
    then every scan is predicted by batch inference
    (:func:`oefray.orchestration.inference.run_inference`), whose workers write the maps into
    the output being made; the tables come from the scans' sums. On a cluster, the temporary
    folder (the system's temp dir) and ``out`` must be storage every node sees.
    """
    from oefray import __version__
    from oefray.io.files import atomic_folder
    from oefray.io.locks import replacing
    from oefray.io.manifest import FeaturesManifest
    from oefray.io.maps import describe_maps_dataset
    from oefray.io.outputs import check_output, mark_output
    from oefray.orchestration.evaluate import load_bundle
    from oefray.orchestration.inference import MapsTarget, run_inference
    from oefray.orchestration.preprocess import preprocess
    from oefray.orchestration.runtime import check_gpus, ray_runtime
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
    with (
        ray_runtime(config.address, config.workers),
        tempfile.TemporaryDirectory(prefix="oefray-predict-") as tmp,
    ):
        check_gpus(config.gpus, 1, config.address)
        features = Path(tmp) / "features"
        pre = preprocess(
            dataset, features, config.preprocess_config(bundle.normalize), progress=progress
        )
        if not pre.ok:
            raise OefrayError(None, next(iter(pre.failed.values())))
        manifest = FeaturesManifest.load(features)
        bundle.check_features(manifest, features)
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
            inferred = run_inference(
                bundle,
                features,
                list(manifest.subjects),
                MapsTarget.folder(partial),
                with_targets=manifest.has_truth,
                gpus=config.gpus,
                progress=progress,
                slices_for=(),  # predict draws no figure
            )
            _summarise(partial, manifest, inferred, result, bundle.y_scaler.mean)
            result.seconds = time.perf_counter() - t0
    return result
