"""``oefray train``: the paper's LSTM on Ray Train, tracked in MLflow.

Three layers (as Ray's own TensorFlow example and Made-With-ML keep them):

1. step math — :mod:`oefray.ml.training` (distributed train/validation steps, no Ray);
2. :func:`train_loop_per_worker` — runs on every Ray Train worker: builds the model in a
   ``MultiWorkerMirroredStrategy`` scope, feeds the worker's shard of the training set from Ray
   Data (``get_dataset_shard``), validates, reports per-epoch metrics and checkpoints, stops early;
3. :func:`build_trainer` — assembles ``ScalingConfig``/``RunConfig`` into a ``TensorflowTrainer``;
   :func:`train` — the command: data (:mod:`~oefray.orchestration.data`), the MLflow run, the fit,
   the evaluation (:mod:`~oefray.orchestration.evaluate`) and the logged model. ``oefray tune``
   runs this same :func:`train` in every trial.

One code path for CPU and GPU: ``--gpus`` only sets ``use_gpu`` in the scaling config.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray.orchestration import checkpoint as ckpt
from oefray.tracking.names import (
    BEST_EPOCH_TAG,
    COMMAND_TAG,
    DATA_FEED_TAG,
    EPOCHS_RUN_TAG,
    PARENT_RUN_ID_TAG,
    RESUMED_FROM_EPOCH_TAG,
    SEED_TAG,
    SHARD_MB_TAG,
    rmse_metric_name,
)
from oefray.tracking.store import redact_uri

# --------------------------------------------------------------------------------------------
# 2. The loop on every worker
# --------------------------------------------------------------------------------------------


@dataclass
class _Replica:
    """One worker's model, optimizer, compiled steps and batch size."""

    model: Any
    optimizer: Any
    steps: Any
    strategy: Any
    local_batch: int
    rank: int
    world: int


