"""Ray Train (1 worker) against a plain Keras ``model.fit``: time per training epoch of the LSTM.

Usage::

    python benchmarks/train_overhead.py [--presets small,paper] [--epochs 4] [--samples 40000]
                                        [--paper-samples 10000] [--seed 0] [--cache-gb G]
                                        [--ray-logs]

Generates seeded synthetic, already standardised windows (float32 ``x`` of shape (N, 5, 4),
targets ``y`` of shape (N, 5)) plus a separate validation set of N/10 windows, and trains the
same model on the same N training windows, per preset, in the same run:

- **plain fit** (reference): in this process, no Ray running — ``build_lstm(model_config(preset,
  epochs=E))``, ``compile_for_fit``, ``model.fit(x, y, batch_size=512, epochs=E, shuffle=False,
  verbose=0)``; a Keras callback records each epoch's wall time. No validation data;
- **Ray Train, 1 worker**: a fresh local runtime (``ray.init(num_cpus=2)``), ``build_trainer``
  with the loop config ``oefray train`` builds (no tracking; patience = E so that all E epochs
  run) on ``to_ray_dataset`` training and validation sets. Each epoch's ``epoch_seconds`` (the
  training part of the epoch: Ray Data batches into the custom distributed step; validation and
  checkpointing excluded) is read from the ``history`` of the last checkpoint's ``state.json``.

So both numbers are the training part of an epoch. N is rounded down to a multiple of the batch
size (512): the Ray loop drops the last partial batch, so both then run the same full steps.
Each method reports the median epoch time without the first epoch (graph tracing). The ``paper``
preset is over 10x slower per sample on CPU, so it runs on ``--paper-samples`` windows (default
10,000) to keep the default run within ~5 minutes on 2 cores.

Prints the ratio Ray Train / plain fit per epoch (DESIGN.md target <= 1.15) and samples/s of both,
and ends with one line per preset:
``train_overhead preset=<p> ray_over_fit=<ratio> fit_samples_per_s=<n> ray_samples_per_s=<n>``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads (Ray workers inherit)
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

BATCH = 512
TARGET = 1.15


def synthetic(n: int, n_val: int, seed: int) -> tuple[np.ndarray, ...]:
    """Standardised windows ``x`` (n, 5, 4) and targets ``y`` (n, 5) plus a validation set, float32.

    The targets depend (nonlinearly, with noise) on the windows so the loss goes down; the values
    do not affect the timing.
    """
    rng = np.random.default_rng(seed)
    total = n + n_val
    x = rng.standard_normal((total, 5, 4), dtype=np.float32)
    w = rng.standard_normal((20, 5)).astype(np.float32) / np.sqrt(20.0)
    y = np.tanh(x.reshape(total, -1) @ w) + 0.1 * rng.standard_normal((total, 5), dtype=np.float32)
    y = ((y - y[:n].mean(axis=0)) / y[:n].std(axis=0)).astype(np.float32)
    return x[:n], y[:n], x[n:], y[n:]


def plain_fit(preset: str, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> list[float]:
    """Seconds of each epoch of ``model.fit`` in this process."""
    import keras

    from oefray.ml.model import build_lstm, compile_for_fit, model_config

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._t0 = 0.0

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.seconds.append(time.perf_counter() - self._t0)

    keras.utils.set_random_seed(seed)
    mc = model_config(preset, epochs=epochs, patience=epochs)
    model = compile_for_fit(build_lstm(mc), mc)
    timer = EpochTimer()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer])
    keras.backend.clear_session()
    return timer.seconds


def to_ray_dataset(x: np.ndarray, y: np.ndarray):
    """A materialised Ray dataset with tensor columns ``x`` (n, L, F), ``y`` (n, P) and
    ``order`` (their row numbers) from the benchmark's arrays."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table(
        {
            "x": ArrowTensorArray.from_numpy(x),
            "y": ArrowTensorArray.from_numpy(y),
            "order": pa.array(np.arange(len(x), dtype=np.uint64)),
        }
    )
    return ray.data.from_arrow(table).materialize()


def ray_train(
    preset: str,
    data: tuple[np.ndarray, ...],
    epochs: int,
    seed: int,
    storage: Path,
    cache_gb: float | None = None,
) -> tuple[list[dict], float]:
    """Per-epoch history (``state.json`` of the last checkpoint) of a 1-worker Ray Train run,
    and the wall time of ``trainer.fit()`` (worker start-up, tracing, validation included)."""
    from oefray.ml.model import model_config
    from oefray.orchestration.checkpoint import STATE
    from oefray.orchestration.train import TrainerSpec, build_trainer, make_loop_config

    x_train, y_train, x_val, y_val = data
    mc = model_config(preset, epochs=epochs, patience=epochs)  # never stops early
    # as oefray.orchestration.train.train builds it, without tracking
    loop_config = make_loop_config(
        mc,
        seed=seed,
        n_train=len(x_train),
        y_std=y_train.std(axis=0),
        n_val=len(x_val),
        row_bytes=x_train[0].nbytes + y_train[0].nbytes + 8,
        cache_gb=cache_gb,
    )
    datasets = {"train": to_ray_dataset(x_train, y_train), "val": to_ray_dataset(x_val, y_val)}
    spec = TrainerSpec(
        workers=1,
        storage_path=str(storage),
        name=f"train-overhead-{preset}-{uuid.uuid4().hex[:8]}",
    )
    t0 = time.perf_counter()
    result = build_trainer(loop_config, datasets, spec).fit()
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run produced no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE).read_text())
    return state["history"], wall


