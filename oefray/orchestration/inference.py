"""Batch inference of a method over the scans of a features folder, on Ray Data.

Pipeline: one row per scan key (``from_items``) → ``map_batches(batch_size=1)`` on a pool of
:class:`ScanPredictor` actors, each of which loads the method's model once (a picklable payload
shipped through the object store: :class:`LSTMPayload`, the ``.keras`` bytes and the bundle's
side files, or the CCM libraries of :mod:`oefray.orchestration.baseline`), then per call
predicts ONE scan (:meth:`ScanModel.predict_scan`: it reads the scan, checksums verified, and
returns its :class:`ScanArrays`), writes the scan's maps itself (into an output folder, or into
an MLflow run's ``maps/`` artifacts) and returns one small row (:class:`ScanOutput`): counts,
additive sums of squared errors per region and pooled (:func:`oefray.ml.regions.scan_region_sums`),
the scan's lesion contrast (:func:`oefray.ml.regions.scan_contrast`) and the 2-D OEF slices of
the figure. The driver only reduces those rows (:mod:`oefray.orchestration.evaluate`): it never
holds a window, a prediction or a truth array of the cohort.

:func:`scan_output` is the per-scan step on arrays already predicted: what every worker runs
after its method's prediction, so that every method's maps and numbers come out of one function.

Call :func:`run_inference` inside :func:`oefray.orchestration.runtime.ray_runtime`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from oefray.errors import OefrayError
from oefray.io.bundle import ModelBundle
from oefray.io.manifest import SubjectRecord
from oefray.ml.regions import LesionContrast

log = logging.getLogger(__name__)

#: Called as ``progress(scans_done, scans_total, message)`` (as preprocess's).
ProgressFn = Callable[[int, int, str], None]

#: The MLflow artifact folder of an evaluation's maps.
MAPS_ARTIFACT_DIR = "maps"

#: Models loaded by :class:`ScanPredictor` actors in this process (what an actor reports, so that
#: "once per actor" can be checked from the outside).
_LOADS = 0


def predict_windows(bundle: ModelBundle, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Parameters (n, 5) in physical units for windows ``x`` (n, L, 4) in physical units."""
    if len(x) == 0:
        return np.zeros((0, len(bundle.targets)), np.float32)
    pred = bundle.model.predict(bundle.x_scaler.transform(x), batch_size=batch_size, verbose=0)
    return bundle.y_scaler.inverse_transform(np.asarray(pred, dtype=np.float32))