def _build_replica(config: dict[str, Any]) -> _Replica:
    """The model, optimizer and steps of this worker, in a MultiWorkerMirroredStrategy scope."""
    import keras
    import ray.train
    import tensorflow as tf

    from oefray.ml.model import ModelConfig, build_model, huber_loss, make_optimizer
    from oefray.ml.training import make_steps

    tf.get_logger().setLevel("ERROR")  # per-step collective INFO lines drown the progress
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    mc = ModelConfig.from_dict(config["model"])
    keras.utils.set_random_seed(int(config["seed"]))  # same initial weights on every replica
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(mc)
        optimizer = make_optimizer(mc)
        loss_fn = huber_loss(mc, reduction="none")
    per_worker_rows = int(config["n_train"]) // world
    local_batch = max(1, min(mc.batch_size // world, per_worker_rows))
    steps = make_steps(
        model,
        optimizer,
        loss_fn,
        strategy,
        global_batch_size=local_batch * world,
        y_std=np.asarray(config["y_std"]),
        y_index=int(config["y_index"]),
    )
    return _Replica(model, optimizer, steps, strategy, local_batch, rank, world)


def _open_tracking(config: dict[str, Any], rank: int, resumed: dict[str, Any] | None):
    """Rank 0's MLflow run handle (None elsewhere, or without tracking).

    Ray Train registers a reported checkpoint asynchronously, so a run killed right after an
    epoch may restart one epoch earlier than MLflow shows: that epoch is trained and logged again
    (two values at its step, the later one belongs to the model). Epochs the checkpoint holds but
    MLflow lacks are logged from it.
    """
    if rank != 0 or not config.get("tracking"):
        return None
    from oefray.tracking import Tracker

    tracker = Tracker(config["tracking"]["uri"])
    run = tracker.run(config["tracking"]["run_id"])
    if resumed is not None:
        run.set_tags({RESUMED_FROM_EPOCH_TAG: resumed["epoch"]})
        logged = {step for step, _ in tracker.metric_history(run.run_id, "loss")}
        for done in resumed["history"]:
            if done["epoch"] not in logged:
                run.log_epoch_metrics(done["epoch"], done)
    return run


def _run_epoch(rep: _Replica, feed, epoch: int, names: list[str]) -> dict[str, Any]:
    """Train one epoch on this worker's feed (:mod:`oefray.orchestration.feed`), validate, and
    return the epoch's metrics."""
    b = rep.local_batch
    t0 = time.perf_counter()
    losses = [rep.steps.train(x, y) for x, y in feed.train_batches(epoch)]
    train_seconds = time.perf_counter() - t0
    loss_sum, sq, sq_oef, count = 0.0, np.zeros(len(names)), 0.0, 0.0
    for x, y in feed.val_batches():  # same count on every worker: equal shards
        ls, s, so, c = rep.steps.validate(x, y)
        loss_sum, sq, sq_oef, count = loss_sum + ls, sq + s, sq_oef + so, count + c
    count = max(count, 1.0)
    return {
        "epoch": epoch,
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "val_loss": float(loss_sum / count),
        **{rmse_metric_name("val", p): float(np.sqrt(sq[i] / count)) for i, p in enumerate(names)},
        rmse_metric_name("val", "OEF"): float(np.sqrt(sq_oef / count)),
        "epoch_seconds": train_seconds,
        "samples_per_second": len(losses) * b * rep.world / max(train_seconds, 1e-9),
    }


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's shard; every worker runs this, rank 0 reports checkpoints.

    ``config`` keys: ``model`` (ModelConfig dict), ``seed``, ``n_train``, ``n_val``,
    ``row_bytes``, ``cache_gb``, ``workers_on_node``, ``y_std``, ``y_index``, ``targets``,
    ``patience``, ``tracking`` (``{"uri", "run_id"}`` or None), ``metrics_tags``
    (``{"experiment", "run"}`` of the Ray application metrics, optional).
    """
    import ray.train

    from oefray.orchestration import metrics as ray_metrics
    from oefray.orchestration.feed import open_feed

    rep = _build_replica(config)
    state, best_weights = ckpt.new_state(), None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume: weights, optimizer moments, counters, history
        with checkpoint.as_directory() as d, rep.strategy.scope():
            state, best_weights = ckpt.restore_checkpoint(Path(d), rep.model, rep.optimizer)
    run = _open_tracking(config, rep.rank, state if checkpoint is not None else None)
    # This worker's shards from Ray Data: cached after one pass when they fit its budget,
    # streamed every epoch otherwise (the choice, logged, is in oefray/orchestration/feed.py).
    feed, choice = open_feed(config, rep.rank, rep.world, rep.local_batch)
    if run is not None:
        run.set_tags({DATA_FEED_TAG: choice.mode, SHARD_MB_TAG: round(choice.shard_bytes / 1e6, 1)})
    while state["epoch"] < int(config["epochs"]) and not state.get("stopped_early"):
        epoch = state["epoch"]
        metrics = _run_epoch(rep, feed, epoch, config["targets"])
        if state["best_val_loss"] is None or metrics["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch, wait=0)
            best_weights = rep.model.get_weights()
        else:
            state["wait"] += 1
        state["history"].append(metrics)
        state["epoch"] = epoch + 1
        stop = state["wait"] >= int(config["patience"])
        metrics["replica_weight_spread"] = rep.steps.replica_spread()
        with tempfile.TemporaryDirectory() as tmp:
            # every rank writes (identical replicas); rank 0 hands its directory to Ray Train
            ckpt.write_checkpoint(
                Path(tmp), rep.model, rep.optimizer, best_weights, {**state, "stopped_early": stop}
            )
            ray.train.report(
                {**metrics, "epochs_done": epoch + 1, "best_epoch": state["best_epoch"]},
                checkpoint=ray.train.Checkpoint.from_directory(tmp) if rep.rank == 0 else None,
            )
        if rep.rank == 0:  # Ray application metrics (oefray/orchestration/metrics.py)
            ray_metrics.record_epoch(config.get("metrics_tags") or {}, metrics)
        if run is not None:  # after the checkpoint: a resumed run never logs an epoch twice
            run.log_epoch_metrics(epoch, metrics)
        if stop:
            break


# --------------------------------------------------------------------------------------------
# 3. The trainer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerSpec:
    """What :func:`build_trainer` needs besides the datasets."""

    workers: int = 1
    gpus: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = ""
    name: str = ""
    max_failures: int = 0
    callbacks: tuple[Any, ...] = ()  # Ray Train callbacks, e.g. Tune's per-epoch report


def build_trainer(loop_config: dict[str, Any], datasets: dict[str, Any], spec: TrainerSpec):
    """A ``TensorflowTrainer`` running :func:`train_loop_per_worker` on ``spec.workers`` workers.

    The same builder serves ``oefray train`` and every ``oefray tune`` trial.
    """
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=spec.workers,
            use_gpu=spec.gpus,
            resources_per_worker={"CPU": spec.cpus_per_worker},
        ),
        datasets=datasets,
        # the shards' rows in a deterministic order (the split is equal, so every worker runs
        # the same number of collective steps)
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
        run_config=RunConfig(
            name=spec.name,
            storage_path=spec.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            callbacks=list(spec.callbacks),
            worker_runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}},  # type: ignore[call-arg]
        ),
    )


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced (serialised into ``results.json``)."""

    run_id: str
    experiment: str
    tracking_uri: str
    model_uri: str
    table: Any  # pandas DataFrame, Table 1 layout
    test_metrics: dict[str, float]
    epochs_run: int
    best_epoch: int
    counts: dict[str, int]
    seconds: float
    ui_command: str
    val_metrics: dict[str, float] = field(default_factory=dict)  # at the best epoch

    def to_dict(self) -> dict[str, Any]:
        from oefray.reports import table_to_dict

        return {
            "command": "train",
            "run_id": self.run_id,
            "experiment": self.experiment,
            "tracking_uri": redact_uri(self.tracking_uri),
            "model_uri": self.model_uri,
            "test_metrics": self.test_metrics,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_metrics": self.val_metrics,
            "counts": self.counts,
            "seconds": round(self.seconds, 2),
            "table": table_to_dict(self.table),
            "ui_command": self.ui_command,
        }


def _run_params(features: Path, config, mc, data) -> dict[str, Any]:
    """The MLflow params of a training run."""
    return {
        "preset": config.preset,
        "model": mc.to_dict(),
        "window": data.window.to_dict(),
        "seed": config.seed,
        "workers": config.workers,
        "gpus": config.gpus,
        "val_fraction": config.val_fraction,
        "split": data.split.to_dict(),  # the hash split (oefray.ml.split)
        "max_train_windows": config.max_train_windows,
        "oversample": config.oversample,
        "echo_times_s": data.manifest.echo_times_s,
        "features": str(features),
        "features_checksums": data.manifest.checksums,
        "train_subjects": ",".join(data.train_subjects),
        "test_subjects": ",".join(data.test_subjects),
        **{f"n_{k}": v for k, v in data.counts.items()},
    }


def _open_run(tracker, config, params, *, resume, parent_run_id, tags):
    """The MLflow run of a training: a new one, or the interrupted run ``resume`` re-opened."""
    if resume is not None:
        return tracker.resumed_run(resume)
    return tracker.tracked_run(
        config.experiment,
        run_name=f"train-{config.preset}"
        + ("" if config.model == "lstm" else f"-{config.model}")
        + ("" if config.oversample == 1 else f"-os{config.oversample}")
        + f"-seed{config.seed}",
        params=params,
        tags={
            COMMAND_TAG: "train",
            SEED_TAG: config.seed,
            **({PARENT_RUN_ID_TAG: parent_run_id} if parent_run_id else {}),
            **(tags or {}),
        },
    )


def make_loop_config(
    mc,
    *,
    seed: int,
    n_train: int,
    y_std: np.ndarray,
    n_val: int = 0,
    row_bytes: int = 0,
    cache_gb: float | None = None,
    workers_on_node: int = 1,
    tracking: dict[str, str] | None = None,
    metrics_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The config of :func:`train_loop_per_worker` (plain data: it travels to every worker).

    Parameters
    ----------
    mc : ModelConfig
        Widths and schedule (epochs, patience, batch size).
    seed : int
        Seed of the initial weights and of the per-epoch shuffling.
    n_train : int
        Training windows (sets the per-worker batch).
    y_std : (5,) array
        Target scale of the standardisation (validation errors in physical units).
    n_val, row_bytes : int
        Validation windows and bytes per row: a worker's shard size, for its cache decision.
    cache_gb : float, optional
        A worker's cache budget (:func:`oefray.orchestration.feed.cache_limit_bytes`).
    workers_on_node : int
        Workers sharing a node's memory (the default budget is divided among them).
    tracking : dict, optional
        ``{"uri", "run_id"}`` of the MLflow run rank 0 logs epochs to.
    metrics_tags : dict, optional
        ``{"experiment", "run"}`` tags of the Ray application metrics.
    """
    from oefray.physics.constants import PARAMETERS

    return {
        "model": mc.to_dict(),
        "epochs": mc.epochs,
        "patience": mc.patience,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "row_bytes": int(row_bytes),
        "cache_gb": cache_gb,
        "workers_on_node": int(workers_on_node),
        "y_std": np.asarray(y_std).tolist(),
        "y_index": PARAMETERS.index("Y"),
        "targets": list(PARAMETERS),
        "tracking": tracking,
        "metrics_tags": metrics_tags,
    }


def _workers_per_node(workers: int) -> int:
    """Workers that may share one node's memory: all of them on a one-node cluster, else an
    even spread over the nodes (the cache budget's divisor)."""
    import ray

    nodes = max(1, sum(1 for n in ray.nodes() if n.get("Alive")))
    return max(1, -(-int(workers) // nodes))


def _fit(run, tracker, config, mc, data, storage: str, callbacks) -> tuple[Any, dict[str, Any]]:
    """Fit on Ray Train; returns the best-epoch Keras model and the final training state."""
    from oefray.io.locks import writing
    from oefray.ml.model import build_model

    loop_config = make_loop_config(
        mc,
        seed=config.seed,
        n_train=data.counts["train_windows"],
        y_std=data.y_scaler.std,
        n_val=data.counts["val_windows"],
        row_bytes=data.row_bytes,
        cache_gb=config.cache_gb,
        workers_on_node=_workers_per_node(config.workers),
        tracking={"uri": tracker.tracking_uri, "run_id": run.run_id},
        metrics_tags={"experiment": config.experiment, "run": run.run_id},
    )
    datasets = {"train": data.train, "val": data.val}
    spec = TrainerSpec(
        workers=config.workers,
        gpus=config.gpus,
        storage_path=storage,
        name=f"oefray-train-{run.run_id}",
        max_failures=config.max_failures,
        callbacks=tuple(callbacks),
    )
    folder = Path(storage) / spec.name  # Ray Train's experiment folder of this run
    folder.mkdir(parents=True, exist_ok=True)
    with writing(folder, "train"):  # one writer: two `train --resume RUN` do not interleave
        result = build_trainer(loop_config, datasets, spec).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint ({result.error})")
    model = build_model(mc)
    with result.checkpoint.as_directory() as d:
        weights, state = ckpt.read_best(Path(d))
    model.set_weights(weights)
    return model, state


def _evaluate_and_log(
    run, model, mc, data, state: dict[str, Any], gpus: bool = False
) -> tuple[Any, dict, str]:
    """Evaluate the trained model on the test subjects (batch inference, GPU actors with
    ``gpus``) and log it as a :class:`ModelBundle`; returns the Table 1 frame, the logged test
    metrics and the model URI."""
    from oefray.io.bundle import ModelBundle
    from oefray.io.manifest import FORMAT_VERSION
    from oefray.orchestration.evaluate import evaluate_model

    bundle = ModelBundle(
        model=model,
        x_scaler=data.x_scaler,
        y_scaler=data.y_scaler,
        window=data.window,
        model_config=mc.to_dict(),
        features_options=data.manifest.options,
        features_format_version=FORMAT_VERSION,
        echo_times_s=data.manifest.echo_times_s,
    )
    history = state["history"]
    with tempfile.TemporaryDirectory() as tmp:
        table, logged = evaluate_model(
            run,
            bundle,
            data.features,
            data.test_subjects,
            data.manifest,
            history,
            Path(tmp),
            gpus=gpus,
        )
    model_uri = run.log_keras_model(model, extra_files=bundle.files())
    run.set_tags({BEST_EPOCH_TAG: state["best_epoch"], EPOCHS_RUN_TAG: state["epoch"]})
    return table, logged, model_uri


def _best_val_metrics(state: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for done in state["history"]
        if done["epoch"] == state["best_epoch"]
        for k, v in done.items()
        if k.startswith("val_")
    }


def train(
    features: str | Path,
    config=None,
    *,
    storage_path: str | Path | None = None,
    resume: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
    stream: bool = True,
) -> TrainResult:
    """Train the LSTM on the training subjects of a features folder and evaluate on the test ones.

    Parameters
    ----------
    features : path
        Output of ``oefray preprocess`` with ground truth.
    config : TrainConfig, optional
    storage_path : path, optional
        Where Ray Train keeps checkpoints (default ``./ray_results``; on a cluster, shared storage).
    resume : str, optional
        MLflow run id of an interrupted run: the run is re-opened and Ray Train restarts from the
        last checkpoint it stored under the same run name (same config required).
    parent_run_id : str, optional
        Make the MLflow run a child of this run (seed repeats, searches).
    tags : dict, optional
        Extra MLflow tags of the run.
    callbacks : tuple, optional
        Ray Train callbacks (``tune --search`` passes Tune's per-epoch report callback).
    stream : bool
        Let the training data stream lazily when the cluster has CPUs to spare
        (:func:`oefray.orchestration.data.prepare_data`); Tune's trials pass False.
    """
    from oefray.config import TrainConfig
    from oefray.ml.model import model_config
    from oefray.orchestration import runtime
    from oefray.orchestration.data import load_training_manifest, prepare_data
    from oefray.orchestration.evaluate import log_features_inputs
    from oefray.tracking import Tracker, writable_tracking_uri

    t0 = time.perf_counter()
    config = config or TrainConfig()
    writable_tracking_uri(config.tracking_uri, create=False)  # before the features and Ray
    load_training_manifest(Path(features).resolve())  # no ground truth: refused before Ray
    mc = model_config(config.preset, **config.model_overrides())
    tracker = Tracker.from_uri(config.tracking_uri)
    storage = str(runtime.storage_path(storage_path))
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            runtime.ray_runtime(config.address, runtime.training_cpus(config.workers))
        )
        # before the MLflow run: a usage error leaves no failed run behind
        runtime.check_gpus(config.gpus, config.workers, config.address)
        data = prepare_data(features, config, stream=stream)
        params = _run_params(data.features, config, mc, data)
        opened = _open_run(
            tracker, config, params, resume=resume, parent_run_id=parent_run_id, tags=tags
        )
        run = stack.enter_context(opened)
        log_features_inputs(
            run, data.features, data.manifest, data.train_subjects, data.test_subjects
        )
        model, state = _fit(run, tracker, config, mc, data, storage, callbacks)
        table, logged, model_uri = _evaluate_and_log(run, model, mc, data, state, config.gpus)
    return TrainResult(
        run_id=run.run_id,
        experiment=config.experiment,
        tracking_uri=tracker.tracking_uri,
        model_uri=model_uri,
        table=table,
        test_metrics=logged,
        epochs_run=int(state["epoch"]),
        best_epoch=int(state["best_epoch"]),
        counts=data.counts,
        seconds=time.perf_counter() - t0,
        ui_command=tracker.ui_command(),
        val_metrics=_best_val_metrics(state),
    )
