"""``oefray baseline ccm``: the clustering (CCM) baseline of Lee 2022, tracked like an LSTM run.

The cluster library is built from the training subjects' ground-truth parameters, re-simulated at
the echo scheme of the data being evaluated (:mod:`oefray.ml.ccm`); every test voxel with a good
fit is matched in standardised ``(A, B, E, chi)`` space. Metrics, Table 1, maps and Fig. 4 are
logged with the same names as an LSTM run, so the two sit side by side in MLflow and in
``oefray compare``. CCM predicts every test voxel with a good fit; the LSTM every such voxel
with a full window (all but a few at each subject's sequence ends).

Everything runs on Ray, scan by scan; the driver holds the library's reference sample (about
``library_size`` voxels at most, whatever the cohort) and a few numbers per scan:

1. **reference** — the training scans' good voxels (:func:`features_reference`): their exact
   mean (the floor) and a hash sample of expected size ``library_size``
   (:func:`oefray.orchestration.reference.reference_sample`), on which the data's SNR is
   estimated (:func:`oefray.ml.ccm.estimate_snr`);
2. **library** — one Ray task per echo scheme among the test scans (:func:`build_libraries`;
   :func:`oefray.ml.ccm.build_library` subsamples to exactly ``library_size``);
3. **queries** — batch inference (:func:`oefray.orchestration.inference.run_inference`) with
   :class:`CCMPayload`: each actor predicts one test scan at a time, writes its maps into the
   run and returns its sums, reduced by :func:`oefray.orchestration.evaluate.log_outputs`.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from oefray.config import CCMRunConfig
from oefray.errors import FeaturesError, OefrayError
from oefray.io.manifest import FeaturesManifest
from oefray.physics.constants import PARAMETERS
from oefray.tracking.names import COMMAND_TAG

#: The library's reference columns: the parameters, then the decay fit.
REFERENCE_COLUMNS: tuple[str, ...] = (*PARAMETERS, "A", "B", "E")


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


def _good_voxels(root: str, key: str):
    """One scan's features (checksums verified), and the voxels with a good fit only."""
    import pyarrow.compute as pc

    from oefray.io import features as fio

    table = fio.read_features(root, [key])
    return table, table.filter(pc.equal(table["status"], 0))