# --------------------------------------------------------------------------------------------
# One scan: maps, sums, contrast, figure slices (no Ray here)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScanOutput:
    """What the evaluation of one scan leaves for the driver: numbers and 2-D slices only.

    Attributes
    ----------
    scan : str
        The scan key.
    voxels : int
        Rows of the scan's features.
    windows : int
        Windows predicted (voxels with a prediction).
    excluded, no_window : int
        Voxels dropped for a failed fit or a non-finite feature, and eligible voxels without a
        full window (:class:`oefray.ml.windows.Windows`).
    sums : dict or None
        :func:`oefray.ml.regions.scan_region_sums` (regions, and the pooled ``all``) against the
        truth; None without ground truth, empty for a scan without windows.
    contrast : LesionContrast or None
        The scan's OEF lesion contrast (None without truth, lesion or mirror region).
    pred_slice : ndarray of shape (X, Y), float32
        Predicted OEF (percent) of the figure's slice: the slice with the most lesion voxels,
        else the middle one; NaN outside the predicted voxels.
    truth_slice : ndarray of shape (X, Y), float32, or None
        The truth's OEF on the same slice (None without truth).
    outline : ndarray of shape (X, Y), bool, or None
        The lesion on that slice (None without lesion voxels).
    labelled : bool
        Whether the scan's features carry label columns (per-region evaluation).
    files : list of str
        The map files written (names).
    worker : int
        Process id of the worker that did the scan (the driver's for :func:`scan_output`).
    loads : int
        Models that worker had loaded when it did the scan (1 for an actor that loads once).
    """

    scan: str
    voxels: int
    windows: int
    excluded: int
    no_window: int
    sums: dict[str, dict[str, Any]] | None
    contrast: LesionContrast | None
    pred_slice: np.ndarray
    truth_slice: np.ndarray | None
    outline: np.ndarray | None
    labelled: bool
    files: list[str] = field(default_factory=list)
    worker: int = 0
    loads: int = 0

    def without_slices(self) -> ScanOutput:
        """This result without its figure slices (what the driver keeps of a scan the figure
        does not show: numbers only)."""
        import dataclasses

        empty = np.empty((0, 0), np.float32)
        return dataclasses.replace(self, pred_slice=empty, truth_slice=None, outline=None)

    def to_row(self) -> dict[str, np.ndarray]:
        """A one-row Ray Data batch (numbers, JSON strings and the three slices)."""
        shape = self.pred_slice.shape
        truth = self.truth_slice if self.truth_slice is not None else np.full(shape, np.nan)
        outline = self.outline if self.outline is not None else np.zeros(shape, bool)
        meta = {
            "sums": self.sums,
            "contrast": None if self.contrast is None else self.contrast.to_dict(),
            "has_truth": self.truth_slice is not None,
            "has_outline": self.outline is not None,
            "labelled": self.labelled,
            "files": self.files,
        }
        counts = ("voxels", "windows", "excluded", "no_window", "worker", "loads")
        return {
            "scan": np.array([self.scan]),
            **{k: np.array([int(getattr(self, k))], np.int64) for k in counts},
            "meta": np.array([json.dumps(meta)]),
            "error": np.array([""]),
            "pred_slice": self.pred_slice[None].astype(np.float32),
            "truth_slice": np.asarray(truth, np.float32)[None],
            "outline": np.asarray(outline, bool)[None],
        }

    @classmethod
    def from_row(cls, batch: Mapping[str, np.ndarray], i: int) -> ScanOutput:
        """Row ``i`` of a batch of :meth:`to_row` rows."""
        meta = json.loads(str(batch["meta"][i]))
        contrast = meta["contrast"]
        return cls(
            scan=str(batch["scan"][i]),
            voxels=int(batch["voxels"][i]),
            windows=int(batch["windows"][i]),
            excluded=int(batch["excluded"][i]),
            no_window=int(batch["no_window"][i]),
            sums=meta["sums"],
            contrast=None if contrast is None else LesionContrast.from_dict(contrast),
            pred_slice=np.array(batch["pred_slice"][i], np.float32),
            truth_slice=np.array(batch["truth_slice"][i], np.float32)
            if meta["has_truth"]
            else None,
            outline=np.array(batch["outline"][i], bool) if meta["has_outline"] else None,
            labelled=bool(meta["labelled"]),
            files=list(meta["files"]),
            worker=int(batch["worker"][i]),
            loads=int(batch["loads"][i]),
        )


