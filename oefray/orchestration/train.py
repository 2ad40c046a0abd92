"""``oefray train``: the paper's LSTM on Ray Train, tracked in MLflow.

Three layers (as Ray's own TensorFlow example and Made-With-ML keep them):

1. step math — :mod:`oefray.ml.training` (distributed train/validation steps, no Ray);
2. :func:`train_loop_per_worker` — runs on every Ray Train worker: builds the model in a
   ``MultiWorkerMirroredStrategy`` scope, feeds the worker's shard of the training set from Ray
   Data (``get_dataset_shard``), validates, reports per-epoch metrics and checkpoints, stops early;
3. :func:`build_trainer` — assembles ``ScalingConfig``/``RunConfig`` into a ``TensorflowTrainer``;
   shared by ``oefray train`` and ``oefray tune``.

One code path for CPU and GPU: ``--gpus`` only sets ``use_gpu`` in the scaling config.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Files of a training checkpoint.
WEIGHTS = "model.weights.h5"
BEST_WEIGHTS = "best_weights.npz"
OPTIMIZER = "optimizer.npz"
STATE = "state.json"


# --------------------------------------------------------------------------------------------
# 2. The loop on every worker
# --------------------------------------------------------------------------------------------


def save_arrays(path: Path, arrays: list[np.ndarray]) -> None:
    """A list of arrays (weights, optimizer slots) as one ``.npz``, in order."""
    np.savez(path, *arrays)


def load_arrays(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _load_optimizer(optimizer, model, path: Path) -> None:
    optimizer.build(model.trainable_variables)  # creates its slots: call in the strategy scope
    for var, value in zip(optimizer.variables, load_arrays(path), strict=True):
        var.assign(value)


def _collect(shard) -> tuple[np.ndarray, np.ndarray]:
    """All rows of a Ray Data shard as arrays ``x`` (n, L, F) and ``y`` (n, P)."""
    xs, ys = [], []
    for batch in shard.iter_batches(batch_size=8192, batch_format="numpy"):
        xs.append(batch["x"])
        ys.append(batch["y"])
    if not xs:
        raise RuntimeError("this worker's data shard is empty: fewer windows than workers")
    return np.concatenate(xs), np.concatenate(ys)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train on this worker's shard; every worker runs this, rank 0 reports checkpoints.

    ``config`` keys: ``model`` (ModelConfig dict), ``seed``, ``n_train``, ``y_mean``, ``y_std``,
    ``y_index``, ``tracking`` (``{"uri", "run_id"}`` or None), ``metrics_tags`` (``{"experiment",
    "run"}`` of the Ray application metrics, optional).
    """
    import keras
    import ray.train
    import tensorflow as tf

    from oefray import metrics as ray_metrics
    from oefray.ml.model import ModelConfig, build_lstm, huber_loss, make_optimizer
    from oefray.ml.training import make_steps

    tf.get_logger().setLevel("ERROR")  # per-step collective INFO lines drown the progress
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    mc = ModelConfig.from_dict(config["model"])
    keras.utils.set_random_seed(int(config["seed"]))  # same initial weights on every replica
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_lstm(mc)
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
        y_mean=np.asarray(config["y_mean"]),
        y_std=np.asarray(config["y_std"]),
        y_index=int(config["y_index"]),
    )

    state: dict[str, Any] = {
        "epoch": 0,
        "best_val_loss": None,
        "best_epoch": -1,
        "wait": 0,
        "history": [],
    }
    best_weights = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume: weights, optimizer moments, counters, history
        with checkpoint.as_directory() as d, strategy.scope():
            d = Path(d)
            model.load_weights(d / WEIGHTS)
            _load_optimizer(optimizer, model, d / OPTIMIZER)
            state = json.loads((d / STATE).read_text())
            best_weights = load_arrays(d / BEST_WEIGHTS)

    tracker = None
    if rank == 0 and config.get("tracking"):  # only rank 0 logs
        from oefray.tracking import Tracker

        tracker = Tracker(config["tracking"]["uri"])
        run_id = config["tracking"]["run_id"]
        if checkpoint is not None:
            # Ray Train registers a reported checkpoint asynchronously, so a run killed right
            # after an epoch may restart one epoch earlier than MLflow shows: that epoch is
            # trained and logged again (two values at its step, the later one belongs to the
            # model). Epochs the checkpoint holds but MLflow lacks are logged from it.
            tracker.run(run_id).set_tags({"oefray.resumed_from_epoch": state["epoch"]})
            logged = {step for step, _ in tracker.metric_history(run_id, "loss")}
            for done in state["history"]:
                if done["epoch"] not in logged:
                    tracker.run(run_id).log_epoch_metrics(done["epoch"], done)

    # This worker's shards, from Ray Data. Held in memory after one pass: the windows are small
    # (n x 5 x 4 float32), and re-streaming them through the split coordinator every epoch cost
    # ~25 % of an epoch on 2 CPUs (benchmarks/train_overhead.py).
    x_train, y_train = _collect(ray.train.get_dataset_shard("train"))
    x_val, y_val = _collect(ray.train.get_dataset_shard("val"))
    n_steps = len(x_train) // local_batch  # equal on every worker: shards are split equally
    names = config["targets"]
    while state["epoch"] < mc.epochs and not state.get("stopped_early"):
        epoch = state["epoch"]
        t0 = time.perf_counter()
        order = np.random.default_rng([int(config["seed"]), rank, epoch]).permutation(len(x_train))
        losses = []
        for k in range(n_steps):
            take = order[k * local_batch : (k + 1) * local_batch]
            losses.append(steps.train(x_train[take], y_train[take]))
        train_seconds = time.perf_counter() - t0
        loss_sum, sq, sq_oef, count = 0.0, np.zeros(len(names)), 0.0, 0.0
        for k in range(0, len(x_val), local_batch):  # same count on every worker
            ls, s, so, c = steps.validate(x_val[k : k + local_batch], y_val[k : k + local_batch])
            loss_sum, sq, sq_oef, count = loss_sum + ls, sq + s, sq_oef + so, count + c
        count = max(count, 1.0)
        metrics = {
            "epoch": epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "val_loss": float(loss_sum / count),
            **{f"val_rmse_{p}": float(np.sqrt(sq[i] / count)) for i, p in enumerate(names)},
            "val_rmse_OEF": float(np.sqrt(sq_oef / count)),
            "epoch_seconds": train_seconds,
            "samples_per_second": len(losses) * local_batch * world / max(train_seconds, 1e-9),
        }
        improved = state["best_val_loss"] is None or metrics["val_loss"] < state["best_val_loss"]
        if improved:
            state.update(best_val_loss=metrics["val_loss"], best_epoch=epoch, wait=0)
            best_weights = model.get_weights()
        else:
            state["wait"] += 1
        state["history"].append(metrics)
        state["epoch"] = epoch + 1
        stop = state["wait"] >= mc.patience
        metrics["replica_weight_spread"] = steps.replica_spread()
        with tempfile.TemporaryDirectory() as tmp:
            # every rank writes (identical replicas); rank 0 hands its directory to Ray Train
            tmp_path = Path(tmp)
            model.save_weights(tmp_path / WEIGHTS)
            save_arrays(tmp_path / OPTIMIZER, [v.numpy() for v in optimizer.variables])
            save_arrays(tmp_path / BEST_WEIGHTS, best_weights or model.get_weights())
            (tmp_path / STATE).write_text(json.dumps({**state, "stopped_early": stop}))
            ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
            ray.train.report(
                {**metrics, "epochs_done": epoch + 1, "best_epoch": state["best_epoch"]},
                checkpoint=ckpt,
            )
        if rank == 0:  # Ray application metrics (oefray/metrics.py), once per epoch
            ray_metrics.record_epoch(config.get("metrics_tags") or {}, metrics)
        if tracker is not None:  # after the checkpoint: a resumed run never logs an epoch twice
            tracker.run(run_id).log_epoch_metrics(epoch, metrics)
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
    extra: dict[str, Any] = field(default_factory=dict)


