"""Experiment tracking with MLflow: the only module of oefray that talks to MLflow (DESIGN.md §6).

Store
    ``resolve_tracking_uri`` picks the store: an explicit URI, else ``MLFLOW_TRACKING_URI``, else
    :func:`default_tracking_uri`, a SQLite database ``<cwd>/mlruns/mlflow.db`` (MLflow 3 refuses
    the plain file store). For a SQLite store the artifacts of experiment ``<name>`` go to
    ``<db folder>/artifacts/<name>/``: runs under ``<run_id>/artifacts/``, logged models under
    ``models/<model_id>/artifacts/``. :func:`ui_command` prints how to browse it all;
    :func:`server_command` is the ``mlflow server`` that ``oefray ui`` runs over the store (it
    proxies artifacts, so clients of ``http://`` URIs upload them over HTTP).

Names
    Metric names are fixed here (:data:`METRIC_NAMES`) and produced by :func:`epoch_metrics`,
    :func:`final_metrics` and :func:`rmse_metric_name`: per epoch ``loss``, ``val_loss``,
    ``val_rmse_<P>`` and ``val_rmse_OEF``; at the end ``test_rmse_<P>`` (pooled over all test
    voxels) and ``test_rmse_<P>_patient_mean`` (mean of the per-patient RMSEs), for P in
    ``S0, R2, Y, v, chi_nb, OEF``. (No helper is named ``test_*``: pytest would collect it.)

Runs
    :class:`Tracker` holds nothing but the store URI (so it pickles to Ray workers) and takes run
    ids explicitly; it does not depend on MLflow's process-global "active run" (and leaves the
    global tracking URI and run stack as it found them).
    :meth:`Tracker.tracked_run` is the way to run: it ends the run FINISHED on success, FAILED on
    an exception, KILLED on Ctrl-C, so no run is left RUNNING.

Models
    :meth:`Tracker.log_keras_model` logs a Keras 3 model (``mlflow.keras``) with a signature, plus
    JSON side files (scalers, window config) inside the model's artifact folder under
    ``model_meta/`` (and a copy in the run's artifacts under ``<name>_meta/``);
    :meth:`Tracker.load_model_bundle` gives back the model and those dicts.

Importing this module imports no MLflow and touches neither the tracking URI nor the disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from oefray.errors import Interrupted, OefrayError
from oefray.physics.constants import PARAMETERS

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

# --------------------------------------------------------------------------------------------
# Metric names
# --------------------------------------------------------------------------------------------

#: Quantities with an RMSE, in the order of the paper's Tables 1 and 2 (OEF in percent).
RMSE_QUANTITIES: tuple[str, ...] = ("S0", "R2", "Y", "v", "chi_nb", "OEF")

#: Per-epoch metrics (step = epoch): Huber loss on training and validation samples, and the
#: validation RMSE of each QQ parameter and of OEF, in physical units.
EPOCH_METRICS: tuple[str, ...] = (
    "loss",
    "val_loss",
    *(f"val_rmse_{p}" for p in (*PARAMETERS, "OEF")),
)

#: Final test metrics: RMSE pooled over every test voxel, then the mean of per-patient RMSEs.
TEST_METRICS: tuple[str, ...] = (
    *(f"test_rmse_{p}" for p in RMSE_QUANTITIES),
    *(f"test_rmse_{p}_patient_mean" for p in RMSE_QUANTITIES),
)

#: Every metric name oefray logs.
METRIC_NAMES: tuple[str, ...] = EPOCH_METRICS + TEST_METRICS

#: Run statuses a run can end with.
END_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")

#: Run tag holding the URI of the model logged under a name: ``oefray.model.<name>``.
MODEL_TAG_PREFIX = "oefray.model."

#: Folder, inside a logged model's artifacts, holding its JSON side files.
MODEL_META_DIR = "model_meta"

# MLflow limits (mlflow.utils.validation), repeated so that importing this module stays cheap.
_MAX_PARAM_VAL = 6000
_MAX_TAG_VAL = 8000
_MAX_KEY = 250
_BATCH_PARAMS = 100
_BATCH_METRICS = 1000

_META_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def rmse_metric_name(split: str, quantity: str, *, patient_mean: bool = False) -> str:
    """Logged name of an RMSE metric.

    Parameters
    ----------
    split : {"val", "test"}
        Per-epoch validation metric, or final test metric.
    quantity : str
        A QQ parameter (``Y, v, R2, S0, chi_nb``) or ``OEF``.
    patient_mean : bool
        Test only: the mean of per-patient RMSEs instead of the RMSE pooled over all voxels.

    Returns
    -------
    str
        ``val_rmse_<P>``, ``test_rmse_<P>`` or ``test_rmse_<P>_patient_mean``.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    if quantity not in RMSE_QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {RMSE_QUANTITIES}")
    if patient_mean and split != "test":
        raise ValueError("patient_mean applies to test metrics only")
    return f"{split}_rmse_{quantity}" + ("_patient_mean" if patient_mean else "")