def scan_output(
    key: str,
    record: SubjectRecord,
    pred: np.ndarray,
    true: np.ndarray | None,
    idx: np.ndarray,
    labels: Mapping[str, np.ndarray],
    maps_dir: str | os.PathLike[str] | None,
    *,
    excluded: int = 0,
    no_window: int = 0,
) -> ScanOutput:
    """Write one scan's predicted maps into ``maps_dir`` and sum up its evaluation.

    Parameters
    ----------
    key : str
        The scan key.
    record : SubjectRecord
        The scan's manifest record (grid, entities, class names).
    pred : ndarray of shape (n, 5)
        Predicted parameters (``PARAMETERS`` order), physical units.
    true : ndarray of shape (n, 5) or None
        The truth at the same voxels, if any.
    idx : ndarray of shape (n,), int64
        The voxels' C-order indices in the scan's grid.
    labels : mapping of str to ndarray of shape (n,)
        The voxels' ``tissue`` and ``lesion`` labels (may be empty).
    maps_dir : path or None
        Folder of the maps (created): ``<stem>_desc-..._pred.nii.gz`` with JSON sidecars
        (:func:`oefray.io.maps.write_prediction_maps`); None writes no map.
    excluded, no_window : int
        The scan's voxels without a prediction, by reason (for the counts).

    Returns
    -------
    ScanOutput
        ``worker`` is this process, ``loads`` what it has loaded so far.
    """
    from oefray.io.manifest import scan_prefix
    from oefray.io.maps import scatter_map, write_prediction_maps
    from oefray.ml.metrics import oef_percent
    from oefray.ml.regions import scan_contrast, scan_region_sums
    from oefray.physics.constants import PARAMETERS

    y = PARAMETERS.index("Y")
    shape, affine = record.shape, np.asarray(record.affine)
    idx = np.asarray(idx, np.int64)
    values = {p: pred[:, i] for i, p in enumerate(PARAMETERS)}
    values["OEF"] = oef_percent(pred[:, y])
    stem = scan_prefix(key, record).removeprefix("sub-")
    written = (
        []
        if maps_dir is None
        else write_prediction_maps(maps_dir, stem, values, idx, shape, affine)
    )
    # the figure's slice: the one with the most lesion voxels, else the middle one
    z, outline = shape[2] // 2, None
    lesion = np.asarray(labels["lesion"]) > 0 if "lesion" in labels else None
    if lesion is not None and lesion.any():
        mask = scatter_map(lesion.astype(np.float32), idx, shape, fill=0.0) > 0
        z = int(np.argmax(mask.sum(axis=(0, 1))))
        outline = mask[:, :, z]
    sums, contrast, truth_slice = None, None, None
    if true is not None:
        names = {int(c): n for c, n in record.label_names.items()}
        sums = scan_region_sums(pred, true, labels, names)
        contrast = scan_contrast(pred, true, idx, labels, names, shape, affine)
        truth_slice = scatter_map(oef_percent(true[:, y]), idx, shape)[:, :, z]
    return ScanOutput(
        scan=key,
        voxels=record.rows,
        windows=len(idx),
        excluded=int(excluded),
        no_window=int(no_window),
        sums=sums,
        contrast=contrast,
        pred_slice=scatter_map(values["OEF"], idx, shape)[:, :, z],
        truth_slice=truth_slice,
        outline=outline,
        labelled=bool(labels),
        files=[p.name for p in written],
        worker=os.getpid(),
        loads=_LOADS,
    )


# --------------------------------------------------------------------------------------------
# The method's model, shipped as plain data, loaded once per actor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ScanArrays:
    """A method's predictions of one scan, and what :func:`scan_output` needs beside them.

    Attributes
    ----------
    pred : ndarray of shape (n, 5)
        Predicted parameters (``PARAMETERS`` order), physical units.
    true : ndarray of shape (n, 5) or None
        The truth at the same voxels (None without ground truth).
    idx : ndarray of shape (n,), int64
        The voxels' C-order indices in the scan's grid.
    labels : mapping of str to ndarray of shape (n,)
        The voxels' ``tissue`` and ``lesion`` labels (may be empty).
    excluded, no_window : int
        The scan's voxels without a prediction, by reason.
    """

    pred: np.ndarray
    true: np.ndarray | None
    idx: np.ndarray
    labels: Mapping[str, np.ndarray]
    excluded: int = 0
    no_window: int = 0


class ScanModel(Protocol):
    """A method loaded in a worker: predicts scan ``key`` of a features folder (``record``: its
    manifest record, which the caller has read)."""

    def predict_scan(
        self, features: str, key: str, record: SubjectRecord, with_targets: bool
    ) -> ScanArrays: ...


class ModelPayload(Protocol):
    """A method as plain data for the object store; :meth:`load` gives the :class:`ScanModel`."""

    def load(self) -> ScanModel: ...


