"""Keras models in MLflow: logged with a signature and JSON side files, loaded back with them.

:func:`log_keras_model` logs a Keras 3 model (``mlflow.keras``) with a signature, plus JSON side
files (scalers, window config) inside the model's artifact folder under ``model_meta/`` (and a
copy in the run's artifacts under ``<name>_meta/``); :func:`load_model_bundle` gives back the
model and those dicts. :meth:`TrackedRun.log_keras_model
<oefray.tracking.runs.TrackedRun.log_keras_model>` and :meth:`Tracker.load_model_bundle
<oefray.tracking.runs.Tracker.load_model_bundle>` are these functions on a run and a store.

``mlflow.keras.log_model`` and ``models:/`` downloads read MLflow's process-global tracking URI;
:func:`global_tracking_uri` points it at the store for the call and puts it back after.

Importing this module imports no MLflow.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oefray.errors import OefrayError
from oefray.tracking.names import MODEL_META_DIR, model_meta_artifact_dir, model_tag

if TYPE_CHECKING:
    from oefray.tracking.runs import Tracker

_META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at ``uri`` for the APIs that only read it
    (``mlflow.keras.log_model``, ``models:/`` downloads), then put back both it and
    ``$MLFLOW_TRACKING_URI`` (``mlflow.set_tracking_uri`` writes the variable too).

    Notes
    -----
    Public MLflow APIs only. ``mlflow.get_tracking_uri()`` answers the global URI if one was set,
    else ``$MLFLOW_TRACKING_URI``; a global URI equal to the variable (or none at all) is put back
    as unset, which answers the same: afterwards ``mlflow.get_tracking_uri()``,
    ``mlflow.is_tracking_uri_set()`` and the variable are as they were.
    """
    import mlflow

    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    old_uri = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None unsets the global URI (and the variable, restored on the next lines).
        mlflow.set_tracking_uri(None if old_uri == old_env else old_uri)  # type: ignore[arg-type]
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