def _median_after_first(seconds: Sequence[float]) -> float:
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def _fmt(seconds: Sequence[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in seconds)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="small,paper", help="comma-separated model presets")
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs per run (>= 2; first excluded)"
    )
    parser.add_argument("--samples", type=int, default=40_000, help="training windows (small etc.)")
    parser.add_argument(
        "--paper-samples",
        type=int,
        default=10_000,
        help="training windows for the paper preset (slow on CPU); 0: use --samples",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-gb",
        type=float,
        default=None,
        help="the worker's cache budget (oefray train --cache-gb); 0 streams every epoch",
    )
    parser.add_argument(
        "--ray-logs", action="store_true", help="forward Ray worker logs to this terminal"
    )
    ns = parser.parse_args(args)

    presets = [p.strip() for p in ns.presets.split(",") if p.strip()]
    from oefray.ml.model import PRESETS

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    if ns.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is excluded)")

    import keras
    import ray
    import tensorflow as tf

    print(
        f"ray {ray.__version__}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs; batch {BATCH}, {ns.epochs} epochs, seed {ns.seed}"
    )
    print(
        "timed: training part of each epoch (plain fit: no validation data; Ray: validation and "
        "checkpoint excluded); median of epochs 2..E"
    )

    work = Path(tempfile.mkdtemp(prefix="oefray-bench-train-"))
    finals: list[str] = []
    try:
        for preset in presets:
            requested = ns.paper_samples if preset == "paper" and ns.paper_samples else ns.samples
            n = (requested // BATCH) * BATCH
            if n < BATCH:
                parser.error(f"need at least {BATCH} samples for {preset}, got {requested}")
            n_val = max(1, n // 10)
            data = synthetic(n, n_val, ns.seed)
            slow = preset == "paper" and ns.paper_samples
            note = " (--paper-samples: fewer, the paper preset is slow on CPU)" if slow else ""
            print(
                f"\n[{preset}] {n:,} training windows ({requested:,} rounded down to a multiple "
                f"of {BATCH}){note}; Ray validation set {n_val:,}; {n // BATCH} steps/epoch"
            )

            load_before = os.getloadavg()[0]
            fit_s = plain_fit(preset, data[0], data[1], ns.epochs, ns.seed)
            t_fit = _median_after_first(fit_s)
            print(f"  plain fit (no Ray) epochs [s]:   {_fmt(fit_s)}")

            ray.init(
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=ns.ray_logs,  # a failed run still raises with the worker's error
            )
            try:
                history, wall = ray_train(preset, data, ns.epochs, ns.seed, work, ns.cache_gb)
            finally:
                ray.shutdown()
            ray_s = [float(h["epoch_seconds"]) for h in history]
            if len(ray_s) != ns.epochs:
                raise RuntimeError(f"Ray Train ran {len(ray_s)} epochs, expected {ns.epochs}")
            t_ray = _median_after_first(ray_s)
            sps_reported = _median_after_first([float(h["samples_per_second"]) for h in history])
            print(f"  Ray Train 1 worker epochs [s]:   {_fmt(ray_s)}")
            print(
                f"  Ray Train fit() wall {wall:.1f} s (worker start, tracing, validation, "
                f"checkpoints); final loss {history[-1]['loss']:.4f}, "
                f"val_loss {history[-1]['val_loss']:.4f}"
            )

            fit_sps = n / t_fit
            ray_sps = n / t_ray
            ratio = t_ray / t_fit
            verdict = "meets" if ratio <= TARGET else "MISSES"
            print(f"  plain fit:      {t_fit:7.3f} s/epoch  {fit_sps:10,.0f} samples/s")
            print(
                f"  Ray Train (1):  {t_ray:7.3f} s/epoch  {ray_sps:10,.0f} samples/s "
                f"(loop's own samples_per_second median: {sps_reported:,.0f})"
            )
            print(f"  Ray Train / plain fit per epoch: {ratio:.3f} ({verdict} target <= {TARGET})")
            print(
                f"  (noise check: fastest epochs give {min(ray_s[1:]) / min(fit_s[1:]):.3f}; "
                f"1-min load average {load_before:.2f} -> {os.getloadavg()[0]:.2f}, this "
                f"benchmark included, on {os.cpu_count()} CPUs)"
            )
            finals.append(
                f"train_overhead preset={preset} ray_over_fit={ratio:.3f} "
                f"fit_samples_per_s={fit_sps:.0f} ray_samples_per_s={ray_sps:.0f}"
            )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print()
    for line in finals:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