class LSTMScanModel:
    """A :class:`ModelBundle` as a :class:`ScanModel`: the scan's windows, predicted."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle

    def predict_scan(
        self, features: str, key: str, record: SubjectRecord, with_targets: bool
    ) -> ScanArrays:
        from oefray.orchestration.data import scan_windows

        windows = scan_windows(features, key, self.bundle.window, with_targets=with_targets)
        return ScanArrays(
            pred=predict_windows(self.bundle, windows.x),
            true=windows.y,
            idx=windows.idx,
            labels=windows.labels,
            excluded=windows.n_excluded,
            no_window=windows.n_no_window,
        )


@dataclass(frozen=True, eq=False)
class LSTMPayload:
    """A :class:`ModelBundle` as plain data: the network's ``.keras`` file bytes and the side
    files (:meth:`ModelBundle.files`) as JSON; loaded uncompiled (it only predicts)."""

    keras: bytes
    files: str

    @classmethod
    def of(cls, bundle: ModelBundle) -> LSTMPayload:
        with tempfile.TemporaryDirectory(prefix="oefray-model-") as tmp:
            path = Path(tmp) / "model.keras"
            bundle.model.save(path)
            return cls(keras=path.read_bytes(), files=json.dumps(bundle.files()))

    def load(self) -> LSTMScanModel:
        import keras

        with tempfile.TemporaryDirectory(prefix="oefray-model-") as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(self.keras)
            model = keras.models.load_model(path, compile=False)
        files = json.loads(self.files)
        return LSTMScanModel(ModelBundle.from_files(model, files, "shipped to the worker"))


class ScanPredictor:
    """Ray Data callable class: the model loaded once per actor; each call predicts one scan,
    writes its maps and returns its :class:`ScanOutput` as a row.

    Each row names its scan (``scan``) and the features folder holding it (``features``,
    absolute; on shared storage for a cluster), so that one pool serves the scans of several
    folders.

    Parameters
    ----------
    model : ray.ObjectRef or ModelPayload
        The method's :class:`ModelPayload` (in the object store).
    with_targets : bool
        Whether the features carry ground truth to evaluate against.
    maps_folder : str, optional
        Write each scan's maps into ``<maps_folder>/sub-<L>[/ses-<S>]/anat`` (a BIDS derivative).
    tracking_uri, run_id : str, optional
        Otherwise: log each scan's maps to this MLflow run under ``maps/``; neither: no map.
    """

    def __init__(
        self,
        model: Any,
        with_targets: bool,
        maps_folder: str | None = None,
        tracking_uri: str | None = None,
        run_id: str | None = None,
    ) -> None:
        import ray

        global _LOADS
        payload = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.model = payload.load()
        _LOADS += 1
        self.manifests: dict[str, Any] = {}
        self.with_targets = with_targets
        self.maps_folder = maps_folder
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One row per scan of the batch (``batch_size=1``: one scan); a scan that fails with
        an :class:`OefrayError` (e.g. a file that fails its checksum) gives its ``error``."""
        rows = []
        for root, key in zip(map(str, batch["features"]), map(str, batch["scan"]), strict=True):
            try:
                row = self.predict_scan(root, key).to_row()
            except OefrayError as exc:
                row = _error_row(key, str(exc))
            rows.append({**row, "features": np.array([root])})
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def predict_scan(self, root: str, key: str) -> ScanOutput:
        """Read, predict and evaluate scan ``key`` of the features folder ``root``; its maps
        written where configured."""
        from oefray.io.manifest import FeaturesManifest
        from oefray.io.maps import subject_dir

        if root not in self.manifests:
            self.manifests[root] = FeaturesManifest.load(root)
        record = self.manifests[root].subjects[key]
        arrays = self.model.predict_scan(root, key, record, self.with_targets)

        def evaluate_into(folder: str | os.PathLike[str] | None) -> ScanOutput:
            return scan_output(
                key,
                record,
                arrays.pred,
                arrays.true,
                arrays.idx,
                arrays.labels,
                folder,
                excluded=arrays.excluded,
                no_window=arrays.no_window,
            )

        if self.maps_folder is not None:
            return evaluate_into(subject_dir(self.maps_folder, key))
        if self.run_id is None:  # MapsTarget.nowhere(): numbers only
            return evaluate_into(None)
        from mlflow.tracking import MlflowClient

        with tempfile.TemporaryDirectory(prefix="oefray-maps-") as tmp:
            out = evaluate_into(tmp)
            MlflowClient(self.tracking_uri).log_artifacts(self.run_id, tmp, MAPS_ARTIFACT_DIR)
        return out


