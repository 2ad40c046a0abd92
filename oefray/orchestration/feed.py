"""Feeding a Ray Train worker its shard of windows: cached in memory when it fits, else streamed.

Ray Train hands every worker an equal shard of the training and validation datasets
(``streaming_split``, ``get_dataset_shard``). :func:`open_feed` chooses, from the shard's size
and the worker's memory budget, between

- :class:`CachedFeed` — read the shards once and keep them as arrays, sorted by their ``order``
  key (one order whatever order the blocks arrived in); every epoch draws a seeded permutation.
  On 2 CPUs, ``benchmarks/train_overhead.py --presets small`` measures 1 worker at 1.08x plain
  ``model.fit`` (``--cache-gb 0`` measures the streamed feed);
- :class:`StreamedFeed` — stream the shards from Ray Data every epoch, shuffled through a local
  buffer (seeded per epoch and rank), for shards larger than the budget;

and says which, with the sizes, on stderr (the training's log) and to the caller (rank 0 tags
the MLflow run with it).

Every worker must run the same number of steps (the steps are collective): with equal shards
both feeds give ``rows // local_batch`` training batches per epoch on every worker.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Share of the node's available memory a worker may cache its shard in, by default, divided
#: among the node's workers.
DEFAULT_CACHE_SHARE: float = 0.25

#: Rows of the local shuffle buffer of a streamed shard: at least this many, and 16 batches.
SHUFFLE_ROWS: int = 1 << 16


@dataclass(frozen=True)
class FeedChoice:
    """What :func:`choose_feed` decided, for the log and the MLflow tags."""

    mode: str  # "cache" or "stream"
    shard_bytes: int
    limit_bytes: int

    def describe(self, rank: int, rows: int) -> str:
        verb = "cached in memory" if self.mode == "cache" else "streamed every epoch"
        return (
            f"oefray: worker {rank}: shard of {rows:,} windows ({self.shard_bytes / 1e6:,.1f} MB) "
            f"{verb} (cache limit {self.limit_bytes / 1e6:,.1f} MB)"
        )


def choose_feed(shard_bytes: int, limit_bytes: int) -> FeedChoice:
    """Cache a shard within the limit, stream a larger one."""
    mode = "cache" if shard_bytes <= limit_bytes else "stream"
    return FeedChoice(mode, int(shard_bytes), int(limit_bytes))


def cache_limit_bytes(cache_gb: float | None, workers_on_node: int) -> int:
    """The cache budget of one worker: ``cache_gb``, or :data:`DEFAULT_CACHE_SHARE` of the node's
    available memory shared among its workers."""
    if cache_gb is not None:
        return int(cache_gb * 1e9)
    from oefray.orchestration.runtime import available_memory_bytes

    return int(DEFAULT_CACHE_SHARE * available_memory_bytes() / max(1, workers_on_node))


def _collect(shard) -> dict[str, np.ndarray]:
    """All rows of a Ray Data shard as arrays, sorted by ``order``."""
    parts: dict[str, list[np.ndarray]] = {"x": [], "y": [], "order": []}
    for batch in shard.iter_batches(batch_size=8192, batch_format="numpy"):
        for k in parts:
            parts[k].append(batch[k])
    if not parts["x"]:
        raise RuntimeError("this worker's data shard is empty: fewer windows than workers")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(arrays["order"], kind="stable")
    return {k: v[order] for k, v in arrays.items()}


class CachedFeed:
    """The shards held as arrays; a seeded permutation per epoch."""

    mode = "cache"

    def __init__(self, train_shard, val_shard, local_batch: int, rank: int, seed: int):
        self.train, self.val = _collect(train_shard), _collect(val_shard)
        self.local_batch, self.rank, self.seed = local_batch, rank, seed

    @property
    def train_rows(self) -> int:
        return len(self.train["x"])

    def train_batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = self.local_batch
        n_steps = self.train_rows // b
        order = np.random.default_rng([self.seed, self.rank, epoch]).permutation(self.train_rows)
        x, y = self.train["x"], self.train["y"]
        for k in range(n_steps):
            take = order[k * b : (k + 1) * b]
            yield x[take], y[take]

    def val_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b, x, y = self.local_batch, self.val["x"], self.val["y"]
        for k in range(0, len(x), b):
            yield x[k : k + b], y[k : k + b]


class StreamedFeed:
    """The shards streamed from Ray Data each epoch through a seeded local shuffle buffer."""

    mode = "stream"

    def __init__(self, train_shard, val_shard, local_batch: int, rank: int, seed: int, rows: int):
        self.train_shard, self.val_shard = train_shard, val_shard
        self.local_batch, self.rank, self.seed = local_batch, rank, seed
        self.train_rows = rows

    def train_batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        b = self.local_batch
        expected = self.train_rows // b
        seed = int(np.random.default_rng([self.seed, self.rank, epoch]).integers(2**31))
        n = 0
        for batch in self.train_shard.iter_batches(
            batch_size=b,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(SHUFFLE_ROWS, 16 * b),
            local_shuffle_seed=seed,
        ):
            if n < expected:  # consume the whole epoch: the split's coordinator waits for it
                yield batch["x"], batch["y"]
            n += 1
        if n < expected:
            raise RuntimeError(
                f"worker {self.rank}: its training shard gave {n} batches of {b}, expected "
                f"{expected} (unequal shards; every worker must run the same steps)"
            )

    def val_batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in self.val_shard.iter_batches(batch_size=self.local_batch, batch_format="numpy"):
            yield batch["x"], batch["y"]


def open_feed(config: dict[str, Any], rank: int, world: int, local_batch: int):
    """This worker's feed of the ``train`` and ``val`` shards, and the :class:`FeedChoice`.

    ``config`` keys: ``n_train``, ``n_val`` (rows of the datasets), ``row_bytes``,
    ``cache_gb`` (None: the default budget), ``workers_on_node``, ``seed``.
    """
    import ray.train

    rows = int(config["n_train"]) // world
    shard_bytes = (rows + int(config["n_val"]) // world) * int(config["row_bytes"])
    limit = cache_limit_bytes(config.get("cache_gb"), int(config.get("workers_on_node", world)))
    choice = choose_feed(shard_bytes, limit)
    print(choice.describe(rank, rows), file=sys.stderr, flush=True)
    train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    seed = int(config["seed"])
    if choice.mode == "cache":
        return CachedFeed(train, val, local_batch, rank, seed), choice
    return StreamedFeed(train, val, local_batch, rank, seed, rows), choice
