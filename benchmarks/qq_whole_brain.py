"""Whole-brain ``oefray qq`` (CAT, with the OEF_wb prior) on one simulated subject, end to end.

Usage::

    python benchmarks/qq_whole_brain.py [--preset full] [--workers 2] [--method cat] [--keep DIR]

Simulates one subject of the preset (``full``: 176 x 208 x 160, ~1.2M brain voxels, 8 echoes,
gzipped NIfTI), then times, in the same process and on the same local Ray runtime:

- ``oefray preprocess`` of the subject (the decay fit of every brain voxel: the reference, one
  cheap per-voxel pass through the same reading path);
- ``oefray qq`` of the subject (read, clustering on a 20,000-voxel sample, cluster sums and
  solutions, the prior's rounds, the voxel-wise solve, maps written), from a cold start of its
  kernels in this process except the compile, which a warm-up on a tiny cohort pays first.

The last line is ``qq_whole_brain seconds=<qq wall s> voxels=<n> voxels_per_s=<v>
vs_preprocess=<qq s / preprocess s>``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--method", default="cat")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the data in this folder.")
    args = parser.parse_args()

    import ray

    from oefray.config import PreprocessConfig, QQConfig, SimulationConfig
    from oefray.orchestration.preprocess import preprocess
    from oefray.orchestration.qq import run_qq
    from oefray.orchestration.simulate import simulate_cohort

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="oefray-qq-bench-"))
    try:
        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
        store = f"sqlite:///{root}/mlflow.db"
        config = QQConfig(
            method=args.method, oef_wb_source="truth", workers=args.workers, tracking_uri=store
        )
        warm = root / "warm"
        simulate_cohort(warm, SimulationConfig(preset="tiny", subjects=("P3",), seed=1))
        run_qq(warm, root / "warm-qq", config)  # compiles (or loads) the kernels
        data = root / "subject"
        t0 = time.perf_counter()
        simulate_cohort(data, SimulationConfig(preset=args.preset, subjects=("P3",), seed=1))
        print(f"simulate {args.preset}: {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        pre = preprocess(data, root / "features", PreprocessConfig(workers=args.workers))
        t_pre = time.perf_counter() - t0
        print(f"preprocess: {t_pre:.1f} s, {pre.voxels:,} voxels", flush=True)
        t0 = time.perf_counter()
        result = run_qq(data, root / "qq", config, progress=print)
        t_qq = time.perf_counter() - t0
        scan = result.scans["P3"]
        print(
            f"qq {args.method}: {t_qq:.1f} s; {scan['clusters']} clusters, prior rounds "
            f"{scan.get('rounds')}, mean OEF {scan['mean_oef']:.2f} % (OEF_wb "
            f"{scan['oef_wb']:.2f} %), OEF RMSE {result.metrics.get('test_rmse_OEF', float('nan')):.2f} %"
        )
        n = scan["voxels"]
        print(
            f"qq_whole_brain seconds={t_qq:.1f} voxels={n} voxels_per_s={n / t_qq:.0f} "
            f"vs_preprocess={t_qq / t_pre:.2f}"
        )
    finally:
        ray.shutdown()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