def _error_row(key: str, error: str) -> dict[str, np.ndarray]:
    """The row of a scan that failed: its key and the one-line error."""
    empty = np.full((1, 1), np.nan, np.float32)
    row = ScanOutput(key, 0, 0, 0, 0, None, None, empty, None, None, False).to_row()
    row["error"] = np.array([error])
    return row


# --------------------------------------------------------------------------------------------
# The pipeline (driver)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapsTarget:
    """Where the workers write the maps: a folder (``oefray predict``'s derivative, one
    ``sub-<L>/anat`` per scan), an MLflow run's ``maps/`` artifacts (an evaluation), or nowhere
    (a study that only needs the numbers).

    Use :meth:`folder`, :meth:`mlflow_run` or :meth:`nowhere`.
    """

    maps_folder: str | None = None
    tracking_uri: str | None = None
    run_id: str | None = None

    @classmethod
    def folder(cls, path: str | os.PathLike[str]) -> MapsTarget:
        return cls(maps_folder=str(Path(path).resolve()))

    @classmethod
    def mlflow_run(cls, tracking_uri: str, run_id: str) -> MapsTarget:
        return cls(tracking_uri=tracking_uri, run_id=run_id)

    @classmethod
    def nowhere(cls) -> MapsTarget:
        return cls()

    @property
    def is_nowhere(self) -> bool:
        return self.maps_folder is None and self.run_id is None

    def kwargs(self) -> dict[str, str | None]:
        """The :class:`ScanPredictor` arguments (plain strings)."""
        return {
            "maps_folder": self.maps_folder,
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class InferenceResult:
    """Every scan's :class:`ScanOutput`, in the order the scans were given."""

    scans: dict[str, ScanOutput]

    @property
    def windows(self) -> int:
        return sum(s.windows for s in self.scans.values())

    @property
    def excluded(self) -> int:
        return sum(s.excluded for s in self.scans.values())

    def counts(self, prefix: str = "test") -> dict[str, int]:
        """``<prefix>_windows``, ``<prefix>_excluded_voxels`` and ``<prefix>_voxels``."""
        return {
            f"{prefix}_windows": self.windows,
            f"{prefix}_excluded_voxels": self.excluded,
            f"{prefix}_voxels": sum(s.voxels for s in self.scans.values()),
        }

    def workers(self) -> dict[int, set[int]]:
        """By worker process id: the model-load counts it reported (``{1}`` when it loaded the
        model once for all its scans)."""
        out: dict[int, set[int]] = {}
        for s in self.scans.values():
            out.setdefault(s.worker, set()).add(s.loads)
        return out


def inference_actors(scans: int, gpus: bool = False) -> int:
    """Actors of the pool: the cluster's free CPUs (or GPUs), at most one per scan, at least 1.

    Call inside a Ray runtime.
    """
    import ray

    free = float(ray.available_resources().get("GPU" if gpus else "CPU", 0.0))
    return max(1, min(int(scans), int(free)))


def run_inference(
    model: ModelBundle | ModelPayload,
    features: str | os.PathLike[str],
    scans: Sequence[str],
    maps: MapsTarget,
    *,
    with_targets: bool,
    gpus: bool = False,
    actors: int | None = None,
    progress: ProgressFn | None = None,
    slices_for: Collection[str] | None = None,
) -> InferenceResult:
    """Predict, map and evaluate every scan of ``scans`` of one features folder on a pool of
    actors (the module's docstring); the driver gets one :class:`ScanOutput` per scan.

    Parameters
    ----------
    model : ModelBundle or ModelPayload
        The LSTM (checked against the features by the caller), or another method's payload.
    features : path
        The features folder holding the scans.
    scans : sequence of str
        Scan keys, at least one.
    maps : MapsTarget
        Where the workers write the maps.
    with_targets : bool
        Evaluate against the features' ground truth (they must carry it).
    gpus : bool
        One GPU per actor (else one CPU).
    actors : int, optional
        Size of the pool; default :func:`inference_actors`.
    progress : callable, optional
        ``progress(done, total, message)`` after each scan; default a log line per scan.
    slices_for : collection of str, optional
        The scans whose figure slices the driver keeps (default: every scan); the others'
        are dropped as their rows arrive (:meth:`ScanOutput.without_slices`), so that what the
        driver holds does not grow with the cohort beyond a few numbers per scan.

    Raises
    ------
    OefrayError
        For no scans, or a scan not in the features (before any work); a worker's failure
        (e.g. a features file that fails its checksum) as its one line.
    """
    root = str(Path(features).resolve())
    keys = [str(k) for k in scans]
    if not keys:
        raise OefrayError(root, "no scan to predict")
    outputs = infer_scans(
        model,
        [(root, k) for k in keys],
        maps,
        with_targets=with_targets,
        gpus=gpus,
        actors=actors,
        progress=progress,
        slices_for=None if slices_for is None else {(root, str(k)) for k in slices_for},
    )
    return InferenceResult({k: outputs[(root, k)] for k in keys})


def infer_scans(
    model: ModelBundle | ModelPayload,
    items: Sequence[tuple[str | os.PathLike[str], str]],
    maps: MapsTarget,
    *,
    with_targets: bool,
    gpus: bool = False,
    actors: int | None = None,
    progress: ProgressFn | None = None,
    slices_for: Collection[tuple[str, str]] | None = None,
) -> dict[tuple[str, str], ScanOutput]:
    """:func:`run_inference` over the scans of one or more features folders on ONE actor pool
    (the model loaded once per actor for all of them: ``study te-shift`` predicts every echo
    scheme's re-simulated scans at once); results by ``(folder, scan key)``, the folder as
    given, resolved.

    The scans of several folders share scan keys, so their maps would share names: with more
    than one folder, ``maps`` must be :meth:`MapsTarget.nowhere`.

    Raises
    ------
    OefrayError
        For no scans, a scan not in its features or given twice (before any work); a worker's
        failure as its one line.
    ValueError
        Maps asked for the scans of several folders, or fewer than one actor.
    """
    import ray
    import ray.data

    from oefray.io.manifest import FeaturesManifest
    from oefray.orchestration.preprocess import data_context

    pairs = [(str(Path(root).resolve()), str(key)) for root, key in items]
    if not pairs:
        raise OefrayError(None, "no scan to predict")
    folders = list(dict.fromkeys(root for root, _ in pairs))
    if len(folders) > 1 and not maps.is_nowhere:
        raise ValueError("the maps of scans of several features folders would share names")
    for folder in folders:
        manifest = FeaturesManifest.load(folder)
        keys = [k for root, k in pairs if root == folder]
        missing = [k for k in keys if k not in manifest.subjects]
        if missing:
            raise OefrayError(folder, f"scan(s) not in the features: {', '.join(missing)}")
        if len(set(keys)) != len(keys):
            raise OefrayError(folder, "a scan is given more than once")
    n_actors = actors if actors is not None else inference_actors(len(pairs), gpus)
    if n_actors < 1:
        raise ValueError(f"actors must be >= 1, got {n_actors}")
    resources: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    payload = LSTMPayload.of(model) if isinstance(model, ModelBundle) else model
    model_ref = ray.put(payload)
    done: dict[tuple[str, str], ScanOutput] = {}
    with data_context(summary_blocks=False):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ds = ray.data.from_items(
            [{"features": root, "scan": k} for root, k in pairs], override_num_blocks=len(pairs)
        ).map_batches(
            ScanPredictor,  # type: ignore[arg-type]  # ray's stub has no callable-class kwargs
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            fn_constructor_kwargs={
                "model": model_ref,
                "with_targets": with_targets,
                **maps.kwargs(),
            },
            **resources,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            for i in range(len(batch["scan"])):
                if str(batch["error"][i]):
                    raise OefrayError(None, str(batch["error"][i]))
                out = ScanOutput.from_row(batch, i)
                where = (str(batch["features"][i]), out.scan)
                if where in done:  # a retried task's repeat
                    continue
                if slices_for is not None and where not in slices_for:
                    out = out.without_slices()
                done[where] = out
                message = f"{out.scan}: {out.windows:,} voxels predicted"
                if progress is not None:
                    progress(len(done), len(pairs), message)
                else:
                    log.info("inference %d/%d: %s", len(done), len(pairs), message)
    return {where: done[where] for where in pairs}