def _side_files(extra_files: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """``extra_files`` as JSON texts by file stem, checked before anything is logged."""
    payload = {}
    for key, value in (extra_files or {}).items():
        if not _META_KEY_RE.match(key):
            raise ValueError(f"extra_files key {key!r} must be a plain file stem")
        try:
            payload[key] = json.dumps(value, indent=2, allow_nan=False) + "\n"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extra_files[{key!r}] is not strict JSON: {exc}") from None
    return payload


def _signature(model: Any, example_batch: int) -> Any:
    """The model's signature, inferred from a float32 zero input and the model's output on it."""
    import numpy as np
    from mlflow.models import infer_signature

    input_shape = tuple(model.input_shape)
    if any(n is None for n in input_shape[1:]):
        raise ValueError(f"model input shape {input_shape} must be fully known after the batch")
    x = np.zeros((int(example_batch), *input_shape[1:]), dtype=np.float32)
    y = np.asarray(model.predict(x, verbose=0))
    return infer_signature(x, y)


def log_keras_model(
    tracker: Tracker,
    run_id: str,
    model: Any,
    *,
    name: str = "model",
    extra_files: Mapping[str, Mapping[str, Any]] | None = None,
    example_batch: int = 2,
) -> str:
    """Log a Keras 3 model to a run, with a signature and JSON side files.

    The signature comes from :func:`mlflow.models.infer_signature` on a float32 input of
    shape ``(example_batch, *model.input_shape[1:])`` (e.g. ``(k, window, 4)``) and the
    model's output on it; no ``input_example`` is passed (broken in
    ``mlflow.keras.log_model``, mlflow#16183). Each ``extra_files[key]`` is written as
    ``model_meta/<key>.json`` inside the model's artifact folder, so it travels with the
    model, and copied to the run's artifacts as ``<name>_meta/<key>.json`` for browsing.
    The run gets the tag ``oefray.model.<name>`` = model URI; it stays RUNNING.

    Parameters
    ----------
    tracker : Tracker
        The store.
    run_id : str
        An existing run; it need not be MLflow's active run.
    model : keras.Model
        A built model with a fully known input shape ``(None, window, n_features)``.
    name : str
        Model name (MLflow's ``name=``).
    extra_files : mapping of str to JSON-able dict, optional
        E.g. ``{"scalers": {...}, "window": {"length": 5, "target": "center"}}``; keys are
        file stems (letters, digits, ``_ . -``); values strict JSON (no NaN).
    example_batch : int
        Rows of the input the signature is inferred from.

    Returns
    -------
    str
        The model URI (``models:/<model_id>``), loadable by :func:`load_model_bundle`.
    """
    import mlflow
    import mlflow.keras

    payload = _side_files(extra_files)
    signature = _signature(model, example_batch)
    run = tracker.get_run(run_id)  # unknown run -> OefrayError before anything is written

    with global_tracking_uri(tracker.tracking_uri):
        # mlflow.keras.log_model attaches the model to the *active* run (and its experiment),
        # and has no run_id argument. Borrow the run on this thread's run stack, then pop it
        # with its status unchanged: the run is ended by its owner, not here.
        active = mlflow.active_run()
        borrowed = active is None or active.info.run_id != run_id
        if borrowed:
            mlflow.start_run(run_id=run_id, nested=active is not None)
        try:
            info = mlflow.keras.log_model(
                model,
                name=name,
                signature=signature,
                pip_requirements=mlflow.keras.get_default_pip_requirements(),
                metadata={"oefray_meta": sorted(payload)},
            )
        finally:
            if borrowed:
                mlflow.end_run(status=run.info.status)
    if payload:
        client = tracker.client
        with tempfile.TemporaryDirectory(prefix="oefray-meta-") as tmp:
            meta = Path(tmp) / MODEL_META_DIR
            meta.mkdir()
            for key, text in payload.items():
                (meta / f"{key}.json").write_text(text)
            client.log_model_artifacts(info.model_id, tmp)
            client.log_artifacts(run_id, str(meta), model_meta_artifact_dir(name))
    uri = f"models:/{info.model_id}"
    tracker.run(run_id).set_tags({model_tag(name): uri})
    return uri


def model_uri(tracker: Tracker, run_id: str, name: str = "model") -> str:
    """The URI of the model logged to a run under ``name`` by :func:`log_keras_model`."""
    run = tracker.get_run(run_id)
    uri = run.data.tags.get(model_tag(name))
    if uri is None:
        raise OefrayError(None, f"MLflow run {run_id} has no model logged as {name!r}")
    return str(uri)


def model_reads_store(model_uri_or_run_id: str) -> bool:
    """Whether loading ``model_uri_or_run_id`` (see :func:`load_model_bundle`) reads the MLflow
    store: a run id or a ``runs:/``/``models:/`` URI does; a local folder or another artifact
    URI does not."""
    if ":/" not in model_uri_or_run_id:
        return not Path(model_uri_or_run_id).exists()
    return model_uri_or_run_id.startswith(("runs:/", "models:/"))


def load_model_bundle(
    tracker: Tracker, model_uri_or_run_id: str, *, name: str = "model"
) -> tuple[Any, dict[str, Any]]:
    """Load a model logged by :func:`log_keras_model` and its JSON side files.

    Parameters
    ----------
    tracker : Tracker
        The store.
    model_uri_or_run_id : str
        A model URI (``models:/<id>``, ``runs:/<run_id>/<path>``, a local folder) or a run id
        (then the run's model logged as ``name``).
    name : str
        Model name, used when a run id is given.

    Returns
    -------
    model : keras.Model
        Loaded with :func:`mlflow.keras.load_model`.
    meta : dict of str to dict
        The side files by stem (e.g. ``{"scalers": ..., "window": ...}``); empty if none.
    """
    import mlflow
    import mlflow.keras
    from mlflow.exceptions import MlflowException

    target = model_uri_or_run_id
    if ":/" not in target and not Path(target).exists():
        target = model_uri(tracker, target, name)
    with tempfile.TemporaryDirectory(prefix="oefray-model-") as tmp:
        try:
            with global_tracking_uri(tracker.tracking_uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=target, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            message = str(getattr(exc, "message", exc)).splitlines()[0]
            raise OefrayError(None, f"cannot fetch MLflow model {target}: {message}") from None
        model = mlflow.keras.load_model(local)
        meta_dir = Path(local) / MODEL_META_DIR
        meta = {p.stem: json.loads(p.read_text()) for p in sorted(meta_dir.glob("*.json"))}
    return model, meta
