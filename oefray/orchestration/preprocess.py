"""``oefray preprocess``: BIDS dataset → decay-fit features Parquet, sharded by Ray Data.

Pipeline: one item per slab (a range of z planes of one subject) of a plain ``.nii`` subject, one
item per subject of a gzipped one → ``from_items`` with one block per item → one ``map_batches``
task per item that reads its slabs, fits the decay of every brain voxel
(:func:`oefray.physics.decay.fit_decay`) and writes each slab's Parquet file into a staging
folder → a one-row summary per slab streams back to the driver. A plain slab is read lazily
(``img.dataobj``, random access is free); a gzipped subject's task streams every image once, in
z order, one slab at a time (:func:`oefray.io.slabs.iter_brain_voxels`), since gzip cannot seek
and a lazy read of each slab would inflate the file from its start again.

The driver commits a subject as soon as its last slab is in: it checks the row count against the
mask, checksums the content, and renames the subject's staged folder into place, then rewrites the
manifest. So an interrupted run loses only the subjects in flight, a re-run skips the finished
ones, and no reader ever sees half a subject. Only plain data (dicts of numpy arrays, strings)
crosses Ray boundaries. Each slab task records oefray's Ray metrics (voxels fitted, slabs done or
failed, task time and throughput; :mod:`oefray.orchestration.metrics`) once per slab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray import __version__
from oefray.config import PreprocessConfig
from oefray.errors import DatasetError, FeaturesError, OefrayError
from oefray.io import features as fio
from oefray.io.bids import BrainVoxels, ScanFiles, read_brain_voxels
from oefray.io.integrity import file_record
from oefray.io.keys import parse_key
from oefray.io.locks import reading, writing
from oefray.io.manifest import FORMAT as FEATURES_FORMAT
from oefray.io.manifest import (
    FORMAT_VERSION,
    LEGACY_MANIFEST,
    MANIFEST,
    FeaturesManifest,
    FeaturesVersionError,
    SubjectRecord,
    manifest_path,
)
from oefray.io.scans import DatasetIndex, scan_dataset
from oefray.io.slabs import is_compressed, iter_brain_voxels, slab_bounds
from oefray.orchestration import metrics as ray_metrics
from oefray.orchestration.runtime import ray_runtime
from oefray.physics.decay import FitStatus, fit_decay

log = logging.getLogger(__name__)

#: Called as ``progress(slabs_done, slabs_total, message)``.
ProgressFn = Callable[[int, int, str], None]


# --------------------------------------------------------------------------------------------
# The per-slab work (no Ray here: the same functions run in a worker or in a test)
# --------------------------------------------------------------------------------------------


def slab_features(
    subject: ScanFiles,
    z0: int,
    z1: int,
    *,
    normalize: str = "none",
    with_truth: bool = False,
    labels: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Decay-fit features of the brain voxels in planes ``z0:z1`` of one subject.

    Returns
    -------
    dict of str to (n,) arrays
        Columns ``i, j, k, idx, A, B, E, S, status`` (+ ``Y, v, R2, S0, chi_nb`` when
        ``with_truth``), one row per brain voxel, in increasing ``idx`` (C order).

    Notes
    -----
    ``status`` is the decay fit's :class:`~oefray.physics.decay.FitStatus`, and ``NONFINITE`` for
    a voxel whose QSM value is NaN or inf. With ``normalize="first-echo"`` every echo is divided by echo 1 of the same voxel, and so is
    the ground-truth S0, so S0 stays the amplitude of the normalised signal at TE = 0.
    """
    voxels = read_brain_voxels(subject, z0, z1)
    return voxel_features(
        subject, voxels, normalize=normalize, with_truth=with_truth, labels=labels
    )


