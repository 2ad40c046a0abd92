"""End-to-end ``preprocess`` (Ray Data) against the bare decay-fit kernel, plain ``.nii`` beside
``.nii.gz``.

Simulates one subject of the ``full`` preset (~1.2e6 brain voxels x 8 echoes) twice from the same
seed, once as plain ``.nii`` and once gzipped (the same voxels), then measures, in the same run and
on a warm local Ray runtime:

* the bare kernel: ``fit_decay`` on the brain voxels already in memory, one process, one core;
* for each format, the same per-slab work without Ray, serially in this process: for plain
  ``.nii`` lazy reads of each slab, for ``.nii.gz`` what its task does, one stream per image
  (:func:`oefray.io.slabs.iter_brain_voxels`); then the fit and the Parquet write;
* for each format, ``preprocess`` end to end (reads, fit, Parquet write, checksum, commit) with
  1 and 2 workers.

Prints, for plain ``.nii``, the overhead ratios of 1 worker against the bare kernel (DESIGN.md
target <= 2) and against the serial in-process pipeline (what Ray itself costs) and the speed-up
from 1 to 2 workers, ending with the line ``preprocess overhead_vs_kernel=<x>
overhead_vs_serial=<y> speedup_2_workers=<z>``; then gzip against plain (DESIGN.md target
<= 1.5), the line ``preprocess gzip_vs_plain_1_worker=<x> gzip_vs_plain_2_workers=<y>``.

    python benchmarks/preprocess.py [--preset full] [--subjects 1] [--slab 16] [--repeats 3]
                                    [--formats plain,gzip]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

FORMATS = {"plain": ".nii", "gzip": ".nii.gz"}


def _brain_voxels(sub) -> np.ndarray:
    """(n_brain, n_echoes) float32 magnitudes of one subject, read whole with nibabel."""
    from oefray.io import bids

    echoes = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in sub.echoes]
    return np.stack(echoes, axis=-1)[bids.read_mask(sub.mask)]


def _serial(subs, slab: int, target: Path) -> float:
    """Seconds for the read + fit + write of every slab, in this process, as the tasks do it."""
    from oefray.io import features as fio
    from oefray.io import slabs
    from oefray.orchestration import preprocess as stage

    slab_features, voxel_features = stage.slab_features, stage.voxel_features
    t = time.perf_counter()
    for sub in subs:
        bounds = slabs.slab_bounds(0, sub.depth, slab)
        if slabs.is_compressed(sub):
            stream = slabs.iter_brain_voxels(sub, bounds, threads=stage.READ_THREADS or 1)
            pieces = ((v.z0, v.z1, voxel_features(sub, v, with_truth=True)) for v in stream)
        else:
            pieces = ((a, b, slab_features(sub, a, b, with_truth=True)) for a, b in bounds)
        for z0, z1, cols in pieces:
            if len(cols["idx"]):
                table = fio.table_from_columns(cols, True)
                fio.write_slab_table(target / sub.label, table, z0, z1)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="full", help="cohort preset of the benchmark subject")
    ap.add_argument("--subjects", type=int, default=1, help="number of subjects of that preset")
    ap.add_argument("--slab", type=int, default=16, help="z planes per slab")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    ap.add_argument(
        "--formats",
        default="plain,gzip",
        help="comma-separated, of plain (.nii) and gzip (.nii.gz); the first is the reference",
    )
    ap.add_argument(
        "--read-threads",
        type=int,
        default=None,
        help="read-ahead threads of a gzipped subject's task (default: preprocess.read_threads)",
    )
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or any(f not in FORMATS for f in formats):
        ap.error(f"--formats takes {', '.join(FORMATS)}, got {args.formats!r}")

    import ray

    from oefray.config import PAPER_SUBJECTS, PreprocessConfig, SimulationConfig
    from oefray.io import scans, slabs
    from oefray.orchestration import preprocess as stage
    from oefray.orchestration.preprocess import preprocess
    from oefray.orchestration.simulate import simulate_cohort
    from oefray.physics.decay import fit_decay

    if args.read_threads is not None:
        stage.READ_THREADS = args.read_threads
    work = Path(tempfile.mkdtemp(prefix="oefray-bench-"))
    try:
        labels = PAPER_SUBJECTS[: args.subjects]
        config = SimulationConfig(preset=args.preset, subjects=labels, seed=1)
        datasets: dict[str, Path] = {}
        for fmt in formats:
            t = time.perf_counter()
            datasets[fmt] = work / f"bids-{fmt}"
            simulate_cohort(datasets[fmt], config, suffix=FORMATS[fmt])
            took = time.perf_counter() - t
            print(f"simulated {len(labels)} subject(s) ({args.preset}, {fmt}) in {took:.1f} s")
        subs = {
            fmt: [scans.scan_subject(ds, label) for label in labels] for fmt, ds in datasets.items()
        }
        ref = subs[formats[0]]
        voxels = np.concatenate([_brain_voxels(sub) for sub in ref])
        te = np.asarray(ref[0].te_s)
        n = len(voxels)
        print(f"brain voxels: {n:,} x {len(te)} echoes, grid {ref[0].shape}, slab {args.slab}")
        threads = stage.READ_THREADS or "1 per gzipped subject, or the idle CPUs"
        print(f"gzip inflater: {slabs.INFLATER}, read-ahead threads: {threads}")
        fit_decay(voxels[:1000], te)  # numba compile (cached on disk) outside the timing

        kernel = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fit_decay(voxels, te)
            kernel.append(time.perf_counter() - t)
        t_kernel = statistics.median(kernel)
        print(f"bare kernel, 1 process:          {t_kernel:7.3f} s  ({n / t_kernel:,.0f} voxels/s)")

        serial: dict[str, float] = {}
        serial_runs: dict[str, list[float]] = {fmt: [] for fmt in formats}
        for r in range(args.repeats):
            for fmt in formats:
                serial_runs[fmt].append(_serial(subs[fmt], args.slab, work / f"s-{fmt}-{r}"))
        for fmt in formats:
            serial[fmt] = statistics.median(serial_runs[fmt])
            print(
                f"serial pipeline, no Ray, {fmt:5s}: {serial[fmt]:7.3f} s  "
                f"({n / serial[fmt]:,.0f} voxels/s)  read + fit + write"
            )

        timings: dict[tuple[str, int], float] = {}
        for workers in (1, 2):
            # what `oefray preprocess --workers N` runs on: a local runtime with N CPUs
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            try:
                cfg = PreprocessConfig(workers=workers, slab=args.slab)
                runs: dict[str, list[float]] = {fmt: [] for fmt in formats}
                for fmt in formats:
                    # warm up: start the workers, load the compiled kernel, touch the files
                    preprocess(datasets[fmt], work / f"warm-{fmt}-{workers}", cfg)
                for r in range(args.repeats):
                    for fmt in formats:  # formats alternate: the machine's load drifts
                        t = time.perf_counter()
                        res = preprocess(datasets[fmt], work / f"f-{fmt}-{workers}-{r}", cfg)
                        runs[fmt].append(time.perf_counter() - t)
                        assert res.ok and res.voxels == n, res
            finally:
                ray.shutdown()
            for fmt in formats:
                timings[fmt, workers] = statistics.median(runs[fmt])
                print(
                    f"preprocess, {fmt:5s}, {workers} worker(s): {timings[fmt, workers]:7.3f} s  "
                    f"({n / timings[fmt, workers]:,.0f} voxels/s)  "
                    f"runs: {', '.join(f'{x:.2f}' for x in runs[fmt])}"
                )
        first = formats[0]
        overhead = timings[first, 1] / t_kernel
        ray_cost = timings[first, 1] / serial[first]
        speedup = timings[first, 1] / timings[first, 2]
        print(f"[{first}] overhead 1 worker vs bare kernel: {overhead:.2f}x (target <= 2)")
        print(f"[{first}] overhead 1 worker vs serial pipeline (Ray's own cost): {ray_cost:.2f}x")
        print(f"[{first}] speed-up 1 -> 2 workers: {speedup:.2f}x")
        print(
            f"preprocess overhead_vs_kernel={overhead:.2f} overhead_vs_serial={ray_cost:.2f} "
            f"speedup_2_workers={speedup:.2f}"
        )
        if {"plain", "gzip"} <= set(formats):
            ratios = {w: timings["gzip", w] / timings["plain", w] for w in (1, 2)}
            print(
                f"gzip vs plain: serial {serial['gzip'] / serial['plain']:.2f}x, "
                f"1 worker {ratios[1]:.2f}x, 2 workers {ratios[2]:.2f}x (target <= 1.5)"
            )
            print(
                f"preprocess gzip_vs_plain_1_worker={ratios[1]:.2f} "
                f"gzip_vs_plain_2_workers={ratios[2]:.2f}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
