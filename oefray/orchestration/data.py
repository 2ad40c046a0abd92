"""Training data on Ray Data: scans → windows → hash split → streamed scalers → datasets.

Nothing of the cohort passes through the driver. The datasets start from the scan keys (one row
per scan); each Ray Data task reads one scan (:func:`oefray.io.features.read_features`, checksums
verified) and cuts its windows (:mod:`oefray.ml.windows`: never across scans), and the 8:2
training/validation split is the hash of ``(scan, centre idx, seed)`` (:class:`oefray.ml.split.
Split`): the same on any cluster, with no global permutation.

:func:`prepare_data` makes three passes over the training scans, all as Ray Data tasks:

1. **statistics** — per scan, the window counts of each part and the exact moments of the
   training windows' features and targets (:class:`oefray.ml.scaling.Moments`); the driver
   merges one small row per scan into the scalers (the training part only, each sample once)
   and the counts;
2. **training** and 3. **validation** datasets — per scan, the part's windows, standardised,
   with lesion samples repeated ``oversample`` times in training, and an ``order`` key that
   gives a worker's cached shard one order whatever order its blocks arrive in.

The datasets stay lazy (the training workers stream them) when the cluster has CPUs beyond the
training workers for Ray Data's tasks; otherwise (a laptop whose CPUs the workers all hold) they
are materialised first, into Ray's object store (spread over the nodes and spilled to disk
beyond its size), never on the driver.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oefray.errors import FeaturesError, OefrayError
from oefray.io.manifest import FeaturesManifest

#: Windows per block a scan task yields (bounds a task's output blocks to a few MB).
BLOCK_ROWS: int = 1 << 16


@dataclass
class PreparedData:
    """The training and validation datasets, the scalers, and bookkeeping.

    Attributes
    ----------
    train, val : ray.data.Dataset
        Columns ``x`` (n, L, F) and ``y`` (n, P), standardised float32, and ``order`` (uint64).
    materialized : bool
        Whether the datasets were materialised in the object store (no CPUs to stream them).
    row_bytes : int
        Bytes of one row (for a worker's cache decision).
    """

    train: Any
    val: Any
    x_scaler: Any
    y_scaler: Any
    window: Any
    split: Any
    manifest: FeaturesManifest
    features: Path
    train_subjects: list[str]
    test_subjects: list[str]
    counts: dict[str, int]
    materialized: bool
    row_bytes: int


def load_training_manifest(features: Path) -> FeaturesManifest:
    """The manifest of a features folder that can be trained on (it carries ground truth)."""
    manifest = FeaturesManifest.load(features)
    if not manifest.has_truth:
        raise FeaturesError(
            features, "features carry no ground truth (Y, v, R2, S0, chi_nb): nothing to train on"
        )
    return manifest


def abnormal_codes(manifest: FeaturesManifest) -> list[int]:
    """Segmentation codes named as abnormal (:data:`oefray.ml.regions.ABNORMAL_CLASSES`) in any
    scan of the manifest."""
    from oefray.ml.regions import ABNORMAL_CLASSES

    return sorted(
        {
            int(c)
            for r in manifest.subjects.values()
            for c, name in r.label_names.items()
            if name in ABNORMAL_CLASSES
        }
    )


def in_lesion(windows, codes: list[int]) -> np.ndarray:
    """Which samples' targets lie in a lesion: the lesion mask, or a segmentation class among
    ``codes`` (:func:`abnormal_codes`)."""
    hit = np.zeros(len(windows), dtype=bool)
    if "lesion" in windows.labels:
        hit |= np.asarray(windows.labels["lesion"]) > 0
    if "tissue" in windows.labels:
        hit |= np.isin(np.asarray(windows.labels["tissue"]), codes)
    return hit


# --------------------------------------------------------------------------------------------
# Per-scan batch functions (run in Ray Data tasks; plain data in and out)
# --------------------------------------------------------------------------------------------


def scan_windows(root: str, key: str, window, *, with_targets: bool = True) -> Any:
    """One scan's windows (:func:`oefray.ml.windows.make_windows_table`), read with its
    checksums verified: the unit of work of training, evaluation and prediction."""
    from oefray.io import features as fio
    from oefray.ml.windows import make_windows_table

    table = fio.read_features(root, [key])
    return make_windows_table(table, window, [key], with_targets=with_targets)


def scan_stats(
    batch: dict[str, np.ndarray], *, root: str, window, split, codes: list[int]
) -> dict[str, list]:
    """Counts and training moments of each scan of ``batch`` (column ``scan``, ``role``).

    A scan that cannot be read (a file that fails its checksum, a writer holding the folder)
    gives its one-line :class:`~oefray.errors.OefrayError` in the ``error`` column, for the
    driver to raise as it is.
    """
    from oefray.errors import OefrayError
    from oefray.ml.scaling import Moments
    from oefray.ml.split import TRAIN, VAL
    from oefray.ml.windows import FEATURES, TARGETS

    names = ("scan", "role", "windows", "excluded", "train", "val", "train_lesion")
    out: dict[str, list] = {k: [] for k in (*names, "x_moments", "y_moments", "error")}
    for key, role in zip(batch["scan"], batch["role"], strict=True):
        key, train_part = str(key), str(role) == "train"
        xm, ym = Moments.empty(len(FEATURES)), Moments.empty(len(TARGETS))
        counts = dict.fromkeys(names[2:], 0)
        error = ""
        try:
            w = scan_windows(root, key, window)
        except OefrayError as exc:
            error = str(exc)
        else:
            part = split.assign(key, w.idx)
            tr = part == TRAIN
            counts.update(windows=len(w), excluded=w.n_excluded)
            if train_part:
                counts.update(
                    train=int(tr.sum()),
                    val=int((part == VAL).sum()),
                    train_lesion=int((tr & in_lesion(w, codes)).sum()),
                )
                xm, ym = Moments.of(w.x[tr]), Moments.of(w.y[tr])
        out["scan"].append(key)
        out["role"].append(str(role))
        for k, v in counts.items():
            out[k].append(v)
        out["x_moments"].append(json.dumps(xm.to_dict()))
        out["y_moments"].append(json.dumps(ym.to_dict()))
        out["error"].append(error)
    return out


def scan_rows(
    batch: dict[str, np.ndarray],
    *,
    root: str,
    window,
    split,
    part: int,
    scalers: dict[str, Any],
    oversample: int,
    codes: list[int],
):
    """The standardised windows of one part of each scan of ``batch``, in blocks of at most
    :data:`BLOCK_ROWS` rows (columns ``x``, ``y``, ``order``)."""
    from oefray.ml.scaling import Standardizer
    from oefray.ml.split import TRAIN

    x_scaler = Standardizer.from_dict(scalers["x"])
    y_scaler = Standardizer.from_dict(scalers["y"])
    for key in batch["scan"]:
        w = scan_windows(root, str(key), window)
        sel = split.assign(str(key), w.idx) == part
        x, y, idx = w.x[sel], w.y[sel], w.idx[sel]
        if part == TRAIN and oversample > 1:
            repeats = np.where(in_lesion(w, codes)[sel], oversample, 1)
            x, y, idx = (np.repeat(a, repeats, axis=0) for a in (x, y, idx))
        order = split.order(str(key), idx)
        for start in range(0, len(x), BLOCK_ROWS):
            stop = start + BLOCK_ROWS
            yield {
                "x": x_scaler.transform(x[start:stop]),
                "y": y_scaler.transform(y[start:stop]),
                "order": order[start:stop],
            }


# --------------------------------------------------------------------------------------------
# The driver side: plan, statistics, datasets
# --------------------------------------------------------------------------------------------


def scan_keys_dataset(items: list[dict[str, str]]):
    """One Ray Data row (and block) per scan."""
    import ray.data

    return ray.data.from_items(items, override_num_blocks=max(1, len(items)))


def _statistics(items, root: str, window, split, codes) -> list[dict[str, Any]]:
    """Pass 1: one row of counts and moments per scan (a distributed aggregate)."""
    ds = scan_keys_dataset(items).map_batches(
        scan_stats,
        batch_size=1,
        fn_kwargs={"root": root, "window": window, "split": split, "codes": codes},
    )
    rows = ds.take_all()
    for row in rows:
        if row["error"]:
            raise OefrayError(None, row["error"])
    return rows


def _reduce(rows: list[dict[str, Any]], n_x: int, n_y: int):
    """Scalers and counts from the per-scan rows."""
    from oefray.ml.scaling import Moments

    train = [r for r in rows if r["role"] == "train"]
    test = [r for r in rows if r["role"] == "test"]
    xm = Moments.combine([Moments.from_dict(json.loads(r["x_moments"])) for r in train], n_x)
    ym = Moments.combine([Moments.from_dict(json.loads(r["y_moments"])) for r in train], n_y)
    counts = {
        "train_windows": sum(int(r["train"]) for r in train),
        "val_windows": sum(int(r["val"]) for r in train),
        "test_windows": sum(int(r["windows"]) for r in test),
        "excluded_train_voxels": sum(int(r["excluded"]) for r in train),
        "excluded_test_voxels": sum(int(r["excluded"]) for r in test),
        "train_lesion_samples": sum(int(r["train_lesion"]) for r in train),
    }
    return xm, ym, counts


def _subsampled(split, counts: dict[str, int], max_train_windows: int | None):
    """The split keeping about ``max_train_windows`` training and a quarter as many validation
    windows (hash subsampling), or ``split`` itself when no cap applies."""
    import dataclasses

    if max_train_windows is None or counts["train_windows"] <= max_train_windows:
        return split
    n_val = max(1, max_train_windows // 4)
    return dataclasses.replace(
        split,
        train_keep=max_train_windows / counts["train_windows"],
        val_keep=min(1.0, n_val / max(1, counts["val_windows"])),
    )


def _row_bytes(window) -> int:
    from oefray.ml.windows import FEATURES, TARGETS

    return 4 * window.length * len(FEATURES) + 4 * len(TARGETS) + 8


def prepare_data(
    features: str | Path, config, *, reserved_cpus: float | None = None, stream: bool = True
):
    """Plan and scale the training data of a features folder on the running Ray cluster.

    Parameters
    ----------
    features : path
        A features folder with ground truth.
    config : TrainConfig
        Window, split fraction, seed, subsampling, oversampling and subject overrides.
    reserved_cpus : float, optional
        CPUs the training workers will hold (default ``config.workers``): the datasets stay lazy
        only when the cluster has at least one CPU beyond them.
    stream : bool
        Allow lazy datasets at all. A Tune trial passes False: trials share the cluster, and
        trials whose workers held every CPU would each wait on data tasks none can run.

    Returns
    -------
    PreparedData

    Raises
    ------
    FeaturesError
        Features without ground truth, unknown subjects, or too few windows in a part.
    """
    from oefray.ml.scaling import Standardizer
    from oefray.ml.split import TRAIN, VAL, Split
    from oefray.ml.windows import FEATURES, TARGETS
    from oefray.orchestration.runtime import spare_cpus

    features = Path(features).resolve()
    manifest = load_training_manifest(features)
    train_subjects, test_subjects = manifest.split_subjects(
        features, config.train_subjects, config.test_subjects
    )
    window = config.window_config()
    codes = abnormal_codes(manifest)
    root = str(features)
    split = Split(seed=config.seed, val_fraction=config.val_fraction)
    items = [{"scan": k, "role": "train"} for k in train_subjects]
    items += [{"scan": k, "role": "test"} for k in test_subjects]
    rows = _statistics(items, root, window, split, codes)
    xm, ym, counts = _reduce(rows, len(FEATURES), len(TARGETS))
    capped = _subsampled(split, counts, config.max_train_windows)
    if capped is not split:  # the scalers see the subsample, as the training does
        split = capped
        rows = _statistics(items[: len(train_subjects)], root, window, split, codes)
        xm, ym, sub = _reduce(rows, len(FEATURES), len(TARGETS))
        counts.update({k: sub[k] for k in ("train_windows", "val_windows", "train_lesion_samples")})
    counts["train_windows"] += (config.oversample - 1) * counts["train_lesion_samples"]
    counts["train_lesion_samples"] *= config.oversample  # as the training sees them
    if config.oversample > 1 and counts["train_lesion_samples"] == 0:
        raise FeaturesError(
            features,
            "--oversample needs lesions among the training samples (a lesion mask or a "
            "segmentation with lesion classes); none were found",
        )
    if min(counts["train_windows"], counts["val_windows"], counts["test_windows"]) == 0:
        raise FeaturesError(
            features,
            f"too few windows (train {counts['train_windows']}, validation "
            f"{counts['val_windows']}, test {counts['test_windows']})",
        )
    x_scaler, y_scaler = Standardizer.from_moments(xm), Standardizer.from_moments(ym)
    scalers = {"x": x_scaler.to_dict(), "y": y_scaler.to_dict()}
    train_scans = scan_keys_dataset(items[: len(train_subjects)])
    common = {"root": root, "window": window, "split": split, "scalers": scalers, "codes": codes}
    datasets = [
        train_scans.map_batches(
            scan_rows, batch_size=1, fn_kwargs={**common, "part": part, "oversample": factor}
        )
        for part, factor in ((TRAIN, config.oversample), (VAL, 1))
    ]
    reserved = float(config.workers if reserved_cpus is None else reserved_cpus)
    materialize = not stream or spare_cpus(reserved) < 1.0
    if materialize:
        why = (
            "trials share the cluster"
            if not stream
            else (f"the training workers hold all {reserved:g} CPUs, none is left to stream them")
        )
        print(
            f"oefray: materialising {counts['train_windows']:,} training and "
            f"{counts['val_windows']:,} validation windows in Ray's object store ({why})",
            file=sys.stderr,
            flush=True,
        )
        datasets = [ds.materialize() for ds in datasets]
    return PreparedData(
        train=datasets[0],
        val=datasets[1],
        x_scaler=x_scaler,
        y_scaler=y_scaler,
        window=window,
        split=split,
        manifest=manifest,
        features=features,
        train_subjects=train_subjects,
        test_subjects=test_subjects,
        counts=counts,
        materialized=materialize,
        row_bytes=_row_bytes(window),
    )
