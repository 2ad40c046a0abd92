"""Training data: features → windows → 8:2 split → scalers → Ray datasets (driver side).

:func:`prepare_data` reads the training and test subjects of a features folder, cuts the
paper's voxel windows (:mod:`oefray.ml.windows`), splits the training subjects' windows 8:2 into
training and validation (seeded), and fits the scalers on the training part only;
:func:`to_ray_dataset` hands arrays to Ray Train.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oefray.errors import FeaturesError
from oefray.io.manifest import FeaturesManifest


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
    manifest: FeaturesManifest
    features: Path
    train_subjects: list[str]
    test_subjects: list[str]
    counts: dict[str, int]


def load_training_manifest(features: Path) -> FeaturesManifest:
    """The manifest of a features folder that can be trained on (it carries ground truth)."""
    manifest = FeaturesManifest.load(features)
    if not manifest.has_truth:
        raise FeaturesError(
            features, "features carry no ground truth (Y, v, R2, S0, chi_nb): nothing to train on"
        )
    return manifest


def _split_windows(n: int, config) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of ``n`` training windows: the seeded 8:2 split, training
    rows shuffled (no spatial order within batches), optionally subsampled."""
    from oefray.ml.windows import train_val_split

    tr, va = train_val_split(n, config.val_fraction, seed=config.seed)
    tr = np.random.default_rng(config.seed).permutation(tr)
    if config.max_train_windows is not None and len(tr) > config.max_train_windows:
        rng = np.random.default_rng(config.seed)
        tr = rng.choice(tr, size=config.max_train_windows, replace=False)
        va = np.sort(
            rng.choice(va, size=min(len(va), max(1, config.max_train_windows // 4)), replace=False)
        )
    return tr, va


def in_lesion(windows, manifest: FeaturesManifest) -> np.ndarray:
    """Which samples' targets lie in a lesion: the lesion mask, or a segmentation class named
    as abnormal (:data:`oefray.ml.regions.ABNORMAL_CLASSES`)."""
    from oefray.ml.regions import ABNORMAL_CLASSES

    hit = np.zeros(len(windows), dtype=bool)
    if "lesion" in windows.labels:
        hit |= np.asarray(windows.labels["lesion"]) > 0
    if "tissue" in windows.labels:
        codes = {
            int(c)
            for r in manifest.subjects.values()
            for c, name in r.label_names.items()
            if name in ABNORMAL_CLASSES
        }
        hit |= np.isin(np.asarray(windows.labels["tissue"]), sorted(codes))
    return hit


def _oversample(
    tr: np.ndarray, windows, manifest, factor: int, seed: int, features: Path
) -> np.ndarray:
    """Training rows with each lesion sample repeated ``factor`` times, reshuffled (seeded)."""
    if factor == 1:
        return tr
    lesion = in_lesion(windows, manifest)[tr]
    if not lesion.any():
        raise FeaturesError(
            Path("."),
            "--oversample needs lesions among the training samples (a lesion mask or a "
            "segmentation with lesion classes); none were found",
        )
    extra = np.repeat(tr[lesion], factor - 1)
    return np.random.default_rng(seed).permutation(np.concatenate([tr, extra]))


def prepare_data(features: str | Path, config) -> PreparedData:
    """Read the features, cut windows, split 8:2, fit the scalers on the training part only.

    Parameters
    ----------
    features : path
        A features folder with ground truth.
    config : TrainConfig
        Window, split, seed, subsampling and subject overrides.
    """
    from oefray.io import features as fio
    from oefray.ml.scaling import Standardizer
    from oefray.ml.windows import make_windows_table

    features = Path(features).resolve()
    manifest = load_training_manifest(features)
    train_subjects, test_subjects = manifest.split_subjects(
        features, config.train_subjects, config.test_subjects
    )
    table = fio.read_features(features, train_subjects + test_subjects)
    window = config.window_config()
    train_w = make_windows_table(table, window, train_subjects)
    test_w = make_windows_table(table, window, test_subjects)
    tr, va = _split_windows(len(train_w), config)
    plain = tr  # the scalers (and so the floor, the training mean) see each sample once
    tr = _oversample(tr, train_w, manifest, config.oversample, config.seed, features)
    if len(tr) == 0 or len(va) == 0 or len(test_w) == 0:
        raise FeaturesError(
            features, f"too few windows (train {len(tr)}, validation {len(va)}, test {len(test_w)})"
        )
    y = train_w.y
    assert y is not None  # made with targets
    x_scaler = Standardizer.fit(train_w.x[plain])
    y_scaler = Standardizer.fit(y[plain])
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
        features=features,
        train_subjects=train_subjects,
        test_subjects=test_subjects,
        counts={
            "train_windows": len(tr),
            "val_windows": len(va),
            "test_windows": len(test_w),
            "excluded_train_voxels": train_w.n_excluded,
            "excluded_test_voxels": test_w.n_excluded,
            "train_lesion_samples": int(in_lesion(train_w, manifest)[tr].sum()),
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
