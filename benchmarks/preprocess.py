"""End-to-end ``preprocess`` (Ray Data) against the bare decay-fit kernel on the same voxels.

Simulates one subject of the ``full`` preset (~1.2e6 brain voxels x 8 echoes), then measures, in
the same run and on a warm local Ray runtime:

* the bare kernel: ``fit_decay`` on the brain voxels already in memory, one process, one core;
* the same per-slab work without Ray (lazy reads, fit, Parquet write), serially in this process;
* ``preprocess`` end to end (lazy slab reads, fit, Parquet write, checksum, commit) with 1 and 2
  workers.

Prints the overhead ratios of 1 worker against the bare kernel (DESIGN.md target <= 2) and against
the serial in-process pipeline (what Ray itself costs), the speed-up from 1 to 2 workers, and ends
with the line ``preprocess overhead_vs_kernel=<x> overhead_vs_serial=<y> speedup_2_workers=<z>``.

    python benchmarks/preprocess.py [--preset full] [--subjects 1] [--slab 16] [--repeats 3] [--gzip]
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


def _brain_voxels(sub) -> np.ndarray:
    """(n_brain, n_echoes) float32 magnitudes of one subject, read whole with nibabel."""
    from oefray.io import bids

    echoes = [np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in sub.echoes]
    return np.stack(echoes, axis=-1)[bids.read_mask(sub.mask)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="full", help="cohort preset of the benchmark subject")
    ap.add_argument("--subjects", type=int, default=1, help="number of subjects of that preset")
    ap.add_argument("--slab", type=int, default=16, help="z planes per Ray Data block")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    ap.add_argument("--gzip", action="store_true", help="store .nii.gz instead of plain .nii")
    args = ap.parse_args()

    import ray

    from oefray.config import PAPER_SUBJECTS, PreprocessConfig, SimulationConfig
    from oefray.io import bids
    from oefray.io import features as fio
    from oefray.orchestration.preprocess import plan_slabs, preprocess, slab_features
    from oefray.orchestration.simulate import simulate_cohort
    from oefray.physics.decay import fit_decay

    work = Path(tempfile.mkdtemp(prefix="oefray-bench-"))
    try:
        suffix = ".nii.gz" if args.gzip else ".nii"
        t = time.perf_counter()
        ds = work / "bids"
        labels = PAPER_SUBJECTS[: args.subjects]
        config = SimulationConfig(preset=args.preset, subjects=labels, seed=1)
        simulate_cohort(ds, config, suffix=suffix)
        took = time.perf_counter() - t
        print(f"simulated {len(labels)} subject(s) ({args.preset}, {suffix}) in {took:.1f} s")
        subs = [bids.scan_subject(ds, label) for label in labels]
        voxels = np.concatenate([_brain_voxels(sub) for sub in subs])
        te = np.asarray(subs[0].te_s)
        n = len(voxels)
        print(f"brain voxels: {n:,} x {len(te)} echoes, grid {subs[0].shape}")
        fit_decay(voxels[:1000], te)  # numba compile (cached on disk) outside the timing

        kernel = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fit_decay(voxels, te)
            kernel.append(time.perf_counter() - t)
        t_kernel = statistics.median(kernel)
        print(f"bare kernel, 1 process:    {t_kernel:7.3f} s  ({n / t_kernel:,.0f} voxels/s)")

        serial = []
        for r in range(args.repeats):
            target = work / f"serial-{r}"
            t = time.perf_counter()
            for sub in subs:
                for item in plan_slabs([sub], args.slab):
                    cols = slab_features(sub, item["z0"], item["z1"], with_truth=True)
                    if len(cols["idx"]):
                        table = fio.table_from_columns(cols, True)
                        fio.write_slab_table(target / sub.label, table, item["z0"], item["z1"])
            serial.append(time.perf_counter() - t)
        t_serial = statistics.median(serial)
        print(
            f"serial pipeline, no Ray:   {t_serial:7.3f} s  ({n / t_serial:,.0f} voxels/s)  read + fit + write"
        )

        timings: dict[int, float] = {}
        for workers in (1, 2):
            # what `oefray preprocess --workers N` runs on: a local runtime with N CPUs
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
            try:
                # warm up: start the workers, load the compiled kernel in each, touch the files
                preprocess(
                    ds, work / f"warm{workers}", PreprocessConfig(workers=workers, slab=args.slab)
                )
                runs = []
                for r in range(args.repeats):
                    t = time.perf_counter()
                    res = preprocess(
                        ds,
                        work / f"f{workers}-{r}",
                        PreprocessConfig(workers=workers, slab=args.slab),
                    )
                    runs.append(time.perf_counter() - t)
                    assert res.ok and res.voxels == n, res
            finally:
                ray.shutdown()
            timings[workers] = statistics.median(runs)
            print(
                f"preprocess, {workers} worker(s):  {timings[workers]:7.3f} s  "
                f"({n / timings[workers]:,.0f} voxels/s)  runs: {', '.join(f'{x:.2f}' for x in runs)}"
            )
        overhead = timings[1] / t_kernel
        ray_cost = timings[1] / t_serial
        speedup = timings[1] / timings[2]
        print(f"overhead 1 worker vs bare kernel: {overhead:.2f}x (target <= 2)")
        print(f"overhead 1 worker vs serial pipeline (Ray's own cost): {ray_cost:.2f}x")
        print(f"speed-up 1 -> 2 workers: {speedup:.2f}x")
        print(
            f"preprocess overhead_vs_kernel={overhead:.2f} overhead_vs_serial={ray_cost:.2f} "
            f"speedup_2_workers={speedup:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
