"""``oefray baseline ccm``: the clustering (CCM) baseline of Lee 2022, tracked like an LSTM run.

The cluster library is built from the training subjects' ground-truth parameters, re-simulated at
the echo scheme of the data being evaluated (:mod:`oefray.ml.ccm`); every test voxel with a good
fit is matched in standardised ``(A, B, E, chi)`` space. Metrics, Table 1, maps and Fig. 4 are
logged with the same names as an LSTM run, so the two sit side by side in MLflow and in
``oefray compare``. CCM predicts every test voxel with a good fit; the LSTM every such voxel
with a full window (all but a few at each subject's sequence ends).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from oefray.config import CCMRunConfig
from oefray.errors import FeaturesError
from oefray.io.manifest import FeaturesManifest
from oefray.tracking.names import COMMAND_TAG


def _check_features(root: Path):
    """The manifest of features CCM can run on: with ground truth, not normalised."""
    manifest = FeaturesManifest.load(root)
    if not manifest.has_truth:
        raise FeaturesError(root, "features carry no ground truth: the CCM library needs it")
    if manifest.normalize != "none":
        raise FeaturesError(
            root, "CCM simulates un-normalised signals; preprocess without --normalize"
        )
    return manifest


def _library_params(train_table) -> tuple[np.ndarray, Any]:
    """Ground-truth parameters (n, 5) of the training voxels with a good fit, and those rows."""
    from oefray.physics.constants import PARAMETERS

    good = train_table.filter(pc.equal(train_table["status"], 0))
    return np.column_stack([good[p].to_numpy() for p in PARAMETERS]), good


def _predict_by_scheme(manifest, test, params, x, subject, ccm_config):
    """CCM predictions of the test voxels: one library per echo scheme among the test subjects
    (re-simulation is what makes CCM TE-robust; the usual case is a single scheme)."""
    from oefray.ml.ccm import build_library, predict

    pred = np.full((len(x), params.shape[1]), np.nan, np.float32)
    schemes: dict[tuple[float, ...], list[str]] = {}
    for label in test:
        schemes.setdefault(manifest.subjects[label].echo_times_s, []).append(label)
    libraries = {}
    for scheme, labels in schemes.items():
        library = build_library(params, np.asarray(scheme), ccm_config)
        libraries[",".join(f"{t:g}" for t in scheme)] = library.to_dict()
        sel = np.isin(subject, labels)
        pred[sel] = predict(library, x[sel])
    return pred, libraries


def run_ccm(features: str | Path, config: CCMRunConfig | None = None) -> dict[str, Any]:
    """Build the CCM library, predict the test subjects, log an MLflow run; return its summary."""
    from oefray.io import features as fio
    from oefray.ml.ccm import CCMConfig, estimate_snr
    from oefray.orchestration.evaluate import log_evaluation, log_features_inputs
    from oefray.physics.constants import PARAMETERS
    from oefray.tracking import Tracker, writable_tracking_uri

    t0 = time.perf_counter()
    config = config or CCMRunConfig()
    writable_tracking_uri(config.tracking_uri, create=False)  # before the features are read
    root = Path(features).resolve()
    manifest = _check_features(root)
    train, test = manifest.split_subjects(root, config.train_subjects, config.test_subjects)
    params, good = _library_params(fio.read_features(root, train))
    # the library carries the data's noise (its E is mostly noise at SNR ~100)
    te = np.asarray(manifest.subjects[train[0]].echo_times_s)
    snr = estimate_snr(good["A"].to_numpy(), good["B"].to_numpy(), good["E"].to_numpy(), te)
    ccm_config = CCMConfig(**config.ccm_overrides(), snr=snr)
    test_table = fio.read_features(root, test)
    test_table = test_table.filter(pc.equal(test_table["status"], 0))
    x = np.column_stack([test_table[c].to_numpy() for c in ("A", "B", "E", "S")])
    true = np.column_stack([test_table[p].to_numpy() for p in PARAMETERS]).astype(np.float32)
    subject = test_table["subject"].to_numpy(zero_copy_only=False).astype(str)
    pred, libraries = _predict_by_scheme(manifest, test, params, x, subject, ccm_config)
    tracker = Tracker.from_uri(config.tracking_uri)
    c = ccm_config
    with (
        tracker.tracked_run(
            config.experiment,
            run_name=f"ccm-K{c.clusters}-k{c.neighbours}",
            params={
                "method": "ccm",
                "ccm": asdict(ccm_config),
                "features": str(root),
                "features_checksums": manifest.checksums,
                "echo_times_s": manifest.echo_times_s,
                "train_subjects": ",".join(train),
                "test_subjects": ",".join(test),
                "n_library_voxels": len(params),
                "estimated_snr": snr,
                "n_test_voxels": len(true),
            },
            tags={COMMAND_TAG: "baseline ccm"},
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        log_features_inputs(run, root, manifest, train, test)
        tmp_path = Path(tmp)
        idx = test_table["idx"].to_numpy()
        labels = {
            c: test_table[c].to_numpy() for c in fio.LABEL_COLUMNS if c in test_table.column_names
        }
        table, logged = log_evaluation(
            run, pred, true, subject, idx, test, manifest, params.mean(axis=0), tmp_path, labels
        )
        (tmp_path / "ccm_library.json").write_text(json.dumps(libraries))
        run.log_artifact_file(tmp_path / "ccm_library.json")
    return {
        "command": "baseline ccm",
        "run_id": run.run_id,
        "clusters": c.clusters,
        "neighbours": c.neighbours,
        "table": table,
        "test_metrics": logged,
        "seconds": round(time.perf_counter() - t0, 2),
        "ui_command": tracker.ui_command(),
    }
