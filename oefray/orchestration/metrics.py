"""Ray application metrics of oefray: the one place their names, kinds and tags are defined.

Recorded with :mod:`ray.util.metrics` where the work happens: the ``preprocess`` slab tasks
(once per slab, never per voxel) and rank 0 of the training loop (once per epoch). Each Ray
node's metrics agent serves them in Prometheus text at
``http://<node>:<metrics_export_port>/metrics``, next to Ray's own metrics.

Exported names (ray 2.60, OpenTelemetry exporter, the default): the agent prefixes every
application metric with ``ray_``; a counter gets the ``_total`` suffix (no gauge twin), a
histogram the three series ``_bucket`` (label ``le``), ``_sum`` and ``_count``, a gauge keeps
its name. :func:`exported_series` gives them; ``dashboards/oefray.json`` queries exactly those.
Every series also carries Ray's labels ``SessionName``, ``NodeAddress``, ``WorkerId``,
``Component`` and ``Version``; sum over ``WorkerId`` in queries (each worker process reports its
own series).

Tags are low-cardinality: ``subject`` for the preprocess metrics (one value per subject of the
dataset), ``experiment`` (the MLflow experiment) and ``run`` (the MLflow run id, one value per
training run) for the training metrics.

Lifetimes: counters and histograms are cumulative and outlive the worker that recorded them (the
agent keeps them for the life of the node); a gauge disappears about two report intervals after
its worker stops refreshing it. Hence the slab tasks (short-lived pooled workers) record only
counters and histograms, and the training gauges show a run while it trains.

Importing this module imports no Ray: the metric objects are made on first use, once per
process. Recording works, and does nothing visible, when Ray is not initialised. The pure layers
(physics, io, ml) never import this module.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec

log = logging.getLogger(__name__)

#: Every oefray metric name starts with this.
PREFIX = "oefray_"
#: What Ray's metrics agent puts before an application metric's name when it exports it.
EXPORT_PREFIX = "ray_"

# Preprocess: recorded by every slab task (tag ``subject``).
VOXELS_FITTED = "oefray_voxels_fitted"
SLABS_DONE = "oefray_slabs_done"
SLABS_FAILED = "oefray_slabs_failed"
SLAB_SECONDS = "oefray_slab_seconds"
FIT_VOXELS_PER_SECOND = "oefray_fit_voxels_per_second"

# Training: recorded by rank 0 after every epoch (tags ``experiment``, ``run``).
EPOCHS_DONE = "oefray_epochs_done"
EPOCH_SECONDS = "oefray_epoch_seconds"
TRAIN_SAMPLES_PER_SECOND = "oefray_train_samples_per_second"
TRAIN_LOSS = "oefray_train_loss"
VAL_LOSS = "oefray_val_loss"
VAL_RMSE_OEF = "oefray_val_rmse_oef_percent"

PREPROCESS_TAGS: tuple[str, ...] = ("subject",)
TRAIN_TAGS: tuple[str, ...] = ("experiment", "run")

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One application metric: name as registered, kind, help text, tag keys, buckets."""

    name: str
    kind: Kind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def exported_name(self) -> str:
        """The metric family name on the export port (``ray_<name>``, counters ``_total``)."""
        base = EXPORT_PREFIX + self.name
        return base + "_total" if self.kind == "counter" else base

    @property
    def exported_series(self) -> tuple[str, ...]:
        """The sample names on the export port (a histogram has three)."""
        if self.kind == "histogram":
            return tuple(f"{self.exported_name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.exported_name,)


#: Seconds of one slab task (read + fit + write), log-spaced from 10 ms to 5 min.
_SECONDS_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
#: Brain voxels per second of one slab task, from 1e3 to 3e7.
_RATE_BUCKETS = (1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 3e7)

#: Every metric oefray exports, in dashboard order.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        VOXELS_FITTED,
        "counter",
        "Brain voxels whose decay was fitted and written (preprocess).",
        PREPROCESS_TAGS,
    ),
    MetricSpec(
        SLABS_DONE, "counter", "Slab tasks fitted and written (preprocess).", PREPROCESS_TAGS
    ),
    MetricSpec(
        SLABS_FAILED,
        "counter",
        "Slab tasks that failed on unreadable input (preprocess).",
        PREPROCESS_TAGS,
    ),
    MetricSpec(
        SLAB_SECONDS,
        "histogram",
        "Wall time of one successful slab task: read, decay fit, Parquet write (s).",
        PREPROCESS_TAGS,
        _SECONDS_BUCKETS,
    ),
    MetricSpec(
        FIT_VOXELS_PER_SECOND,
        "histogram",
        "Throughput of one successful slab task: brain voxels per second of its wall time.",
        PREPROCESS_TAGS,
        _RATE_BUCKETS,
    ),
    MetricSpec(EPOCHS_DONE, "counter", "Training epochs completed (rank 0).", TRAIN_TAGS),
    MetricSpec(
        EPOCH_SECONDS,
        "gauge",
        "Wall time of the training steps of the last epoch (s).",
        TRAIN_TAGS,
    ),
    MetricSpec(
        TRAIN_SAMPLES_PER_SECOND,
        "gauge",
        "Training windows per second over all workers in the last epoch.",
        TRAIN_TAGS,
    ),
    MetricSpec(TRAIN_LOSS, "gauge", "Mean training Huber loss of the last epoch.", TRAIN_TAGS),
    MetricSpec(VAL_LOSS, "gauge", "Validation Huber loss of the last epoch.", TRAIN_TAGS),
    MetricSpec(
        VAL_RMSE_OEF,
        "gauge",
        "Validation OEF RMSE of the last epoch, in percent (OEF = 1 - Y/Ya).",
        TRAIN_TAGS,
    ),
)

