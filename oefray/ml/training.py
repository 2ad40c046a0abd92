"""Distributed training and validation steps for a Keras 3 model under a ``tf.distribute``
strategy (the step math of the trainer; no Ray, no MLflow here).

Why a custom step and not ``model.fit``: with Keras 3, ``model.fit`` under
``MultiWorkerMirroredStrategy`` with more than one worker fails (keras-team/keras#20585,
``PerReplica`` conversion error). A ``strategy.run`` step over a Keras 3 model uses public APIs
only, trains with any number of workers (CPU or GPU, same code), and keeps the model a Keras 3
model that MLflow's Keras flavour logs and loads.

Every worker feeds its own shard with the same number of equally sized local batches (the
shards are split equally and the last partial batch is dropped), so the collectives line up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from oefray.physics.constants import YA


@dataclass
class Steps:
    """The compiled per-batch functions of one training run."""

    train: Callable[[np.ndarray, np.ndarray], float]
    validate: Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray, float, float]]
    replica_spread: Callable[[], float]


def make_steps(
    model,
    optimizer,
    loss_fn,
    strategy: tf.distribute.Strategy,
    global_batch_size: int,
    y_std: np.ndarray,
    y_index: int,
) -> Steps:
    """Build the distributed train and validation steps.

    Parameters
    ----------
    model, optimizer, loss_fn
        Keras 3 model, optimizer and a per-sample loss (``reduction=None``), created in
        ``strategy.scope()``.
    strategy : tf.distribute.Strategy
    global_batch_size : int
        Samples per step over all replicas (the loss is averaged over it).
    y_std : (P,) array
        Standard deviation of the target standardisation, to report validation errors in
        physical units (its mean cancels in errors).
    y_index : int
        Column of ``Y`` among the targets (for the OEF error).

    Returns
    -------
    Steps
        ``train(x, y) -> mean loss`` over all replicas; ``validate(x, y) -> (loss sum,
        squared-error sums per target in physical units (P,), squared OEF-error sum in %²,
        sample count)``, each summed over all replicas.
    """
    std = tf.constant(np.asarray(y_std, np.float32))

    def train_replica(x, y):
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(y, pred), global_batch_size=global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    def validate_replica(x, y):
        pred = model(x, training=False)
        loss_sum = tf.reduce_sum(loss_fn(y, pred))
        err = (pred - y) * std  # standardised -> physical units (the mean cancels)
        sq = tf.reduce_sum(tf.square(err), axis=0)
        oef_err = 100.0 * err[:, y_index] / YA  # OEF = 1 - Y/Ya, in percent
        count = tf.cast(tf.shape(x)[0], tf.float32)
        return loss_sum, sq, tf.reduce_sum(tf.square(oef_err)), count

    @tf.function
    def train(x, y):
        per_replica = strategy.run(train_replica, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def validate(x, y):
        per_replica = strategy.run(validate_replica, args=(x, y))
        return tuple(strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in per_replica)

    def weight_sum():
        return tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in model.trainable_variables])

    @tf.function
    def replica_spread():
        # each replica sums its own copy of the weights; the spread of those sums over replicas
        # (their standard deviation, exactly 0 in float64 when all copies are equal) shows sync
        sums = strategy.run(weight_sum)
        n = tf.cast(strategy.num_replicas_in_sync, tf.float64)
        mean = strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None) / n
        sq = strategy.run(lambda s: tf.square(s), args=(sums,))
        mean_sq = strategy.reduce(tf.distribute.ReduceOp.SUM, sq, axis=None) / n
        return tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 0.0))

    return Steps(
        replica_spread=lambda: float(replica_spread()),
        train=lambda x, y: float(train(tf.constant(x), tf.constant(y))),
        validate=lambda x, y: tuple(v.numpy() for v in validate(tf.constant(x), tf.constant(y))),  # type: ignore[return-value]
    )
