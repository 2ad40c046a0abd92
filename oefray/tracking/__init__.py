"""Experiment tracking with MLflow: the only package of oefray that talks to MLflow (DESIGN.md §6).

One concept per module:

``names``
    Every metric, tag and artifact name oefray logs (:data:`METRIC_NAMES`,
    :func:`rmse_metric_name`, ``*_TAG``).
``store``
    Which store (:func:`resolve_tracking_uri`, default SQLite ``<cwd>/mlruns/mlflow.db``; one
    a writer can use, :func:`writable_tracking_uri`), where
    its artifacts go (:func:`artifact_root`), and how to browse it (:func:`ui_command`,
    :func:`server_command`).
``params``
    Params and tag values within MLflow's limits (:func:`flatten_params`).
``runs``
    :class:`Tracker` (a store: experiments, runs, reading back) and :class:`TrackedRun` (one
    run: everything logged to it).
``models``
    Keras models with a signature and JSON side files.

Importing this package imports no MLflow and touches neither the tracking URI nor the disk.
"""

from oefray.tracking.names import (
    BEST_EPOCH_TAG,
    BEST_RUN_TAG,
    CHILD_RUNS_TAG,
    COMMAND_TAG,
    DATASET_CONTEXT_TAG,
    EPOCH_METRICS,
    EPOCHS_RUN_TAG,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    FLOOR_METRICS,
    METRIC_NAMES,
    MODEL_META_DIR,
    MODEL_TAG_PREFIX,
    PARENT_RUN_ID_TAG,
    REPEAT_TAG,
    REPEATS_METRICS,
    REPRESENTATIVE_RUN_TAG,
    RESUMED_FROM_EPOCH_TAG,
    RMSE_QUANTITIES,
    SEED_TAG,
    STOPPED_EARLY_TAG,
    TEST_METRICS,
    TRIAL_ID_TAG,
    final_metrics,
    floor_metrics,
    model_tag,
    repeats_metrics,
    rmse_metric_name,
)
from oefray.tracking.params import flatten_params
from oefray.tracking.runs import END_STATUSES, TrackedRun, Tracker
from oefray.tracking.store import (
    artifact_root,
    check_writable_store,
    default_tracking_uri,
    existing_tracking_uri,
    experiment_url,
    experiments_url,
    redact_uri,
    resolve_tracking_uri,
    server_command,
    ui_command,
    writable_tracking_uri,
)

__all__ = [
    "BEST_EPOCH_TAG",
    "BEST_RUN_TAG",
    "CHILD_RUNS_TAG",
    "COMMAND_TAG",
    "DATASET_CONTEXT_TAG",
    "END_STATUSES",
    "EPOCHS_RUN_TAG",
    "EPOCH_METRICS",
    "ERROR_TAG",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "FLOOR_METRICS",
    "METRIC_NAMES",
    "MODEL_META_DIR",
    "MODEL_TAG_PREFIX",
    "PARENT_RUN_ID_TAG",
    "REPEATS_METRICS",
    "REPEAT_TAG",
    "REPRESENTATIVE_RUN_TAG",
    "RESUMED_FROM_EPOCH_TAG",
    "RMSE_QUANTITIES",
    "SEED_TAG",
    "STOPPED_EARLY_TAG",
    "TEST_METRICS",
    "TRIAL_ID_TAG",
    "TrackedRun",
    "Tracker",
    "artifact_root",
    "check_writable_store",
    "default_tracking_uri",
    "existing_tracking_uri",
    "experiment_url",
    "experiments_url",
    "redact_uri",
    "final_metrics",
    "flatten_params",
    "floor_metrics",
    "model_tag",
    "repeats_metrics",
    "resolve_tracking_uri",
    "rmse_metric_name",
    "server_command",
    "ui_command",
    "writable_tracking_uri",
]