def features_reference(key: str, *, root: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One training scan's reference voxels for the library: its good voxels' ``idx`` and
    :data:`REFERENCE_COLUMNS` (a :data:`oefray.orchestration.reference.ReadFn`)."""
    _, good = _good_voxels(root, key)
    return good["idx"].to_numpy(), {c: good[c].to_numpy() for c in REFERENCE_COLUMNS}


def _build(reference: np.ndarray, te: tuple[float, ...], config) -> dict[str, Any]:
    """A library built in a Ray task (:func:`oefray.ml.ccm.build_library`), as its dict; or
    ``{"error": <why>}`` when the reference cannot make one (fewer voxels than clusters)."""
    from oefray.ml.ccm import build_library

    try:
        return build_library(reference, np.asarray(te), config).to_dict()
    except ValueError as exc:
        return {"error": str(exc)}


def build_libraries(params: np.ndarray, schemes, config, where: Any = None) -> CCMPayload:
    """One library per echo scheme of ``schemes``, each built in a Ray task from the reference
    parameters ``params`` (n, 5); ``where`` names the data in an error."""
    import ray

    ref = ray.put(np.ascontiguousarray(params))
    build = ray.remote(num_cpus=1)(_build)
    built = ray.get([build.remote(ref, tuple(te), config) for te in schemes])
    for library in built:
        if "error" in library:
            raise OefrayError(where, f"cannot build the CCM library: {library['error']}")
    return CCMPayload(tuple((tuple(te), lib) for te, lib in zip(schemes, built, strict=True)))


# --------------------------------------------------------------------------------------------
# The method in the workers
# --------------------------------------------------------------------------------------------


class CCMScanModel:
    """CCM as a :class:`oefray.orchestration.inference.ScanModel`: each scan's good voxels
    matched in the library of its echo scheme."""

    def __init__(self, libraries: dict[tuple[float, ...], Any]) -> None:
        self.libraries = libraries

    def predict_scan(self, features: str, key: str, record, with_targets: bool):
        from oefray.io import features as fio
        from oefray.ml.ccm import predict
        from oefray.orchestration.inference import ScanArrays

        scheme = tuple(record.echo_times_s)
        if scheme not in self.libraries:
            raise OefrayError(features, f"no CCM library for the echo times {scheme} of {key}")
        table, good = _good_voxels(features, key)
        x = np.column_stack([good[c].to_numpy() for c in ("A", "B", "E", "S")])
        true = None
        if with_targets:
            true = np.column_stack([good[p].to_numpy() for p in PARAMETERS]).astype(np.float32)
        labels = {c: good[c].to_numpy() for c in fio.LABEL_COLUMNS if c in good.column_names}
        return ScanArrays(
            pred=predict(self.libraries[scheme], x).astype(np.float32),
            true=true,
            idx=good["idx"].to_numpy(),
            labels=labels,
            excluded=table.num_rows - good.num_rows,
        )


@dataclass(frozen=True)
class CCMPayload:
    """The libraries as plain data (:meth:`oefray.ml.ccm.CCMLibrary.to_dict`, by echo scheme),
    for the object store: a :class:`oefray.orchestration.inference.ModelPayload`."""

    libraries: tuple[tuple[tuple[float, ...], dict[str, Any]], ...]

    def load(self) -> CCMScanModel:
        from oefray.ml.ccm import CCMLibrary

        return CCMScanModel({te: CCMLibrary.from_dict(d) for te, d in self.libraries})


# --------------------------------------------------------------------------------------------
# The driver side
# --------------------------------------------------------------------------------------------


def run_ccm(features: str | Path, config: CCMRunConfig | None = None) -> dict[str, Any]:
    """Build the CCM library, predict the test subjects, log an MLflow run; return its summary
    (the module's docstring: on the Ray cluster at ``config.address``, else on a local runtime
    of ``config.workers`` CPUs)."""
    from functools import partial

    from oefray.ml.ccm import CCMConfig, estimate_snr
    from oefray.orchestration.evaluate import FIGURE_SCANS, log_features_inputs, log_outputs
    from oefray.orchestration.inference import MapsTarget, run_inference
    from oefray.orchestration.reference import reference_sample
    from oefray.orchestration.runtime import ray_runtime
    from oefray.tracking import Tracker, writable_tracking_uri

    t0 = time.perf_counter()
    config = config or CCMRunConfig()
    writable_tracking_uri(config.tracking_uri, create=False)  # before the features are read
    root = Path(features).resolve()
    manifest = _check_features(root)
    train, test = manifest.split_subjects(root, config.train_subjects, config.test_subjects)
    defaults = CCMConfig(**config.ccm_overrides())
    with ray_runtime(config.address, config.workers or os.cpu_count() or 1):
        reference = reference_sample(
            train,
            partial(features_reference, root=str(root)),
            REFERENCE_COLUMNS,
            defaults.library_size,
            defaults.seed,
        )
        # the library carries the data's noise (its E is mostly noise at SNR ~100)
        te = np.asarray(manifest.subjects[train[0]].echo_times_s)
        a, b, e = (reference.column(c) for c in ("A", "B", "E"))
        snr = estimate_snr(a, b, e, te)
        ccm_config = replace(defaults, snr=snr)
        schemes = list(dict.fromkeys(tuple(manifest.subjects[k].echo_times_s) for k in test))
        payload = build_libraries(reference.sample[:, : len(PARAMETERS)], schemes, ccm_config, root)
        n_library = min(len(reference.sample), ccm_config.library_size or len(reference.sample))
        train_mean, n_training = reference.mean[: len(PARAMETERS)], reference.count
        del reference
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
                    "n_training_voxels": n_training,
                    "n_library_voxels": n_library,
                    "estimated_snr": snr,
                },
                tags={COMMAND_TAG: "baseline ccm"},
            ) as run,
            tempfile.TemporaryDirectory() as tmp,
        ):
            log_features_inputs(run, root, manifest, train, test)
            result = run_inference(
                payload,
                root,
                test,
                MapsTarget.mlflow_run(tracker.tracking_uri, run.run_id),
                with_targets=True,
                slices_for=set(test[:FIGURE_SCANS]),
            )
            run.log_params({"n_test_voxels": result.windows})
            table, logged = log_outputs(run, result.scans, train_mean, Path(tmp))
            keys = {",".join(f"{t:g}" for t in te_): lib for te_, lib in payload.libraries}
            (Path(tmp) / "ccm_library.json").write_text(json.dumps(keys))
            run.log_artifact_file(Path(tmp) / "ccm_library.json")
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