def build_trainer(loop_config: dict[str, Any], datasets: dict[str, Any], spec: TrainerSpec):
    """A ``TensorflowTrainer`` running :func:`train_loop_per_worker` on ``spec.workers`` workers.

    The same builder serves ``oefray train`` and ``oefray tune``.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
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
# Data: windows, split, scalers (driver side)
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Standardised training/validation arrays, test windows, scalers and bookkeeping."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    test: Any  # oefray.ml.windows.Windows of the test subjects (physical units)
    x_scaler: Any
    y_scaler: Any
    window: Any
    manifest: dict[str, Any]
    train_subjects: list[str]
    test_subjects: list[str]
    counts: dict[str, int]


def prepare_data(features: str | Path, config) -> PreparedData:
    """Read the features, cut windows, split 8:2, fit the scalers on the training part only."""
    from oefray.errors import FeaturesError
    from oefray.io import features as fio
    from oefray.ml.scaling import Standardizer
    from oefray.ml.windows import WindowConfig, make_windows_table, train_val_split

    features = Path(features).resolve()
    manifest = fio.read_manifest(features)
    if manifest is None:
        raise FeaturesError(
            features, "no manifest.json: not a features folder (run oefray preprocess)"
        )
    if not manifest.get("has_truth"):
        raise FeaturesError(
            features, "features carry no ground truth (Y, v, R2, S0, chi_nb): nothing to train on"
        )
    split = {s: e.get("split", "") for s, e in manifest["subjects"].items()}
    train_subjects = list(config.train_subjects or [s for s, v in split.items() if v == "train"])
    test_subjects = list(config.test_subjects or [s for s, v in split.items() if v == "test"])
    if not train_subjects or not test_subjects:
        raise FeaturesError(
            features / fio.MANIFEST,
            f"need training and test subjects (split: {len(train_subjects)} train, {len(test_subjects)} test)",
        )
    overlap = sorted(set(train_subjects) & set(test_subjects))
    if overlap:
        raise FeaturesError(features, f"subjects both in training and test: {', '.join(overlap)}")
    table = fio.read_features(features, train_subjects + test_subjects)
    window = WindowConfig(length=config.window, anchor=config.anchor)
    train_w = make_windows_table(table, window, train_subjects)
    test_w = make_windows_table(table, window, test_subjects)
    tr, va = train_val_split(len(train_w), config.val_fraction, seed=config.seed)
    tr = np.random.default_rng(config.seed).permutation(tr)  # no spatial order within batches
    if config.max_train_windows is not None and len(tr) > config.max_train_windows:
        rng = np.random.default_rng(config.seed)
        tr = rng.choice(tr, size=config.max_train_windows, replace=False)
        va = np.sort(
            rng.choice(va, size=min(len(va), max(1, config.max_train_windows // 4)), replace=False)
        )
    if len(tr) == 0 or len(va) == 0 or len(test_w) == 0:
        raise FeaturesError(
            features, f"too few windows (train {len(tr)}, validation {len(va)}, test {len(test_w)})"
        )
    y = train_w.y
    assert y is not None  # made with targets
    x_scaler = Standardizer.fit(train_w.x[tr])
    y_scaler = Standardizer.fit(y[tr])
    return PreparedData(
        x_train=x_scaler.transform(train_w.x[tr]),
        y_train=y_scaler.transform(y[tr]),
        x_val=x_scaler.transform(train_w.x[va]),
        y_val=y_scaler.transform(y[va]),
        test=test_w,
        x_scaler=x_scaler,
        y_scaler=y_scaler,
        window=window,
        manifest=manifest,
        train_subjects=train_subjects,
        test_subjects=test_subjects,
        counts={
            "train_windows": len(tr),
            "val_windows": len(va),
            "test_windows": len(test_w),
            "excluded_train_voxels": train_w.n_excluded,
            "excluded_test_voxels": test_w.n_excluded,
        },
    )


def to_ray_dataset(x: np.ndarray, y: np.ndarray):
    """A materialised Ray dataset with tensor columns ``x`` (n, L, F) and ``y`` (n, P).

    Materialised on purpose: with few CPUs, streaming Ray Data into 1-CPU training workers
    never gets scheduled (the workers hold every CPU).
    """
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({"x": ArrowTensorArray.from_numpy(x), "y": ArrowTensorArray.from_numpy(y)})
    return ray.data.from_arrow(table).materialize()


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
        return {
            "command": "train",
            "run_id": self.run_id,
            "experiment": self.experiment,
            "tracking_uri": self.tracking_uri,
            "model_uri": self.model_uri,
            "test_metrics": self.test_metrics,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_metrics": self.val_metrics,
            "counts": self.counts,
            "seconds": round(self.seconds, 2),
            "table": {
                str(k): {c: float(v) for c, v in row.items()} for k, row in self.table.iterrows()
            },
            "ui_command": self.ui_command,
        }


def predict_windows(model, x_scaler, y_scaler, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Parameters (n, 5) in physical units for windows ``x`` (n, L, 4) in physical units."""
    if len(x) == 0:
        return np.zeros((0, 5), np.float32)
    pred = model.predict(x_scaler.transform(x), batch_size=batch_size, verbose=0)
    return y_scaler.inverse_transform(np.asarray(pred, dtype=np.float32))