#: The specs by registered name.
SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}


def exported_series() -> dict[str, str]:
    """Every Prometheus sample name oefray exports, mapped to its registered metric name."""
    return {series: m.name for m in METRICS for series in m.exported_series}


@functools.cache
def _instruments() -> dict[str, Any]:
    """The ``ray.util.metrics`` objects of this process, made once (cheap; no Ray needed)."""
    from ray.util.metrics import Counter, Gauge, Histogram

    made: dict[str, Any] = {}
    for m in METRICS:
        if m.kind == "counter":
            made[m.name] = Counter(m.name, m.description, m.tag_keys)
        elif m.kind == "gauge":
            made[m.name] = Gauge(m.name, m.description, m.tag_keys)
        else:
            made[m.name] = Histogram(m.name, m.description, list(m.boundaries), m.tag_keys)
    return made


_P = ParamSpec("_P")


def _safely(record: Callable[_P, None]) -> Callable[_P, None]:
    """Metrics are best-effort: a failure to record is logged, never raised into the work."""

    @functools.wraps(record)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception as exc:  # pragma: no cover - depends on Ray internals
            log.warning("could not record oefray metrics (%s: %s)", type(exc).__name__, exc)

    return wrapper


@_safely
def record_slab(subject: str, *, voxels: int, seconds: float, ok: bool = True) -> None:
    """Record one slab task of ``preprocess``.

    Parameters
    ----------
    subject : str
        Subject label (tag ``subject``).
    voxels : int
        Brain voxels fitted and written by the task (0 for a slab without brain).
    seconds : float
        Wall time of the task (read + fit + write), s.
    ok : bool
        False when the task failed: only ``oefray_slabs_failed`` is incremented.
    """
    made, tags = _instruments(), {"subject": str(subject)}
    if not ok:
        made[SLABS_FAILED].inc(1, tags)
        return
    made[SLABS_DONE].inc(1, tags)
    made[SLAB_SECONDS].observe(float(seconds), tags)
    if voxels > 0:  # Counter.inc refuses 0
        made[VOXELS_FITTED].inc(int(voxels), tags)
        if seconds > 0:
            made[FIT_VOXELS_PER_SECOND].observe(voxels / seconds, tags)


@_safely
def record_epoch(tags: Mapping[str, str], epoch_metrics: Mapping[str, Any]) -> None:
    """Record one training epoch (rank 0).

    Parameters
    ----------
    tags : mapping
        ``experiment`` and ``run`` (missing keys are recorded as ``""``).
    epoch_metrics : mapping
        The loop's per-epoch dict: ``epoch_seconds``, ``samples_per_second``, ``loss``,
        ``val_loss``, ``val_rmse_OEF`` (percent).
    """
    made = _instruments()
    tagged = {k: str(tags.get(k, "")) for k in TRAIN_TAGS}
    made[EPOCHS_DONE].inc(1, tagged)
    for name, key in (
        (EPOCH_SECONDS, "epoch_seconds"),
        (TRAIN_SAMPLES_PER_SECOND, "samples_per_second"),
        (TRAIN_LOSS, "loss"),
        (VAL_LOSS, "val_loss"),
        (VAL_RMSE_OEF, "val_rmse_OEF"),
    ):
        value = float(epoch_metrics[key])
        if math.isfinite(value):  # an epoch without steps has loss NaN: leave the gauge
            made[name].set(value, tagged)
