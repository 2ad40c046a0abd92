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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from oefray.errors import FeaturesError


def run_ccm(
    features: str | Path,
    *,
    clusters: int = 256,
    neighbours: int = 4,
    library_size: int | None = 200_000,
    seed: int = 0,
    experiment: str = "oefray",
    tracking_uri: str | None = None,
    train_subjects: Sequence[str] | None = None,
    test_subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build the CCM library, predict the test subjects, log an MLflow run; return its summary."""
    from oefray.io import features as fio
    from oefray.ml.ccm import CCMConfig, build_library, estimate_snr, predict
    from oefray.orchestration.train import log_evaluation
    from oefray.physics.constants import PARAMETERS
    from oefray.tracking import Tracker

    t0 = time.perf_counter()
    root = Path(features).resolve()
    manifest = fio.read_manifest(root)
    if manifest is None:
        raise FeaturesError(root, "no manifest.json: not a features folder (run oefray preprocess)")
    if not manifest.get("has_truth"):
        raise FeaturesError(root, "features carry no ground truth: the CCM library needs it")
    if manifest.get("options", {}).get("normalize", "none") != "none":
        raise FeaturesError(
            root, "CCM simulates un-normalised signals; preprocess without --normalize"
        )
    split = {s: e.get("split", "") for s, e in manifest["subjects"].items()}
    train = list(train_subjects or [s for s, v in split.items() if v == "train"])
    test = list(test_subjects or [s for s, v in split.items() if v == "test"])
    if not train or not test:
        raise FeaturesError(root / fio.MANIFEST, "need training and test subjects")
    train_table = fio.read_features(root, train)
    ok = pc.equal(train_table["status"], 0)
    params = np.column_stack([train_table[p].filter(ok).to_numpy() for p in PARAMETERS])
    # The library must carry the data's noise: the echo-1 SNR of the training features.
    te = np.asarray(manifest["subjects"][train[0]]["echo_times_s"])
    a, b, e = (train_table[c].filter(ok).to_numpy() for c in ("A", "B", "E"))
    snr = estimate_snr(a, b, e, te)
    config = CCMConfig(
        clusters=clusters, neighbours=neighbours, library_size=library_size, seed=seed, snr=snr
    )
    test_table = fio.read_features(root, test)
    test_table = test_table.filter(pc.equal(test_table["status"], 0))
    x = np.column_stack([test_table[c].to_numpy() for c in ("A", "B", "E", "S")])
    true = np.column_stack([test_table[p].to_numpy() for p in PARAMETERS]).astype(np.float32)
    subject = test_table["subject"].to_numpy(zero_copy_only=False).astype(str)
    idx = test_table["idx"].to_numpy()
    # one library per echo scheme among the test subjects (re-simulation is what makes CCM
    # TE-robust); the usual case is a single scheme
    pred = np.full(true.shape, np.nan, np.float32)
    schemes: dict[tuple[float, ...], list[str]] = {}
    for label in test:
        schemes.setdefault(tuple(manifest["subjects"][label]["echo_times_s"]), []).append(label)
    libraries = {}
    for scheme, labels in schemes.items():
        library = build_library(params, np.asarray(scheme), config)
        libraries[",".join(f"{t:g}" for t in scheme)] = library.to_dict()
        sel = np.isin(subject, labels)
        pred[sel] = predict(library, x[sel])

    tracker = Tracker.from_uri(tracking_uri)
    with (
        tracker.tracked_run(
            experiment,
            run_name=f"ccm-K{clusters}-k{neighbours}",
            params={
                "method": "ccm",
                "ccm": asdict(config),
                "features": str(root),
                "features_checksums": {s: e["checksum"] for s, e in manifest["subjects"].items()},
                "echo_times_s": manifest.get("echo_times_s"),
                "train_subjects": ",".join(train),
                "test_subjects": ",".join(test),
                "n_library_voxels": len(params),
                "estimated_snr": snr,
                "n_test_voxels": len(true),
            },
            tags={"oefray.command": "baseline ccm"},
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        tmp_path = Path(tmp)
        table, logged = log_evaluation(
            run, pred, true, subject, idx, test, manifest, params.mean(axis=0), tmp_path
        )
        (tmp_path / "ccm_library.json").write_text(json.dumps(libraries))
        run.log_artifact_file(tmp_path / "ccm_library.json")
    return {
        "command": "baseline ccm",
        "run_id": run.run_id,
        "table": table,
        "test_metrics": logged,
        "seconds": round(time.perf_counter() - t0, 2),
        "ui_command": tracker.ui_command(),
    }