def write_evaluation(
    run, model, data: PreparedData, history: list[dict[str, Any]], out_dir: Path
) -> tuple[Any, dict[str, float]]:
    """Test-set tables, figures and maps of a trained model, logged to ``run``.

    Returns the Table 1 frame and the logged test metrics.
    """
    from oefray import reports

    test = data.test
    pred = predict_windows(model, data.x_scaler, data.y_scaler, test.x)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {k: [h[k] for h in history] for k in ("loss", "val_loss", "val_rmse_OEF")}
    run.log_artifact_file(reports.plot_training_curves(curves, out_dir / "training_curves.png"))
    return log_evaluation(
        run,
        pred,
        test.y,
        test.subject,
        test.idx,
        data.test_subjects,
        data.manifest,
        data.y_scaler.mean,
        out_dir,
    )


def log_evaluation(
    run,
    pred: np.ndarray,
    true: np.ndarray,
    subject: np.ndarray,
    idx: np.ndarray,
    test_subjects: list[str],
    manifest: dict[str, Any],
    train_mean: np.ndarray,
    out_dir: Path,
) -> tuple[Any, dict[str, float]]:
    """Log any method's test predictions the same way: metrics, Table 1 CSV, maps, Fig. 4.

    Parameters
    ----------
    pred, true : (n, 5) arrays
        Predicted and true parameters (physical units) of the test voxels.
    subject, idx : (n,) arrays
        Each voxel's subject and C-order index in that subject's grid.
    train_mean : (5,) array
        The training subjects' mean parameters: the floor predicts it for every voxel.
    """
    from oefray import reports
    from oefray.io.maps import scatter_map, write_prediction_maps
    from oefray.ml.metrics import oef_percent, per_subject_rmse, pooled_rmse
    from oefray.physics.constants import PARAMETERS

    rows, columns = per_subject_rmse(pred, true, subject)
    table = reports.rmse_table_frame(rows[:-1], {k: v[:-1] for k, v in columns.items()})
    pooled = pooled_rmse(pred, true)
    patient_mean = {name: float(columns[name][-1]) for name in columns}
    logged = run.log_test_metrics(pooled, patient_mean)
    # the floor: every test voxel gets the training subjects' mean parameters
    floor = pooled_rmse(np.broadcast_to(np.asarray(train_mean, np.float64), true.shape), true)
    run.log_metrics({f"floor_rmse_{k}": v for k, v in floor.items()})
    logged.update({f"floor_rmse_{k}": float(v) for k, v in floor.items()})
    out_dir.mkdir(parents=True, exist_ok=True)
    run.log_artifact_file(reports.write_rmse_csv(table, out_dir / "rmse_per_patient.csv"))
    panels = []
    maps_dir = out_dir / "maps"
    y = PARAMETERS.index("Y")
    for label in test_subjects:
        entry = manifest["subjects"][label]
        shape, affine = tuple(entry["shape"]), np.asarray(entry["affine"])
        sel = subject == label
        values = {p: pred[sel, i] for i, p in enumerate(PARAMETERS)}
        values["OEF"] = oef_percent(pred[sel, y])
        write_prediction_maps(maps_dir, label, values, idx[sel], shape, affine)
        z = shape[2] // 2
        truth = scatter_map(oef_percent(true[sel, y]), idx[sel], shape)[:, :, z]
        guess = scatter_map(values["OEF"], idx[sel], shape)[:, :, z]
        panels.append((label, truth, guess, float(columns["OEF"][rows.index(label)])))
    run.log_artifact_dir(maps_dir, "maps")
    run.log_artifact_file(reports.plot_oef_maps(panels, out_dir / "oef_maps.png"))
    return table, logged


