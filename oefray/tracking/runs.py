"""Experiments and runs: :class:`Tracker` on a store, :class:`TrackedRun` on one run of it.

:class:`Tracker` holds nothing but the store URI (so it pickles to Ray workers) and takes run
ids explicitly; it does not depend on MLflow's process-global "active run" (and leaves the
global tracking URI and run stack as it found them). It creates experiments, opens and ends
runs, and reads back what they logged.
:meth:`Tracker.tracked_run` is the way to run: it ends the run FINISHED on success, FAILED on
an exception, KILLED on Ctrl-C, so no run is left RUNNING. It yields a :class:`TrackedRun`,
which logs to that run (params, metrics, tags, artifacts, a dataset input, a Keras model);
:meth:`Tracker.run` is the same handle on any existing run.

Every experiment oefray creates or logs a new run into carries the experiment tag
``mlflow.experimentKind = custom_model_development`` (MLflow's value for model training; the
3.17.2 UI still opens the view of its sidebar switch, see
:func:`~oefray.tracking.store.experiment_url`).

Importing this module imports no MLflow and touches neither the tracking URI nor the disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oefray.errors import Interrupted, OefrayError
from oefray.tracking import models, store
from oefray.tracking.names import (
    DATASET_CONTEXT_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_ID_TAG,
    final_metrics,
)
from oefray.tracking.params import (
    BATCH_METRICS,
    BATCH_PARAMS,
    MAX_DATASET_DIGEST,
    MAX_TAG_VALUE,
    flatten_params,
    tag_value,
    truncate,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

#: Run statuses a run can end with.
END_STATUSES: tuple[str, ...] = ("FINISHED", "FAILED", "KILLED")


@contextmanager
def run_errors(run_id: str) -> Iterator[None]:
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


@dataclasses.dataclass(frozen=True)
class Tracker:
    """MLflow operations on one store, with run ids passed explicitly.

    Parameters
    ----------
    tracking_uri : str
        A resolved store URI (see :func:`~oefray.tracking.store.resolve_tracking_uri`); the
        tracker holds nothing else, so it is cheap to pickle to Ray workers.
    """

    tracking_uri: str

    @classmethod
    def from_uri(cls, explicit: str | None = None) -> Tracker:
        """A tracker on ``resolve_tracking_uri(explicit)``, for writers: the store is checked and
        its folder created (see :func:`~oefray.tracking.store.writable_tracking_uri`).

        Raises
        ------
        OefrayError
            For a SQLite store a writer cannot use: not SQLite, someone else's database,
            read-only, or in (or to be created in) a read-only folder.
        """
        return cls(store.writable_tracking_uri(explicit))

    @classmethod
    def for_reading(cls, explicit: str | None = None) -> Tracker:
        """A tracker on an existing store, for readers (reports): nothing is created.

        Raises
        ------
        OefrayError
            If the store is a SQLite file that does not exist (MLflow would create it).
        """
        return cls(store.existing_tracking_uri(explicit))

    @property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def ui_command(self) -> str:
        """See :func:`~oefray.tracking.store.ui_command`."""
        return store.ui_command(self.tracking_uri)

    # -- experiments and runs ------------------------------------------------------------------

    def get_or_create_experiment(self, name: str) -> str:
        """The id of experiment ``name``, created if missing.

        In a SQLite store a new experiment keeps its artifacts in
        ``<db folder>/artifacts/<name>/`` (see :func:`~oefray.tracking.store.artifact_root`).
        The experiment gets the tag ``mlflow.experimentKind = custom_model_development`` (so
        that MLflow's UI treats it as model training) when created, or here if it lacks one.

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
            location = store.experiment_artifact_location(self.tracking_uri, name)
            kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            try:
                return client.create_experiment(name, artifact_location=location, tags=kind)
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
        if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older oefray, or by hand
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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
        str_tags = {str(k): tag_value(v) for k, v in (tags or {}).items()}
        run = self.client.create_run(experiment_id, run_name=run_name, tags=str_tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run with ``status`` in ``FINISHED``, ``FAILED``, ``KILLED``."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {END_STATUSES}, got {status!r}")
        with run_errors(run_id):
            self.client.set_terminated(run_id, status=status)

    def run(self, run_id: str) -> TrackedRun:
        """A handle on the existing run ``run_id``, to log to it (it is not checked here: an
        unknown id fails on the first call, with ``unknown MLflow run id <id>``)."""
        return TrackedRun(self, run_id)

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
        with run_errors(run_id):
            self.client.update_run(run_id, status="RUNNING")
        with self._ending(run_id, None) as run:
            yield run

    @contextmanager
    def _ending(self, run_id: str, params: Mapping[str, Any] | None) -> Iterator[TrackedRun]:
        run = self.run(run_id)
        status = "FAILED"
        try:
            if params:
                run.log_params(params)
            yield run
            status = "FINISHED"
        except (KeyboardInterrupt, SystemExit, Interrupted):
            status = "KILLED"
            raise
        except BaseException as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            with suppress(Exception):  # never hide the original error
                self.client.set_tag(run_id, ERROR_TAG, truncate(message, MAX_TAG_VALUE))
            raise
        finally:
            try:
                self.end_run(run_id, status)
            except Exception:
                if status == "FINISHED":
                    raise  # otherwise an exception is already propagating; keep that one

    # -- models --------------------------------------------------------------------------------

    def model_uri(self, run_id: str, name: str = "model") -> str:
        """See :func:`oefray.tracking.models.model_uri`."""
        return models.model_uri(self, run_id, name)

    def load_model_bundle(
        self, model_uri_or_run_id: str, *, name: str = "model"
    ) -> tuple[Any, dict[str, Any]]:
        """See :func:`oefray.tracking.models.load_model_bundle`."""
        return models.load_model_bundle(self, model_uri_or_run_id, name=name)

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
        return [r for r in found if not (top_level and PARENT_RUN_ID_TAG in r.data.tags)]

    def get_run(self, run_id: str) -> Run:
        """The MLflow run ``run_id`` (info, data, inputs, outputs).

        Raises
        ------
        OefrayError
            ``unknown MLflow run id <id>``.
        """
        with run_errors(run_id):
            return self.client.get_run(run_id)

    def child_runs(self, parent_run_id: str, tags: Mapping[str, Any] | None = None) -> list[Run]:
        """Runs whose parent is ``parent_run_id`` (optionally with these tag values), oldest first."""
        parent = self.get_run(parent_run_id)
        clauses = [f"tags.{PARENT_RUN_ID_TAG} = '{parent_run_id}'"]
        clauses += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        with run_errors(parent_run_id):
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
        with run_errors(run_id):
            history = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in history)

    def list_artifacts(self, run_id: str, path: str = "") -> list[str]:
        """Run-relative paths of every artifact file under ``path`` (recursive), sorted."""
        self.get_run(run_id)
        client = self.client
        out: list[str] = []
        folders: list[str | None] = [path or None]
        while folders:
            folder = folders.pop()
            with run_errors(run_id):
                for item in client.list_artifacts(run_id, folder):
                    (folders if item.is_dir else out).append(item.path)
        return sorted(out)

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
    """One run of a :class:`Tracker`, as yielded by :meth:`Tracker.tracked_run` and
    :meth:`Tracker.resumed_run`, or given by :meth:`Tracker.run`: everything logged to a run.

    It holds the tracker and the run id only (so it pickles too), and does not end the run.
    An unknown run id fails any call with ``unknown MLflow run id <id>``.
    """

    tracker: Tracker
    run_id: str

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log (nested) params, flattened by :func:`~oefray.tracking.params.flatten_params`;
        returns what was logged.

        MLflow params are write-once: logging a key again with another value raises.
        """
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        with run_errors(self.run_id):
            for i in range(0, len(items), BATCH_PARAMS):
                self.tracker.client.log_batch(self.run_id, params=items[i : i + BATCH_PARAMS])
        return flat

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log metrics (e.g. the floor's RMSEs) in one batch; None values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key=str(k), value=float(v), timestamp=now, step=int(step))
            for k, v in metrics.items()
            if v is not None
        ]
        with run_errors(self.run_id):
            for i in range(0, len(items), BATCH_METRICS):
                self.tracker.client.log_batch(self.run_id, metrics=items[i : i + BATCH_METRICS])

    def log_epoch_metrics(self, epoch: int, metrics: Mapping[str, float | None]) -> None:
        """Log one epoch's metrics in one batch, with step = ``epoch``.

        ``metrics`` is keyed by metric name (:data:`~oefray.tracking.names.EPOCH_METRICS`, as in
        a Keras ``logs`` dict); None values are skipped.
        """
        self.log_metrics(metrics, step=epoch)

    def log_test_metrics(
        self, pooled: Mapping[str, float], patient_mean: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """Log final test RMSEs (keyed by quantity) as ``test_rmse_<P>[_patient_mean]``.

        Returns
        -------
        dict of str to float
            The logged metrics, by name.
        """
        metrics = final_metrics(pooled, patient_mean)
        self.log_metrics(metrics, step=0)
        return metrics

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified, cut to MLflow's limit)."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), tag_value(v)) for k, v in tags.items()]
        with run_errors(self.run_id):
            for i in range(0, len(items), BATCH_PARAMS):
                self.tracker.client.log_batch(self.run_id, tags=items[i : i + BATCH_PARAMS])

    def log_artifact_file(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str:
        """Copy a file into the run's artifacts (under ``artifact_path``); returns its
        run-relative artifact path."""
        path = Path(path)
        if not path.is_file():
            raise OefrayError(path, "cannot log as an MLflow artifact: no such file")
        with run_errors(self.run_id):
            self.tracker.client.log_artifact(self.run_id, str(path), artifact_path)
        return f"{artifact_path}/{path.name}" if artifact_path else path.name

    def log_artifact_dir(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> str | None:
        """Copy a folder's contents into the run's artifacts (under ``artifact_path``)."""
        path = Path(path)
        if not path.is_dir():
            raise OefrayError(path, "cannot log as MLflow artifacts: no such folder")
        with run_errors(self.run_id):
            self.tracker.client.log_artifacts(self.run_id, str(path), artifact_path)
        return artifact_path

    def log_dataset_input(
        self,
        *,
        name: str,
        source: str,
        digest: str,
        context: str,
        profile: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a local dataset (a features folder) as an input of the run.

        It shows in the Dataset column of MLflow's runs table and on the run's page. Logging the
        same dataset (name and digest) again adds nothing.

        Parameters
        ----------
        name : str
            Dataset name, e.g. ``features``.
        source : str
            The dataset's folder; stored as MLflow's local source, ``{"uri": source}``.
        digest : str
            At most 36 characters (MLflow's limit), e.g.
            :meth:`oefray.io.manifest.FeaturesManifest.digest`.
        context : str
            What the run used it for (``training``, ``evaluation``, ...): the input tag
            ``mlflow.data.context``.
        profile : mapping, optional
            JSON-able summary (e.g. subject and window counts), stored as the dataset profile.

        Raises
        ------
        ValueError
            For an empty name, or a digest longer than 36 characters.
        """
        from mlflow.entities import Dataset, DatasetInput, InputTag

        if not name:
            raise ValueError("dataset name must not be empty")
        if len(digest) > MAX_DATASET_DIGEST:
            raise ValueError(f"dataset digest longer than {MAX_DATASET_DIGEST} characters")
        dataset = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=None if profile is None else json.dumps(dict(profile), default=str),
        )
        tags = [InputTag(key=DATASET_CONTEXT_TAG, value=context)]
        from mlflow.exceptions import MlflowException

        with run_errors(self.run_id):
            try:
                self.tracker.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])
            except MlflowException as exc:
                # Two runs (concurrent Tune trials) logging the same new dataset at once: the
                # store creates the dataset row for one, the other's insert hits the unique key
                # (sqlite). The row now exists, so the second attempt only links this run to it.
                if "UNIQUE constraint failed" not in str(exc):
                    raise
                self.tracker.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags)])

    def log_keras_model(
        self,
        model: Any,
        *,
        name: str = "model",
        extra_files: Mapping[str, Mapping[str, Any]] | None = None,
        example_batch: int = 2,
    ) -> str:
        """Log a Keras 3 model to the run; see :func:`oefray.tracking.models.log_keras_model`.

        Returns
        -------
        str
            The model URI (``models:/<model_id>``).
        """
        return models.log_keras_model(
            self.tracker,
            self.run_id,
            model,
            name=name,
            extra_files=extra_files,
            example_batch=example_batch,
        )
