"""Every metric, tag and artifact name oefray logs to MLflow, spelled once.

Metrics
    Per epoch (step = epoch) ``loss``, ``val_loss``, ``val_rmse_<P>`` and ``val_rmse_OEF``
    (:data:`EPOCH_METRICS`); at the end ``test_rmse_<P>`` (pooled over all test voxels) and
    ``test_rmse_<P>_patient_mean`` (mean of the per-patient RMSEs) (:data:`TEST_METRICS`), and
    the floor ``floor_rmse_<P>`` (the training mean predicted for every voxel,
    :data:`FLOOR_METRICS`); a ``tune --repeats`` parent logs ``test_rmse_<P>_mean`` and
    ``test_rmse_<P>_std`` over its repeats (:data:`REPEATS_METRICS`). P runs over
    ``S0, R2, Y, v, chi_nb, OEF`` (:data:`~oefray.physics.constants.RMSE_QUANTITIES`).
    :func:`rmse_metric_name` spells one of them; :func:`final_metrics`, :func:`floor_metrics` and
    :func:`repeats_metrics` key a mapping by quantity into logged names. Where the test scans
    have a segmentation or lesion masks, also per region ``test_rmse_<P>_<region>`` and
    ``floor_rmse_<P>_<region>`` (:func:`region_metrics`) and the lesion contrast
    (:data:`LESION_CONTRAST_METRICS`). (No helper is named ``test_*``: pytest would collect it.)

Tags
    Run tags ``oefray.<what>`` (``*_TAG``), MLflow's own ``mlflow.parentRunId``, the experiment
    tag ``mlflow.experimentKind`` and the dataset-input tag ``mlflow.data.context``.

Artifacts
    Run-relative artifact paths that one command logs and another reads back.

Importing this module imports no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping

from oefray.physics.constants import PARAMETERS, RMSE_QUANTITIES

# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------

#: Splits an RMSE metric is logged for: per-epoch validation, final test, and the floor.
RMSE_SPLITS: tuple[str, ...] = ("val", "test", "floor")

#: Suffixes of a test RMSE: the mean of per-patient RMSEs, and a repeats parent's mean and std.
RMSE_STATS: tuple[str, ...] = ("patient_mean", "mean", "std")


def rmse_metric_name(split: str, quantity: str, stat: str | None = None) -> str:
    """Logged name of an RMSE metric.

    Parameters
    ----------
    split : {"val", "test", "floor"}
        Per-epoch validation metric, final test metric, or the floor (the training mean
        predicted for every test voxel).
    quantity : str
        A QQ parameter (``Y, v, R2, S0, chi_nb``) or ``OEF``.
    stat : {None, "patient_mean", "mean", "std"}
        Test only. ``patient_mean``: the mean of per-patient RMSEs instead of the RMSE pooled
        over all voxels; ``mean``/``std``: a ``tune --repeats`` parent's summary of its repeats'
        pooled RMSEs.

    Returns
    -------
    str
        ``<split>_rmse_<P>``, or ``test_rmse_<P>_<stat>``.

    Raises
    ------
    ValueError
        For another split, quantity or stat, or a stat with a split other than ``test``.
    """
    if split not in RMSE_SPLITS:
        raise ValueError(f"split must be one of {RMSE_SPLITS}, got {split!r}")
    if quantity not in RMSE_QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; expected one of {RMSE_QUANTITIES}")
    if stat is not None and stat not in RMSE_STATS:
        raise ValueError(f"stat must be None or one of {RMSE_STATS}, got {stat!r}")
    if stat is not None and split != "test":
        raise ValueError(f"stat {stat!r} applies to test metrics only")
    return f"{split}_rmse_{quantity}" + (f"_{stat}" if stat else "")


#: Per-epoch metrics (step = epoch): Huber loss on training and validation samples, and the
#: validation RMSE of each QQ parameter and of OEF, in physical units.
EPOCH_METRICS: tuple[str, ...] = (
    "loss",
    "val_loss",
    *(rmse_metric_name("val", p) for p in (*PARAMETERS, "OEF")),
)

#: Per-epoch metric of a multi-worker training: the largest difference between the replicas'
#: weights (0 while they stay in sync).
REPLICA_WEIGHT_SPREAD = "replica_weight_spread"

#: Final test metrics: RMSE pooled over every test voxel, then the mean of per-patient RMSEs.
TEST_METRICS: tuple[str, ...] = (
    *(rmse_metric_name("test", q) for q in RMSE_QUANTITIES),
    *(rmse_metric_name("test", q, "patient_mean") for q in RMSE_QUANTITIES),
)

#: The floor: RMSE of predicting the training mean for every test voxel.
FLOOR_METRICS: tuple[str, ...] = tuple(rmse_metric_name("floor", q) for q in RMSE_QUANTITIES)

#: A ``tune --repeats`` parent's summary: mean, then sample std, of its repeats' pooled RMSEs.
REPEATS_METRICS: tuple[str, ...] = (
    *(rmse_metric_name("test", q, "mean") for q in RMSE_QUANTITIES),
    *(rmse_metric_name("test", q, "std") for q in RMSE_QUANTITIES),
)

#: Metrics of a ``tune --search`` parent, besides ``best_<scheduler metric>``.
SEARCH_METRICS: tuple[str, ...] = ("trials_completed", "trials_stopped_early")

#: Every fixed metric name oefray logs.
METRIC_NAMES: tuple[str, ...] = (
    EPOCH_METRICS
    + (REPLICA_WEIGHT_SPREAD,)
    + TEST_METRICS
    + FLOOR_METRICS
    + REPEATS_METRICS
    + SEARCH_METRICS
)


def best_metric_name(metric: str) -> str:
    """Name under which a ``tune --search`` parent logs the best trial's ``metric``."""
    return f"best_{metric}"