def _check_gpus(config) -> None:
    """On a local runtime, refuse ``--gpus`` without GPUs (Ray would wait for them forever);
    an autoscaling cluster may still add GPU nodes, so remote clusters are not checked."""
    import os

    import ray

    from oefray.errors import OefrayError

    if not config.gpus or config.address or os.environ.get("RAY_ADDRESS"):
        return
    have = int(ray.cluster_resources().get("GPU", 0))
    if have < config.workers:
        raise OefrayError(
            None, f"--gpus needs {config.workers} GPU(s), this machine's Ray runtime has {have}"
        )


def train(
    features: str | Path,
    config=None,
    *,
    storage_path: str | Path | None = None,
    resume: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    callbacks: tuple[Any, ...] = (),
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
    """
    from oefray.config import TrainConfig
    from oefray.ml.model import build_lstm, model_config
    from oefray.orchestration.preprocess import ray_runtime
    from oefray.physics.constants import PARAMETERS
    from oefray.tracking import Tracker

    t0 = time.perf_counter()
    config = config or TrainConfig()
    data = prepare_data(features, config)
    mc = model_config(config.preset, **config.model_overrides())
    tracker = Tracker.from_uri(config.tracking_uri)
    storage = str(Path(storage_path or Path.cwd() / "ray_results").resolve())
    params = {
        "preset": config.preset,
        "model": mc.to_dict(),
        "window": {"length": data.window.length, "anchor": data.window.anchor},
        "seed": config.seed,
        "workers": config.workers,
        "gpus": config.gpus,
        "val_fraction": config.val_fraction,
        "max_train_windows": config.max_train_windows,
        "echo_times_s": data.manifest.get("echo_times_s"),
        "features": str(Path(features).resolve()),
        "features_checksums": {s: e["checksum"] for s, e in data.manifest["subjects"].items()},
        "train_subjects": ",".join(data.train_subjects),
        "test_subjects": ",".join(data.test_subjects),
        **{f"n_{k}": v for k, v in data.counts.items()},
    }
    if resume is None:
        opened = tracker.tracked_run(
            config.experiment,
            run_name=f"train-{config.preset}-seed{config.seed}",
            params=params,
            tags={
                "oefray.command": "train",
                "oefray.seed": config.seed,
                **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
                **(tags or {}),
            },
        )
    else:
        opened = tracker.resumed_run(resume)
    with contextlib.ExitStack() as stack:
        stack.enter_context(ray_runtime(config.address, max(config.workers, 2)))
        _check_gpus(config)  # before the MLflow run: a usage error leaves no failed run behind
        run = stack.enter_context(opened)
        datasets = {
            "train": to_ray_dataset(data.x_train, data.y_train),
            "val": to_ray_dataset(data.x_val, data.y_val),
        }
        loop_config = {
            "model": mc.to_dict(),
            "seed": config.seed,
            "n_train": len(data.x_train),
            "y_mean": data.y_scaler.mean.tolist(),
            "y_std": data.y_scaler.std.tolist(),
            "y_index": PARAMETERS.index("Y"),
            "targets": list(PARAMETERS),
            "tracking": {"uri": tracker.tracking_uri, "run_id": run.run_id},
            "metrics_tags": {"experiment": config.experiment, "run": run.run_id},
        }
        spec = TrainerSpec(
            workers=config.workers,
            gpus=config.gpus,
            storage_path=storage,
            name=f"oefray-train-{run.run_id}",
            max_failures=config.max_failures,
            callbacks=tuple(callbacks),
        )
        result = build_trainer(loop_config, datasets, spec).fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training produced no checkpoint ({result.error})")
        model = build_lstm(mc)
        with result.checkpoint.as_directory() as d:
            model.set_weights(load_arrays(Path(d) / BEST_WEIGHTS))
            state = json.loads((Path(d) / STATE).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            table, logged = write_evaluation(run, model, data, state["history"], Path(tmp))
        model_uri = run.log_keras_model(
            model,
            extra_files={
                "scalers": {"x": data.x_scaler.to_dict(), "y": data.y_scaler.to_dict()},
                "window": {"length": data.window.length, "anchor": data.window.anchor},
                "model_config": mc.to_dict(),
                "targets": {"names": list(PARAMETERS)},
                "features": {
                    "options": data.manifest.get("options", {}),
                    "echo_times_s": data.manifest.get("echo_times_s"),
                },
            },
        )
        run.set_tags(
            {"oefray.best_epoch": state["best_epoch"], "oefray.epochs_run": state["epoch"]}
        )
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
        val_metrics={
            k: float(v)
            for done in state["history"]
            if done["epoch"] == state["best_epoch"]
            for k, v in done.items()
            if k.startswith("val_")
        },
    )