def voxel_features(
    subject: ScanFiles,
    voxels: BrainVoxels,
    *,
    normalize: str = "none",
    with_truth: bool = False,
    labels: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """:func:`slab_features` of a slab already read (``voxels``, planes ``voxels.z0:z1``)."""
    z0 = voxels.z0
    xs, ys, zl = np.nonzero(voxels.mask)  # C order within the slab == increasing global idx
    signal = voxels.signal  # (n, n_echoes) float32, same order
    first = None
    if normalize == "first-echo":
        first = signal[:, :1].copy()
        with np.errstate(divide="ignore", invalid="ignore"):
            # a voxel whose echo 1 is 0 becomes NaN/inf and gets a NONFINITE status from the fit
            signal = signal / first
    elif normalize != "none":
        raise ValueError(f"unknown normalisation {normalize!r}")
    fit = fit_decay(signal, np.asarray(subject.te_s))
    a, b, e, status = (np.array(v) for v in (fit.A, fit.B, fit.E, fit.status))
    # a voxel with no finite QSM value has no feature S: NONFINITE (A = B = E = NaN, as for every
    # non-OK code), whatever its decay
    no_chi = ~np.isfinite(voxels.chi) & (status == FitStatus.OK)
    status[no_chi] = FitStatus.NONFINITE
    a[no_chi] = b[no_chi] = e[no_chi] = np.nan
    z = zl + z0
    cols: dict[str, np.ndarray] = {
        "i": xs.astype(np.int32),
        "j": ys.astype(np.int32),
        "k": z.astype(np.int32),
        "idx": np.ravel_multi_index((xs, ys, z), subject.shape).astype(np.int64),
        "A": a,
        "B": b,
        "E": e,
        "S": voxels.chi,
        "status": status,
    }
    if with_truth:
        for name in fio.TRUTH_COLUMNS:
            cols[name] = voxels.truth[name]
        if first is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                cols["S0"] = cols["S0"] / first[:, 0]
    for name in labels:  # a scan without the lesion image: no lesion voxel
        cols[name] = voxels.labels.get(name, np.zeros(len(z), dtype=np.int16))
    return cols


_SUMMARY = ("subject", "z0", "z1", "rows", "checksum", "status", "file", "error")


def _fit_slabs(
    batch: dict[str, np.ndarray],
    *,
    subjects: dict[str, ScanFiles],
    staging: str,
    slab: int,
    normalize: str,
    with_truth: bool,
    read_threads: int = 1,
    labels: tuple[str, ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` body: fit and write each slab of each item of the batch (an item is one
    slab, or a gzipped subject's run of slabs, streamed); yield one summary row per slab, as it
    is done."""
    for key, z0, z1 in zip(batch["subject"], batch["z0"], batch["z1"], strict=True):
        subject = subjects[str(key)]
        bounds = slab_bounds(int(z0), int(z1), slab)
        t0 = time.perf_counter()
        for a, b, voxels in read_slabs(subject, bounds, read_threads):
            row = _fit_slab(subject, a, b, voxels, staging, normalize, with_truth, labels)
            # once per slab, inside the task (oefray/orchestration/metrics.py)
            t1 = time.perf_counter()
            ray_metrics.record_slab(
                subject.key, voxels=row["rows"], seconds=t1 - t0, ok=not row["error"]
            )
            t0 = t1
            yield {
                k: np.asarray([v], dtype=np.uint64 if k == "checksum" else None)
                for k, v in row.items()
            }


def read_slabs(
    subject: ScanFiles, bounds: list[tuple[int, int]], read_threads: int
) -> Iterator[tuple[int, int, BrainVoxels | OefrayError]]:
    """Each slab of ``bounds`` read, or the error that stopped the read (every slab after a
    failed one of a stream gets the same error: the stream cannot go on)."""
    if len(bounds) == 1:  # one slab: read lazily (img.dataobj)
        (a, b) = bounds[0]
        try:
            voxels: BrainVoxels | OefrayError = read_brain_voxels(subject, a, b)
        except OefrayError as exc:
            voxels = exc
        yield a, b, voxels
        return
    done = 0
    try:
        for voxels in iter_brain_voxels(subject, bounds, threads=read_threads):
            yield voxels.z0, voxels.z1, voxels
            done += 1
    except OefrayError as exc:
        for a, b in bounds[done:]:
            yield a, b, exc


def _fit_slab(
    subject: ScanFiles,
    z0: int,
    z1: int,
    voxels: BrainVoxels | OefrayError,
    staging: str,
    normalize: str,
    with_truth: bool,
    labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fit and write one slab; its summary: ``subject, z0, z1``, ``rows``, content
    ``checksum``, ``status`` counts and the written ``file``'s record (JSON), ``error``."""
    rows, xsum, status, file, error = 0, 0, "{}", "{}", ""
    try:
        if isinstance(voxels, OefrayError):
            raise voxels
        cols = voxel_features(
            subject, voxels, normalize=normalize, with_truth=with_truth, labels=labels
        )
        rows = len(cols["idx"])
        if rows:
            table = fio.table_from_columns(cols, with_truth, labels)
            path = fio.write_slab_table(fio.scan_dir(Path(staging), subject.key), table, z0, z1)
            file = json.dumps({path.name: file_record(path)})
            xsum = fio.checksum(table)
            codes, counts = np.unique(cols["status"], return_counts=True)
            status = json.dumps({str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)})
    except OefrayError as exc:
        error = str(exc)
    values = (subject.key, z0, z1, rows, xsum, status, file, error)
    return dict(zip(_SUMMARY, values, strict=True))


def plan_slabs(subjects: Sequence[ScanFiles], slab: int) -> list[dict[str, Any]]:
    """One item per slab: ``{"subject", "z0", "z1"}`` covering every plane of every subject."""
    return [
        {"subject": s.key, "z0": z0, "z1": min(z0 + slab, s.depth)}
        for s in subjects
        for z0 in range(0, s.depth, slab)
    ]


def plan_tasks(subjects: Sequence[ScanFiles], slab: int) -> list[dict[str, Any]]:
    """One item per task: each slab of a plain subject (read lazily, slabs in parallel), the
    whole of a gzipped one (streamed: each image inflated once, slab by slab)."""
    items: list[dict[str, Any]] = []
    for s in subjects:
        if is_compressed(s):
            items.append({"subject": s.key, "z0": 0, "z1": s.depth})
        else:
            items += plan_slabs([s], slab)
    return items


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


_BACKPRESSURE = "backpressure_policies.enabled"
_SUMMARY_BLOCK_BYTES = 256

#: Most background threads that inflate the next slab of a gzipped subject (one image each)
#: while its task fits the current one (:func:`oefray.io.slabs.iter_brain_voxels`).
MAX_READ_THREADS = 4

#: Read-ahead threads of every gzipped subject's task; None: :func:`read_threads` decides.
READ_THREADS: int | None = None


def read_threads(cpus: int, streams: int) -> int:
    """Read-ahead threads of each gzipped subject's task.

    Parameters
    ----------
    cpus : int
        CPUs of the Ray runtime.
    streams : int
        Tasks of the run that stream a gzipped subject.

    Returns
    -------
    int
        One, or, when the run has more CPUs than such tasks, the CPUs they would leave idle,
        shared among them (at most :data:`MAX_READ_THREADS`); :data:`READ_THREADS` if set. A
        subject's images inflate in parallel, so one gzipped subject on two workers uses both
        CPUs, as its slabs would if it were plain.
    """
    if READ_THREADS is not None:
        return READ_THREADS
    return max(1, min(MAX_READ_THREADS, cpus // max(1, streams)))


@contextlib.contextmanager
def data_context(summary_blocks: bool = True) -> Iterator[None]:
    """Ray Data settings for this pipeline (and ``qq``'s, which keeps Ray's block size:
    ``summary_blocks=False``), restored afterwards.

    Measured with ray 2.60 on 2 CPUs: the default backpressure policies (the resource budget with
    per-operator reservations, and the dynamic concurrency cap) let only one fit task run at a
    time, which halves throughput; switching off only the reservation or only the dynamic cap
    did not help. This pipeline's memory is bounded without them: its inputs are slab
    descriptors, its outputs one-row summaries, and each task holds one slab (a gzipped
    subject's task two: the one it fits and the next, read ahead) and one CPU, so Ray's CPU
    accounting caps the slabs in flight at (twice) the CPUs of the runtime. Progress is shown
    by the caller, per slab and subject.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.enable_progress_bars,
        ctx.get_config(_BACKPRESSURE, None),
        ctx.target_max_block_size,
    )
    ctx.enable_progress_bars = False
    ctx.set_config(_BACKPRESSURE, [])
    # (about) every summary row its own block: a task that streams a subject's slabs reports each
    # slab as it is done, not all of them when it ends. A row is ~300 bytes; 1 byte instead cost
    # Ray Data's executor ~20 ms a block (the demo cohort took 2x as long), 256 nothing measurable
    if summary_blocks:
        ctx.target_max_block_size = _SUMMARY_BLOCK_BYTES
    try:
        yield
    finally:
        ctx.enable_progress_bars = saved[0]
        ctx.target_max_block_size = saved[2]
        if saved[1] is None:
            ctx.remove_config(_BACKPRESSURE)
        else:
            ctx.set_config(_BACKPRESSURE, saved[1])


@dataclass
class PreprocessResult:
    """What a preprocess run did (serialised into ``results.json``)."""

    features: str
    dataset: str
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    #: Valid scans left undone because another failed (without ``--keep-going``).
    not_done: list[str] = field(default_factory=list)
    voxels: int = 0
    seconds: float = 0.0
    #: Every scan of the run (keys of :mod:`oefray.io.keys`), in natural order.
    scans: list[str] = field(default_factory=list)
    #: Brain voxels of each completed or skipped scan.
    scan_voxels: dict[str, int] = field(default_factory=dict)

    def outcome(self, key: str) -> str:
        """``done``, ``skipped``, ``failed`` or ``not done``."""
        if key in self.failed:
            return "failed"
        if key in self.completed:
            return "done"
        if key in self.skipped:
            return "skipped"
        return "not done"

    def scan_rows(self) -> list[dict[str, Any]]:
        """One row per scan: ``scan`` (``sub-<L>[_ses-<S>]``), ``subject``, ``session``,
        ``outcome``, ``voxels`` and, for a failed scan, ``error``."""
        rows = []
        for key in self.scans:
            scan = parse_key(key)
            row: dict[str, Any] = {
                "scan": scan.name,
                "subject": scan.subject,
                "session": scan.session,
                "outcome": self.outcome(key),
                "voxels": self.scan_voxels.get(key, 0),
            }
            if key in self.failed:
                row["error"] = self.failed[key]
            rows.append(row)
        return rows

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def voxels_per_second(self) -> float:
        return self.voxels / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "preprocess",
            "features": self.features,
            "dataset": self.dataset,
            "completed": self.completed,
            "skipped": self.skipped,
            "failed": self.failed,
            "not_done": self.not_done,
            "scans": self.scan_rows(),
            "voxels": self.voxels,
            "seconds": round(self.seconds, 3),
            "voxels_per_second": round(self.voxels_per_second, 1),
        }


def _options(config: PreprocessConfig) -> dict[str, Any]:
    return {"normalize": config.normalize}


def _label_columns(index: DatasetIndex) -> tuple[str, ...]:
    """The label columns of the run: ``tissue`` when every scan has a segmentation, ``lesion``
    when any has a lesion mask (a scan without one has no lesion)."""
    scans = list(index.scans.values())
    found = []
    if scans and all("tissue" in s.labels for s in scans):
        found.append("tissue")
    elif any("tissue" in s.labels for s in scans):
        log.warning("a segmentation (_dseg) for some scans only; tissue is left out for all")
    if any("lesion" in s.labels for s in scans):
        found.append("lesion")
    return tuple(found)


def _new_manifest(
    index: DatasetIndex, config: PreprocessConfig, with_truth: bool
) -> FeaturesManifest:
    return FeaturesManifest(
        source={"dataset": str(index.root), "name": index.name},
        options=_options(config),
        has_truth=with_truth,
        columns=list(fio.columns(with_truth, _label_columns(index))),
        oefray_version=__version__,
    )


def _difference(
    manifest: FeaturesManifest, index: DatasetIndex, config: PreprocessConfig, with_truth: bool
) -> str | None:
    """How the folder's features differ from what this run makes, in words (None: they don't)."""
    made_from = manifest.source.get("dataset")
    if made_from != str(index.root):
        return f"holds features of the dataset {made_from}, not of {index.root}"
    if manifest.options != _options(config):
        return f"was made with options {manifest.options}, not {_options(config)}"
    had, has = fio.label_columns(manifest), _label_columns(index)
    # a run of scans without lesion masks fits a folder with a lesion column (all 0 for them)
    if ("tissue" in had) != ("tissue" in has) or ("lesion" in has and "lesion" not in had):
        return f"holds the label columns {list(had)}, and this run makes {list(has)}"
    if manifest.has_truth != with_truth:
        return (
            f"was made {'with' if manifest.has_truth else 'without'} ground truth, and this "
            f"dataset has {'some' if with_truth else 'none'}"
        )
    return None


@dataclass
class _Existing:
    """What the output folder already holds: a manifest of this format, or the subject labels
    of an older format's (redone with ``--force``)."""

    manifest: FeaturesManifest | None = None
    old_format: list[str] | None = None


def _read_existing(out: Path, force: bool) -> _Existing:
    """The manifest of ``out`` (None if there is none yet); a folder of an older features format
    is one line, or with ``force`` a folder to redo (an older format is read, never extended).

    Raises
    ------
    FeaturesError
        A folder that is not an oefray features folder, or another format without ``force``.
    """
    if not out.is_dir():
        return _Existing()
    try:
        manifest = FeaturesManifest.read(out)
    except FeaturesVersionError:
        if not force:
            raise
        path = manifest_path(out)
        assert path is not None  # read_manifest found it just now
        labels = [str(k) for k in json.loads(path.read_text()).get("subjects", {})]
    else:
        if manifest is None:
            if any(_foreign(p) for p in out.iterdir()):
                raise FeaturesError(
                    out, f"exists and is not an oefray features folder (no {MANIFEST})"
                )
            return _Existing()
        if manifest.format_version == FORMAT_VERSION:
            return _Existing(manifest=manifest)
        if not force:
            raise FeaturesVersionError(
                manifest_path(out),
                f"features format version {manifest.format_version} is read but not extended "
                f"by this oefray (it writes version {FORMAT_VERSION}); use another --out, or "
                "--force to redo every subject",
            )
        labels = list(manifest.subjects)
    for key in labels:  # keys become paths: never unchecked
        try:
            parse_key(key)
        except ValueError as exc:
            raise FeaturesError(manifest_path(out), str(exc)) from None
    return _Existing(old_format=labels)


def _foreign(path: Path) -> bool:
    """Whether ``path``, in a folder without a manifest, is something preprocess did not write
    (a hidden file, or its own results file from a run that committed nothing, is not)."""
    if path.name.startswith("."):
        return False
    return not _own_results(path)


def _own_results(path: Path) -> bool:
    """Whether ``path`` is a results file oefray preprocess wrote into its features folder."""
    if path.name not in (fio.RESULTS, "results.json") or not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("command") == "preprocess"
    except (OSError, ValueError, AttributeError):
        return False


def _check_existing(
    out: Path,
    existing: _Existing,
    index: DatasetIndex,
    config: PreprocessConfig,
    with_truth: bool,
) -> None:
    """Refuse, without ``--force``, features made from another dataset or with other options."""
    if existing.manifest is None or config.force:
        return
    differs = _difference(existing.manifest, index, config, with_truth)
    if differs:
        raise FeaturesError(
            out / MANIFEST, f"{differs}; use another --out, or --force to redo every subject"
        )


def preprocess(
    dataset: str | Path,
    out: str | Path,
    config: PreprocessConfig | None = None,
    *,
    subjects: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
) -> PreprocessResult:
    """Fit the decay of every brain voxel of a BIDS dataset and write the features Parquet.

    Parameters
    ----------
    dataset : path
        BIDS dataset (DESIGN.md §4).
    out : path
        Features folder (created; scans already complete are skipped unless ``config.force``,
        or redone where the files this run picks for them differ from those they were made of).
    config : PreprocessConfig, optional
        Workers, slab size, normalisation, which acquisition and derivatives (``acq``, ``run``,
        ``qsm``, ``mask``, ``truth``), cluster address, force, keep-going (default: defaults).
    subjects : sequence of str, optional
        Only these subjects (labels: every session) or scans (``P3_ses-01``).
    progress : callable, optional
        ``progress(slabs_done, slabs_total, message)``.

    Returns
    -------
    PreprocessResult
        ``result.failed`` maps each failed scan to its one-line error; without ``keep_going``
        the run stops at the first failure (nothing is written for that scan), and the valid
        scans it did not do are ``result.not_done``.

    Raises
    ------
    OefrayError
        When the dataset as a whole or the output folder is unusable.
    """
    t0 = time.perf_counter()
    config = config or PreprocessConfig()
    index = scan_dataset(dataset, subjects, config.selection)
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise FeaturesError(out, "exists and is not a folder")
    result = PreprocessResult(features=str(out), dataset=str(index.root), scans=index.keys)
    result.failed.update({s: str(e) for s, e in index.errors.items()})
    if index.errors and not config.keep_going:
        result.not_done = list(index.scans)
        return result
    valid = list(index.scans.values())
    if not valid:
        raise DatasetError(index.root, "no valid scan to preprocess")
    with_truth = all(s.truth for s in valid)
    if not with_truth and any(s.truth for s in valid):
        log.warning("ground truth present for some scans only; it is left out for all")

    existing = _read_existing(out, config.force)
    _check_existing(out, existing, index, config, with_truth)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        _process(index, valid, out, existing, config, with_truth, result, progress)
    finally:
        if created and FeaturesManifest.read(out) is None:  # nothing completed: leave nothing
            shutil.rmtree(out, ignore_errors=True)
    accounted = {*result.completed, *result.skipped, *result.failed}
    result.not_done = [s.key for s in valid if s.key not in accounted]
    result.seconds = time.perf_counter() - t0
    return result


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[bool]:
    """The features folder's writer lock (yields True), or, where the folder is read-only, its
    reader lock (yields False: a run with nothing to do may still skip every subject)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(writing(out, "preprocess"))
            writable = True
        except PermissionError:
            stack.enter_context(reading(out))
            writable = False
        yield writable


def _process(
    index: DatasetIndex,
    valid: list[ScanFiles],
    out: Path,
    existing: _Existing,
    config: PreprocessConfig,
    with_truth: bool,
    result: PreprocessResult,
    progress: ProgressFn | None,
) -> None:
    """Under the folder lock: clean up after killed runs, pick the subjects to do, run them."""
    with _folder_lock(out) as writable:
        manifest = existing.manifest
        stale = list(out.glob(f"{fio.STAGING_PREFIX}*"))  # left by a run that was killed
        old = existing.old_format
        if manifest is not None and _difference(manifest, index, config, with_truth):
            old = list(manifest.subjects)  # --force: subjects made otherwise do not belong
        todo = [
            s
            for s in valid
            if config.force
            or manifest is None
            or old is not None
            or s.key not in manifest.subjects
            or not fio.scan_dir(out, s.key).is_dir()
            or manifest.subjects[s.key].source_files != _sources(s)
        ]
        doing = {s.key for s in todo}
        result.skipped += [s.key for s in valid if s.key not in doing]
        if manifest is not None:
            result.scan_voxels.update(
                {k: manifest.subjects[k].rows for k in result.skipped if k in manifest.subjects}
            )
        if not writable:
            if todo:
                raise FeaturesError(
                    out,
                    f"is read-only: cannot write the features of {len(todo)} subject(s) "
                    f"({', '.join(s.scan.name for s in todo[:3])}"
                    f"{', ...' if len(todo) > 3 else ''})",
                )
            return
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        if manifest is None or old is not None:
            manifest = _new_manifest(index, config, with_truth)
        if old is not None:
            for key in old:  # keys checked when the manifest was read
                _remove_scan(out, key)
            manifest.save(out)  # the folder's record matches what it holds, whatever follows
            if existing.old_format is not None:  # only an older format has such side files
                _drop_legacy_side_files(out)
        if todo:
            _run(index, todo, out, manifest, config, with_truth, result, progress)


def _drop_legacy_side_files(out: Path) -> None:
    """Remove an older format's side files (oefray's own: the manifest checked as one when it
    was read, a results file only if it says oefray preprocess wrote it): Parquet readers would
    trip over their names, which do not start with ``_``."""
    legacy_manifest = out / LEGACY_MANIFEST
    try:
        ours = json.loads(legacy_manifest.read_text()).get("format") == FEATURES_FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if ours:  # never a user's file that happens to have the name
        legacy_manifest.unlink()
    legacy_results = out / "results.json"
    if _own_results(legacy_results):
        legacy_results.unlink()


def _run(
    index: DatasetIndex,
    todo: list[ScanFiles],
    out: Path,
    manifest: FeaturesManifest,
    config: PreprocessConfig,
    with_truth: bool,
    result: PreprocessResult,
    progress: ProgressFn | None,
) -> None:
    import ray.data

    staging = out / f"{fio.STAGING_PREFIX}{uuid.uuid4().hex}"
    slabs = plan_slabs(todo, config.slab)
    items = plan_tasks(todo, config.slab)
    remaining = {s.key: sum(1 for it in slabs if it["subject"] == s.key) for s in todo}
    tally = {key: _Tally() for key in remaining}
    errors: dict[str, str] = {}
    by_key = {s.key: s for s in todo}
    seen: set[tuple[str, int]] = set()
    total, done = len(slabs), 0
    if progress:
        progress(0, total, f"{len(todo)} scan(s), {total} slab(s)")
    try:
        with ray_runtime(config.address, config.workers), data_context():
            cpus = int(ray.cluster_resources().get("CPU", config.workers))
            streams = sum(1 for it in items if it["z1"] - it["z0"] > config.slab)
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
            ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _fit_slabs,  # type: ignore[arg-type]  # ray's stub has no keyword-only callables
                batch_size=1,
                batch_format="numpy",
                num_cpus=1,
                fn_kwargs={
                    "subjects": by_key,
                    "staging": str(staging),
                    "slab": config.slab,
                    "normalize": config.normalize,
                    "with_truth": with_truth,
                    "labels": fio.label_columns(manifest),
                    "read_threads": read_threads(cpus, streams),
                },
            )
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                for i, key in enumerate(batch["subject"]):
                    key, error = str(key), str(batch["error"][i])
                    if (key, int(batch["z0"][i])) in seen:  # a retried task's repeat
                        continue
                    seen.add((key, int(batch["z0"][i])))
                    done += 1
                    remaining[key] -= 1
                    tally[key].add(
                        int(batch["rows"][i]),
                        int(batch["checksum"][i]),
                        str(batch["status"][i]),
                        str(batch["file"][i]),
                    )
                    if error and key not in errors:
                        errors[key] = str(error)
                        shutil.rmtree(fio.scan_dir(staging, key), ignore_errors=True)
                        if not config.keep_going:
                            result.failed[key] = errors[key]
                            return
                    if remaining[key] == 0:
                        if key in errors:
                            result.failed[key] = errors[key]
                        else:
                            _commit(by_key[key], staging, out, manifest, index, tally[key])
                            result.completed.append(key)
                            result.voxels += tally[key].rows
                            result.scan_voxels[key] = tally[key].rows
                    if progress:
                        progress(done, total, by_key[key].scan.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_scan(out: Path, key: str) -> None:
    """Remove a scan's features folder (and its subject's folder, once empty of scans)."""
    folder = fio.scan_dir(out, key)
    shutil.rmtree(folder, ignore_errors=True)
    parent = folder.parent
    if parent != out:
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty: another session of the subject stays


def _sources(scan: ScanFiles) -> dict[str, Any]:
    """The files a scan's features are made of, as the manifest records them."""
    sources: dict[str, Any] = {"echoes": list(scan.echoes), "chi": scan.chi, "mask": scan.mask}
    if scan.volumes:
        sources["volumes"] = list(scan.volumes)
    return sources


@dataclass
class _Tally:
    """What the slabs of one subject reported: rows, content checksum (a sum), status counts and
    each written file's SHA-256 and size."""

    rows: int = 0
    checksum: int = 0
    status: dict[str, int] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, rows: int, checksum: int, status_json: str, file_json: str = "{}") -> None:
        self.rows += rows
        self.checksum = (self.checksum + checksum) % 2**64
        for code, n in json.loads(status_json).items():
            self.status[code] = self.status.get(code, 0) + n
        self.files.update(json.loads(file_json))


def _commit(
    scan: ScanFiles,
    staging: Path,
    out: Path,
    manifest: FeaturesManifest,
    index: DatasetIndex,
    tally: _Tally,
) -> None:
    """Move a fully staged scan into place and record it in the manifest."""
    staged = fio.scan_dir(staging, scan.key)
    if tally.rows != scan.n_brain:
        raise OefrayError(
            staged, f"slabs reported {tally.rows} rows but the mask has {scan.n_brain} voxels"
        )
    fio.publish_subject(staged, fio.scan_dir(out, scan.key))
    record = SubjectRecord(
        rows=tally.rows,
        checksum=fio.format_checksum(tally.checksum),
        status_counts=dict(sorted(tally.status.items(), key=lambda kv: int(kv[0]))),
        split=index.split.get(scan.key, ""),
        shape=scan.shape,
        affine=tuple(tuple(float(v) for v in r) for r in scan.affine),
        echo_times_s=tuple(scan.te_s),
        source_files=_sources(scan),
        created=SubjectRecord.now(),
        files=dict(sorted(tally.files.items())),
        entities=dict(scan.entities),
        label_names={str(k): v for k, v in scan.label_names.items()},
    )
    manifest.add_subject(scan.key, record, __version__)
    manifest.save(out)