def _by_name(split: str, values: Mapping[str, float], stat: str | None = None) -> dict[str, float]:
    return {rmse_metric_name(split, q, stat): float(v) for q, v in values.items()}


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
    return {**_by_name("test", pooled), **_by_name("test", patient_mean or {}, "patient_mean")}


def floor_metrics(pooled: Mapping[str, float]) -> dict[str, float]:
    """The floor's RMSEs (keyed by quantity) under their logged names, ``floor_rmse_<P>``."""
    return _by_name("floor", pooled)


def region_slug(region: str) -> str:
    """A region's name as a metric-name part: ``infarct core`` -> ``infarct_core``."""
    slug = "".join(c if c.isalnum() else "_" for c in region.strip()).strip("_")
    return "_".join(part for part in slug.split("_") if part) or "region"


def region_metrics(split: str, by_region: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-region RMSEs under their logged names, ``<split>_rmse_<P>_<region>`` (``split``:
    ``test`` or ``floor``; ``region`` as :func:`region_slug` spells it)."""
    return {
        f"{rmse_metric_name(split, q)}_{region_slug(region)}": float(row[q])
        for region, row in by_region.items()
        for q in RMSE_QUANTITIES
    }


def spread_metric_values(means: Mapping[str, float]) -> dict[str, float]:
    """A repeats parent's ensemble spread of OEF per region (the mean over each region's voxels,
    percentage points, by region name) under its logged names: ``ensemble_oef_std_<region>``
    and, with a lesion, ``ensemble_oef_std_lesion_over_mirror``."""
    out = {f"ensemble_oef_std_{region_slug(r)}": float(v) for r, v in means.items()}
    if means.get("lesion mirror", 0) > 0 and "lesion" in means:
        out["ensemble_oef_std_lesion_over_mirror"] = float(means["lesion"] / means["lesion mirror"])
    return out


#: Lesion contrast of a method's OEF map and of the truth, averaged over the test scans with a
#: lesion (:class:`oefray.ml.regions.RegionReport`).
LESION_CONTRAST_METRICS: dict[str, str] = {
    "cnr": "test_lesion_cnr",
    "contrast_recovered": "test_lesion_contrast_recovered",
    "cnr_true": "truth_lesion_cnr",
}


def repeats_metrics(mean: Mapping[str, float], std: Mapping[str, float]) -> dict[str, float]:
    """A repeats parent's summary under its logged names.

    Parameters
    ----------
    mean, std : mapping of str to float
        Mean and sample standard deviation over the repeats of each pooled test RMSE, keyed by
        quantity.

    Returns
    -------
    dict of str to float
        ``test_rmse_<P>_mean`` and ``test_rmse_<P>_std`` entries.
    """
    return {**_by_name("test", mean, "mean"), **_by_name("test", std, "std")}


# --------------------------------------------------------------------------------------------
# Tags
# --------------------------------------------------------------------------------------------

#: The command that made a run (``train``, ``tune --repeats``, ``baseline ccm``, ...).
COMMAND_TAG = "oefray.command"
#: Seed of a training run.
SEED_TAG = "oefray.seed"
#: Index of a repeat under a ``tune --repeats`` parent.
REPEAT_TAG = "oefray.repeat"
#: Comma-separated run ids of a parent's children.
CHILD_RUNS_TAG = "oefray.child_runs"
#: Run id of the repeat closest to the mean test OEF RMSE (a repeats parent).
REPRESENTATIVE_RUN_TAG = "oefray.representative_run"
#: Run id of the best trial (a search parent).
BEST_RUN_TAG = "oefray.best_run"
#: Ray Tune trial id of a search trial's run.
TRIAL_ID_TAG = "oefray.trial_id"
#: Epoch a training run was resumed from.
RESUMED_FROM_EPOCH_TAG = "oefray.resumed_from_epoch"
#: Epoch (counted from 0) whose weights the logged model holds.
BEST_EPOCH_TAG = "oefray.best_epoch"
#: Epochs a training run trained.
EPOCHS_RUN_TAG = "oefray.epochs_run"
#: How the training workers were fed: ``cache`` (shard held in memory) or ``stream``.
DATA_FEED_TAG = "oefray.data_feed"
#: Size of a training worker's shard of windows, MB.
SHARD_MB_TAG = "oefray.shard_mb"
#: One-line message of the exception that failed a run.
ERROR_TAG = "oefray.error"
#: Who stopped a trial early (``asha``).
STOPPED_EARLY_TAG = "oefray.stopped_early"
#: Parent-run tag of a ``tune``: the state file of its Ray Tune experiment (for ``--resume``).
TUNE_STATE_TAG = "oefray.tune_state"
#: Run id of the training run an ``oefray evaluate`` run re-evaluated (also its parent).
EVALUATES_TAG = "oefray.evaluates"
#: Run tag holding the URI of the model logged under a name: ``oefray.model.<name>``.
MODEL_TAG_PREFIX = "oefray.model."
#: MLflow's tag of a child run naming its parent.
PARENT_RUN_ID_TAG = "mlflow.parentRunId"

#: Experiment tag with the kind of an experiment, which MLflow 3's UI sets and reads (3.17.2
#: shows the view of its sidebar switch instead; see :func:`~oefray.tracking.store.experiment_url`) ...
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: ... and the value of oefray's experiments: model training, not GenAI development.
EXPERIMENT_KIND = "custom_model_development"

#: Tag of a dataset input: what the run used it for (``training``, ``evaluation``, ...).
DATASET_CONTEXT_TAG = "mlflow.data.context"


def model_tag(name: str) -> str:
    """Run tag holding the URI of the model logged as ``name``: ``oefray.model.<name>``."""
    return f"{MODEL_TAG_PREFIX}{name}"


# --------------------------------------------------------------------------------------------
# Artifacts (run-relative paths)
# --------------------------------------------------------------------------------------------

#: Folder, inside a logged model's artifacts, holding its JSON side files.
MODEL_META_DIR = "model_meta"
#: Predicted maps (NIfTI) of the test subjects.
MAPS_DIR = "maps"
#: Per-patient test RMSE, Table 1 layout.
RMSE_PER_PATIENT_CSV = "rmse_per_patient.csv"
#: Loss and validation OEF RMSE per epoch.
TRAINING_CURVES_PNG = "training_curves.png"
#: Truth vs predicted OEF maps.
OEF_MAPS_PNG = "oef_maps.png"
#: Ensemble mean and spread of OEF (a repeats parent).
UNCERTAINTY_PNG = "uncertainty.png"
#: Test RMSE over the repeats (a repeats parent).
REPEATS_SUMMARY_CSV = "repeats_summary.csv"
#: Folder, in a repeats parent, with copies of the representative repeat's figures and table.
REPRESENTATIVE_DIR = "representative"
#: The search's trials (a search parent).
TRIALS_JSON = "trials.json"
#: Test RMSE under other echo schemes (``study te-shift``).
TE_SHIFT_CSV = "te_shift.csv"
TE_SHIFT_MD = "te_shift.md"
#: The CCM dictionary (``baseline ccm``).
CCM_LIBRARY_JSON = "ccm_library.json"


def model_meta_artifact_dir(name: str) -> str:
    """Run-relative folder with a browsable copy of model ``name``'s side files."""
    return f"{name}_meta"