def epoch_metrics(
    loss: float, val_loss: float | None = None, val_rmse: Mapping[str, float] | None = None
) -> dict[str, float]:
    """One epoch's metrics under their logged names.

    Parameters
    ----------
    loss, val_loss : float
        Training and validation loss of the epoch.
    val_rmse : mapping of str to float, optional
        Validation RMSE keyed by quantity (``Y, v, R2, S0, chi_nb`` in their units, ``OEF`` in %).

    Returns
    -------
    dict of str to float
        ``{"loss": ..., "val_loss": ..., "val_rmse_<P>": ...}``.
    """
    out = {"loss": float(loss)}
    if val_loss is not None:
        out["val_loss"] = float(val_loss)
    for quantity, value in (val_rmse or {}).items():
        out[rmse_metric_name("val", quantity)] = float(value)
    return out


def final_metrics(
    pooled: Mapping[str, float], patient_mean: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Final test metrics under their logged names.

    Parameters
    ----------
    pooled : mapping of str to float
        RMSE over all test voxels together, keyed by quantity (``S0, R2, Y, v, chi_nb, OEF``).
    patient_mean : mapping of str to float, optional
        Mean over test patients of each patient's RMSE, keyed likewise.

    Returns
    -------
    dict of str to float
        ``test_rmse_<P>`` and ``test_rmse_<P>_patient_mean`` entries.
    """
    out = {rmse_metric_name("test", q): float(v) for q, v in pooled.items()}
    for q, v in (patient_mean or {}).items():
        out[rmse_metric_name("test", q, patient_mean=True)] = float(v)
    return out


# --------------------------------------------------------------------------------------------
# Store URIs
# --------------------------------------------------------------------------------------------


def default_tracking_uri(cwd: str | os.PathLike[str] | None = None, *, create: bool = True) -> str:
    """The default store: SQLite at ``<cwd>/mlruns/mlflow.db`` (creates ``mlruns/`` when called,
    unless ``create`` is false).

    Returns
    -------
    str
        ``sqlite:///<absolute path>/mlruns/mlflow.db``.
    """
    folder = Path(os.getcwd() if cwd is None else cwd).resolve() / "mlruns"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def resolve_tracking_uri(
    explicit: str | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    create: bool = True,
) -> str:
    """The store to use: ``explicit``, else ``$MLFLOW_TRACKING_URI``, else the default.

    A plain path to a ``.db`` file is turned into a ``sqlite:///`` URI. With ``create`` false,
    no folder is made for a SQLite store (readers must not create stores).

    Raises
    ------
    OefrayError
        For a file-store URI or a plain folder (MLflow 3 refuses the file store).
    """
    uri = (
        explicit
        or os.environ.get("MLFLOW_TRACKING_URI")
        or default_tracking_uri(cwd, create=create)
    )
    scheme = urlparse(uri).scheme
    looks_like_path = scheme == "" and ("/" in uri or uri.startswith(".") or uri.endswith(".db"))
    if scheme == "file" or looks_like_path:
        path = Path(unquote(urlparse(uri).path) if scheme == "file" else uri).expanduser()
        if path.suffix == ".db":
            path = path.resolve()
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            return f"sqlite:///{path}"
        raise OefrayError(
            None,
            f"tracking URI {uri!r} is an MLflow file store, which MLflow 3 refuses; use "
            "sqlite:///<path>/mlflow.db or an http(s):// tracking server",
        )
    return uri


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, or None for other stores (in-memory too)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def artifact_root(uri: str) -> Path | None:
    """Where a SQLite store keeps artifacts: ``<db folder>/artifacts``; None for other stores
    (a tracking server decides for itself)."""
    db = _sqlite_path(uri)
    return None if db is None else db.resolve().parent / "artifacts"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"


def ui_command(uri: str) -> str:
    """The shell command that opens the MLflow UI on a store.

    For SQLite: ``mlflow ui --backend-store-uri sqlite:///... --default-artifact-root <root>``
    (artifact locations are absolute, so it works from any folder); for another database the
    same without the root; for a tracking server, a command that opens it in a browser.
    """
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return f"python -m webbrowser {shlex.quote(uri)}"
    command = f"mlflow ui --backend-store-uri {shlex.quote(uri)}"
    root = artifact_root(uri)
    if root is not None:
        command += f" --default-artifact-root {shlex.quote(root.as_uri())}"
    return command


def server_command(uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow server`` command line (UI and REST API) over a store.

    For a SQLite store the server proxies artifacts (``--serve-artifacts``) with
    ``--artifacts-destination`` = :func:`artifact_root`: runs logged directly to the database
    keep their absolute ``file://`` artifact locations, which the server reads, and experiments
    created through the server store under the same root, uploaded over HTTP
    (``mlflow-artifacts:/<experiment id>/...``), so clients need no access to the folder.
    Other databases get MLflow's default destination (``./mlartifacts``). One worker: the UI of
    one project, not a shared service.

    Parameters
    ----------
    uri : str
        A resolved database store URI (see :func:`resolve_tracking_uri`).
    host, port
        Where the server listens.

    Returns
    -------
    list of str
        ``[python, -m, mlflow, server, ...]``, run with the current interpreter.

    Raises
    ------
    OefrayError
        For an ``http(s)://`` URI, which is a tracking server already.
    """
    if urlparse(uri).scheme in ("http", "https"):
        raise OefrayError(None, f"{uri} is a tracking server already; open it in a browser")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    command += ["--serve-artifacts"]
    root = artifact_root(uri)
    if root is not None:
        command += ["--artifacts-destination", str(root)]
    command += ["--host", host, "--port", str(int(port)), "--workers", "1"]
    return command


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return json.dumps(items, default=str)
    return str(value)


def flatten_params(params: Mapping[str, Any], *, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings (and dataclass instances) into MLflow params.

    Nested keys are joined with ``.`` (``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``); values become
    strings (lists/tuples as JSON), cut to MLflow's 6000 characters (ending in ``...``).

    Raises
    ------
    ValueError
        If a flattened key is longer than MLflow's 250 characters.
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            if value:
                out.update(flatten_params(value, prefix=f"{name}."))
            else:
                out[name] = "{}"
            continue
        if len(name) > _MAX_KEY:
            raise ValueError(f"param name longer than {_MAX_KEY} characters: {name[:60]}...")
        out[name] = _truncate(_param_value(value), _MAX_PARAM_VAL)
    return out


# --------------------------------------------------------------------------------------------
# Tracker
# --------------------------------------------------------------------------------------------


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking URI at ``uri`` for the APIs that only read it
    (``mlflow.keras.log_model``, ``models:/`` downloads), then put back both it and
    ``$MLFLOW_TRACKING_URI`` (``mlflow.set_tracking_uri`` writes the variable too)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old_uri = getattr(utils, "_tracking_uri", None)
    old_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_uri)  # type: ignore[arg-type]  # None = unset, as before
        if old_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_env


@dataclasses.dataclass(frozen=True)
class Tracker:
    """MLflow operations on one store, with run ids passed explicitly.

    Parameters
    ----------
    tracking_uri : str
        A resolved store URI (see :func:`resolve_tracking_uri`); the tracker holds nothing else,
        so it is cheap to pickle to Ray workers.
    """

    tracking_uri: str

    @classmethod
    def from_uri(cls, explicit: str | None = None) -> Tracker:
        """A tracker on ``resolve_tracking_uri(explicit)``."""
        return cls(resolve_tracking_uri(explicit))

    @classmethod
    def for_reading(cls, explicit: str | None = None) -> Tracker:
        """A tracker on an existing store, for readers (reports): nothing is created.

        Raises
        ------
        OefrayError
            If the store is a SQLite file that does not exist (MLflow would create it).
        """
        uri = resolve_tracking_uri(explicit, create=False)
        db = _sqlite_path(uri)
        if db is not None and not db.is_file():
            raise OefrayError(db, "no MLflow store here (nothing tracked yet?)")
        return cls(uri)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    @contextmanager
    def _errors(self, run_id: str) -> Iterator[None]:
        """Turn MLflow's "no such run" into a one-line :class:`OefrayError`."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            message = str(getattr(exc, "message", exc))
            missing = code == "RESOURCE_DOES_NOT_EXIST" and message.lower().startswith("run ")
            malformed = code == "INVALID_PARAMETER_VALUE" and "invalid run id" in message.lower()
            if missing or malformed:
                raise OefrayError(None, f"unknown MLflow run id {run_id}") from None
            raise

    def ui_command(self) -> str:
        """See :func:`ui_command`."""
        return ui_command(self.tracking_uri)

    def run(self, run_id: str) -> TrackedRun:
        """A handle on an existing run (its status is left as it is)."""
        return TrackedRun(self, run_id)

    # -- experiments and runs ------------------------------------------------------------------

    def get_or_create_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created if missing.

        In a SQLite store a new experiment keeps its artifacts in
        ``<db folder>/artifacts/<name>/`` (see :func:`artifact_root`).

        Raises
        ------
        OefrayError
            If an experiment of that name exists but is deleted.
        """
        from mlflow.exceptions import MlflowException

        if not name or not name.strip():
            raise ValueError("experiment name must not be empty")
        client = self.client
        found = client.get_experiment_by_name(name)
        if found is None:
            root = artifact_root(self.tracking_uri)
            location = None if root is None else (root / _slug(name)).as_uri()
            try:
                return client.create_experiment(name, artifact_location=location)
            except MlflowException as exc:  # created meanwhile by another worker
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise OefrayError(
                None,
                f"MLflow experiment {name!r} (id {found.experiment_id}) is deleted; restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or use "
                "another name",
            )
        return found.experiment_id

    def start_run(
        self,
        experiment: str,
        *,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Start a run (status RUNNING) in experiment ``experiment`` (a name; created if missing).

        Prefer :meth:`tracked_run`, which cannot leave the run RUNNING.

        Returns
        -------
        str
            The run id.
        """
        experiment_id = self.get_or_create_experiment(experiment)
        str_tags = {
            str(k): _truncate(_param_value(v), _MAX_TAG_VAL) for k, v in (tags or {}).items()
        }
        run = self.client.create_run(experiment_id, run_name=run_name, tags=str_tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run with ``status`` in ``FINISHED``, ``FAILED``, ``KILLED``."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, got {status!r}")
        with self._errors(run_id):
            self.client.set_terminated(run_id, status=status)

    @contextmanager
    def tracked_run(
        self,
        experiment: str,
        *,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[TrackedRun]:
        """Start a run, yield it, and end it whatever happens.

        Status on exit: FINISHED normally, KILLED on ``KeyboardInterrupt``/``SystemExit``, FAILED
        on any other exception (whose one-line message is kept in the tag ``oefray.error``); the
        exception propagates.

        Examples
        --------
        >>> with Tracker(uri).tracked_run("oef-lstm", params=config) as run:  # doctest: +SKIP
        ...     run.log_epoch_metrics(1, {"loss": 0.3})
        """
        run_id = self.start_run(experiment, run_name=run_name, tags=tags)
        with self._ending(run_id, params) as run:
            yield run

    @contextmanager
    def resumed_run(self, run_id: str) -> Iterator[TrackedRun]:
        """Re-open an ended run (an interrupted training) and end it like :meth:`tracked_run`.

        Raises
        ------
        OefrayError
            If the run id is unknown.
        """
        self.get_run(run_id)
        with self._errors(run_id):
            self.client.update_run(run_id, status="RUNNING")
        with self._ending(run_id, None) as run:
            yield run

    @contextmanager
    def _ending(self, run_id: str, params: Mapping[str, Any] | None) -> Iterator[TrackedRun]:
        run = TrackedRun(self, run_id)
        status = "FAILED"
        try:
            if params:
                self.log_params(run_id, params)
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit, Interrupted):
            status = "KILLED"
            raise
        except BaseException as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            with suppress(Exception):  # never hide the original error
                self.client.set_tag(run_id, "oefray.error", _truncate(message, _MAX_TAG_VAL))
            raise
        finally:
            try:
                self.end_run(run_id, status)
            except Exception:
                if status == "FINISHED":
                    raise  # otherwise an exception is already propagating; keep that one

    # -- logging -------------------------------------------------------------------------------

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
        """Log (nested) params, flattened by :func:`flatten_params`; returns what was logged.

        MLflow params are write-once: logging a key again with another value raises.
        """
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        with self._errors(run_id):
            for i in range(0, len(items), _BATCH_PARAMS):
                self.client.log_batch(run_id, params=items[i : i + _BATCH_PARAMS])
        return flat

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key=str(k), value=float(v), timestamp=now, step=int(step))
            for k, v in metrics.items()
            if v is not None
        ]
        with self._errors(run_id):
            for i in range(0, len(items), _BATCH_METRICS):
                self.client.log_batch(run_id, metrics=items[i : i + _BATCH_METRICS])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log metrics (e.g. the floor's RMSEs) in one batch; None values are skipped."""
        self._log_metrics(run_id, metrics, step=step)

    def log_epoch_metrics(
        self, run_id: str, epoch: int, metrics: Mapping[str, float | None]
    ) -> None:
        """Log one epoch's metrics in one batch, with step = ``epoch``.

        ``metrics`` is keyed by metric name (build it with :func:`epoch_metrics`, or pass a
        Keras ``logs`` dict); None values are skipped.
        """
        self._log_metrics(run_id, metrics, step=epoch)

    def log_test_metrics(
        self,
        run_id: str,
        pooled: Mapping[str, float],
        patient_mean: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Log final test RMSEs (keyed by quantity) as ``test_rmse_<P>[_patient_mean]``.

        Returns
        -------
        dict of str to float
            The logged metrics, by name.
        """
        metrics = final_metrics(pooled, patient_mean)
        self._log_metrics(run_id, metrics, step=0)
        return metrics

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, cut to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _truncate(_param_value(v), _MAX_TAG_VAL)) for k, v in tags.items()]
        with self._errors(run_id):
            for i in range(0, len(items), _BATCH_PARAMS):
                self.client.log_batch(run_id, tags=items[i : i + _BATCH_PARAMS])

    def log_artifact_file(
        self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str:
        """Copy a file into the run's artifacts (under ``artifact_path``); returns its
        run-relative artifact path."""
        path = Path(path)
        if not path.is_file():
            raise OefrayError(path, "cannot log as an MLflow artifact: no such file")
        with self._errors(run_id):
            self.client.log_artifact(run_id, str(path), artifact_path)
        return f"{artifact_path}/{path.name}" if artifact_path else path.name

    def log_artifact_dir(
        self, run_id: str, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str | None:
        """Copy a folder's contents into the run's artifacts (under ``artifact_path``)."""
        path = Path(path)
        if not path.is_dir():
            raise OefrayError(path, "cannot log as MLflow artifacts: no such folder")
        with self._errors(run_id):
            self.client.log_artifacts(run_id, str(path), artifact_path)
        return artifact_path

    # -- models --------------------------------------------------------------------------------

    def log_keras_model(
        self,
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
            The model URI (``models:/<model_id>``), loadable by :meth:`load_model_bundle`.
        """
        import mlflow
        import mlflow.keras
        import numpy as np
        from mlflow.models import infer_signature

        files = dict(extra_files or {})
        for key in files:
            if not _META_KEY_RE.match(key):
                raise ValueError(f"extra_files key {key!r} must be a plain file stem")
        payload = {}
        for key, value in files.items():
            try:
                payload[key] = json.dumps(value, indent=2, allow_nan=False) + "\n"
            except (TypeError, ValueError) as exc:
                raise ValueError(f"extra_files[{key!r}] is not strict JSON: {exc}") from None
        input_shape = tuple(model.input_shape)
        if any(n is None for n in input_shape[1:]):
            raise ValueError(f"model input shape {input_shape} must be fully known after the batch")
        x = np.zeros((int(example_batch), *input_shape[1:]), dtype=np.float32)
        y = np.asarray(model.predict(x, verbose=0))
        signature = infer_signature(x, y)
        run = self.get_run(run_id)  # unknown run -> OefrayError before anything is written

        with _global_tracking_uri(self.tracking_uri):
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
        client = self.client
        if payload:
            with tempfile.TemporaryDirectory(prefix="oefray-meta-") as tmp:
                meta = Path(tmp) / MODEL_META_DIR
                meta.mkdir()
                for key, text in payload.items():
                    (meta / f"{key}.json").write_text(text)
                client.log_model_artifacts(info.model_id, tmp)
                client.log_artifacts(run_id, str(meta), f"{name}_meta")
        model_uri = f"models:/{info.model_id}"
        self.set_tags(run_id, {f"{MODEL_TAG_PREFIX}{name}": model_uri})
        return model_uri

    def model_uri(self, run_id: str, name: str = "model") -> str:
        """The URI of the model logged to a run under ``name`` by :meth:`log_keras_model`."""
        run = self.get_run(run_id)
        uri = run.data.tags.get(f"{MODEL_TAG_PREFIX}{name}")
        if uri is None:
            raise OefrayError(None, f"MLflow run {run_id} has no model logged as {name!r}")
        return uri

    def load_model_bundle(
        self, model_uri_or_run_id: str, *, name: str = "model"
    ) -> tuple[Any, dict[str, Any]]:
        """Load a model logged by :meth:`log_keras_model` and its JSON side files.

        Parameters
        ----------
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
            target = self.model_uri(target, name)
        with tempfile.TemporaryDirectory(prefix="oefray-model-") as tmp:
            try:
                with _global_tracking_uri(self.tracking_uri):
                    local = mlflow.artifacts.download_artifacts(artifact_uri=target, dst_path=tmp)
            except (MlflowException, OSError) as exc:
                message = str(getattr(exc, "message", exc)).splitlines()[0]
                raise OefrayError(None, f"cannot fetch MLflow model {target}: {message}") from None
            model = mlflow.keras.load_model(local)
            meta_dir = Path(local) / MODEL_META_DIR
            meta = {p.stem: json.loads(p.read_text()) for p in sorted(meta_dir.glob("*.json"))}
        return model, meta

    # -- reading back --------------------------------------------------------------------------

    def get_experiment(self, name: str) -> Experiment:
        """The active experiment ``name`` (an ``mlflow.entities.Experiment``).

        Raises
        ------
        OefrayError
            ``unknown MLflow experiment <name>``, naming a few experiments that exist.
        """
        client = self.client
        found = client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage != "active":
            known = [e.name for e in client.search_experiments(max_results=20)]
            listed = ", ".join(repr(n) for n in known[:8]) + (", ..." if len(known) > 8 else "")
            raise OefrayError(
                None,
                f"unknown MLflow experiment {name!r} in {self.tracking_uri}"
                + (f" (experiments: {listed})" if known else " (it holds no experiment)"),
            )
        return found

    def experiment_runs(
        self, name: str, *, top_level: bool = True, status: str | None = None
    ) -> list[Run]:
        """Runs of experiment ``name``, oldest first.

        Parameters
        ----------
        top_level : bool
            Leave out child runs (the repeats and trials under a ``tune`` parent).
        status : str, optional
            Only runs with this status (e.g. ``FINISHED``).
        """
        experiment = self.get_experiment(name)
        found = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.status = '{status}'" if status else "",
            order_by=["attributes.start_time ASC"],
            max_results=10_000,
        )
        return [r for r in found if not (top_level and "mlflow.parentRunId" in r.data.tags)]

    def list_artifacts(self, run_id: str, path: str = "") -> list[str]:
        """Run-relative paths of every artifact file under ``path`` (recursive), sorted."""
        self.get_run(run_id)
        client = self.client
        out: list[str] = []
        folders: list[str | None] = [path or None]
        while folders:
            folder = folders.pop()
            with self._errors(run_id):
                for item in client.list_artifacts(run_id, folder):
                    (folders if item.is_dir else out).append(item.path)
        return sorted(out)

    def get_run(self, run_id: str) -> Run:
        """The MLflow run ``run_id`` (info, data, outputs).

        Raises
        ------
        OefrayError
            ``unknown MLflow run id <id>``.
        """
        with self._errors(run_id):
            return self.client.get_run(run_id)

    def child_runs(self, parent_run_id: str, tags: Mapping[str, Any] | None = None) -> list[Run]:
        """Runs whose parent is ``parent_run_id`` (optionally with these tag values), oldest first."""
        parent = self.get_run(parent_run_id)
        clauses = [f"tags.mlflow.parentRunId = '{parent_run_id}'"]
        clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        with self._errors(parent_run_id):
            return list(
                self.client.search_runs(
                    [parent.info.experiment_id],
                    filter_string=" and ".join(clauses),
                    order_by=["attributes.start_time ASC"],
                    max_results=10_000,
                )
            )

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of a run, by name."""
        return dict(self.get_run(run_id).data.metrics)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every logged value of a metric, by step."""
        with self._errors(run_id):
            history = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def download_artifacts(self, run_id: str, path: str, dst: str | os.PathLike[str]) -> Path:
        """Download a run artifact (file or folder, run-relative ``path``) into ``dst``.

        Returns
        -------
        Path
            The local copy.
        """
        from mlflow.exceptions import MlflowException

        self.get_run(run_id)
        dst = Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        try:
            local = self.client.download_artifacts(run_id, path, str(dst))
        except (MlflowException, OSError) as exc:
            message = str(getattr(exc, "message", exc)).splitlines()[0]
            raise OefrayError(
                None, f"MLflow run {run_id} has no artifact {path!r} ({message})"
            ) from None
        return Path(local)


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """One run of a :class:`Tracker`, as yielded by :meth:`Tracker.tracked_run`; the methods
    are those of the tracker with ``run_id`` filled in."""

    tracker: Tracker
    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        return self.tracker.log_params(self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)

    def log_epoch_metrics(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        self.tracker.log_epoch_metrics(self.run_id, epoch, metrics)

    def log_test_metrics(
        self, pooled: Mapping[str, float], patient_mean: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        return self.tracker.log_test_metrics(self.run_id, pooled, patient_mean)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.tracker.set_tags(self.run_id, tags)

    def log_artifact_file(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str:
        return self.tracker.log_artifact_file(self.run_id, path, artifact_path)

    def log_artifact_dir(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str | None:
        return self.tracker.log_artifact_dir(self.run_id, path, artifact_path)

    def log_keras_model(
        self,
        model: Any,
        *,
        name: str = "model",
        extra_files: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> str:
        return self.tracker.log_keras_model(self.run_id, model, name=name, extra_files=extra_files)
