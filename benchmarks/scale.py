"""How the pipeline scales with the cohort: simulate, preprocess, train 1 epoch (with its test
evaluation) on 1x, 4x and 16x the demo cohort, measuring each stage's wall time, throughput and
the peak resident memory of the driver and of the largest Ray worker.

Usage::

    python benchmarks/scale.py [--factors 1,4,16] [--workers 2] [--preset demo] [--keep DIR]
    python benchmarks/scale.py --preset full --factors 1 --ccm   # the paper's protocol, full size

Each stage runs as the ``oefray`` command a user types, in a process of its own, started on a
local Ray runtime of ``--workers`` CPUs; a sampler polls the resident memory (RSS) of that
process (the driver) and of every Ray worker process below it (``ray::…``) every 0.2 s. Cohort
``f`` is the paper's 18 subjects plus ``18 (f - 1)`` more (split 8:10 like the paper's), the
``--preset`` grid (``demo``: ~18,500 brain voxels each; ``full``: ~1.2M, the paper's 1 mm
protocol, issue 14 item 5), seed 0.

Per cohort it also prints the sizes on disk (the BIDS dataset, the features, the training run's
MLflow artifacts) and where the training's time went, from its MLflow run: before the run opened
(Ray, the statistics pass, materialising the windows), from then to the epoch's metrics (the
trainer's start, the workers' cache, the epoch: ``epoch_seconds``, ``samples_per_second``, the
data feed and shard size), and after (the test scans' batch inference, their maps, the tables
and the model). ``--ccm`` adds an ``oefray baseline ccm`` stage on the same features.

Throughput: preprocess in brain voxels/s, train in windows/s (training and validation windows
of the epoch plus the test windows evaluated, over the stage's wall time), each per CPU. The
last line is ``scale driver_peak_ratio_16x=<train driver peak at 16x / at 1x>
throughput_ratio_16x=<train windows/s per CPU at 16x / at 1x>`` (issue 14's targets: at most
1.2 and at least 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

PAPER = ("P3", "P4", "P5", "P14", "P16", "P28", "P29", "P34")
PAPER += ("P6", "P11", "P12", "P13", "P15", "P17", "P23", "P26", "P27", "P31")


def _sample_rss(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    """Poll the driver's RSS and its Ray workers' until ``stop``."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            peaks["driver"] = max(peaks["driver"], proc.memory_info().rss)
            for child in proc.children(recursive=True):
                try:
                    if child.name().startswith("ray::") or "ray::" in " ".join(child.cmdline()[:1]):
                        peaks["worker"] = max(peaks["worker"], child.memory_info().rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        except psutil.NoSuchProcess:
            return
        stop.wait(0.2)


def _stage(argv: list[str], log: Path) -> tuple[float, dict[str, int]]:
    """Run one oefray command; its wall time and the peak RSS of its driver and workers."""
    peaks = {"driver": 0, "worker": 0}
    stop = threading.Event()
    t0 = time.perf_counter()
    with log.open("a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oefray.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(os.environ, RAY_ADDRESS=""),
        )
        sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peaks, stop))
        sampler.start()
        code = proc.wait()
    stop.set()
    sampler.join()
    if code:
        raise SystemExit(f"{' '.join(argv[:2])} failed (exit {code}); see {log}")
    return time.perf_counter() - t0, peaks


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _train_breakdown(base: Path, total_s: float) -> tuple[str, Path]:
    """Where the training command's time went, from its MLflow run (module docstring), and the
    run's artifact folder."""
    from urllib.parse import urlparse

    from mlflow.tracking import MlflowClient

    result = json.loads((base / "train.json").read_text())
    client = MlflowClient(f"sqlite:///{base}/mlflow.db")
    run = client.get_run(result["run_id"])
    last_epoch = max(m.timestamp for m in client.get_metric_history(run.info.run_id, "loss"))
    start, end = run.info.start_time, run.info.end_time
    m, tags = run.data.metrics, run.data.tags
    text = (
        f"before the run {total_s - (end - start) / 1e3:.1f} s, to the epoch's metrics "
        f"{(last_epoch - start) / 1e3:.1f} s (epoch {m['epoch_seconds']:.1f} s, "
        f"{m['samples_per_second']:,.0f} windows/s, {tags.get('oefray.data_feed')} "
        f"{tags.get('oefray.shard_mb')} MB a worker), evaluation and logging "
        f"{(end - last_epoch) / 1e3:.1f} s; test OEF RMSE {m['test_rmse_OEF']:.2f} %, floor "
        f"{m['floor_rmse_OEF']:.2f} %"
    )
    return text, Path(urlparse(run.info.artifact_uri).path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", default="1,4,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default="demo", help="cohort grid: tiny, demo or full")
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--ccm", action="store_true", help="also run oefray baseline ccm")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="oefray-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = {}
    mb = 1 / 2**20
    try:
        for f in factors:
            base = root / f"x{f}"
            subjects = list(PAPER) + [f"S{i:04d}" for i in range(18 * (f - 1))]
            uri = f"sqlite:///{base}/mlflow.db"
            log = base / "stderr.log"
            base.mkdir(parents=True, exist_ok=True)
            sim = ["simulate", str(base / "bids"), "--preset", args.preset, "--seed", "0"]
            t_sim, p_sim = _stage([*sim, "--subjects", ",".join(subjects), "--force"], log)
            pre = ["preprocess", str(base / "bids"), "--out", str(base / "features")]
            t_pre, p_pre = _stage([*pre, "--workers", str(args.workers), "--force"], log)
            voxels = json.loads((base / "features" / "_results.json").read_text())["voxels"]
            train = ["train", str(base / "features"), "--preset", "small", "--epochs", "1"]
            train += ["--workers", str(args.workers), "--tracking-uri", uri]
            t_tr, p_tr = _stage([*train, "--results", str(base / "train.json")], log)
            counts = json.loads((base / "train.json").read_text())["counts"]
            windows = counts["train_windows"] + counts["val_windows"] + counts["test_windows"]
            rows[f] = {
                "subjects": len(subjects),
                "voxels": voxels,
                "windows": windows,
                "preprocess_per_cpu": voxels / t_pre / args.workers,
                "train_per_cpu": windows / t_tr / args.workers,
                "train_driver": p_tr["driver"],
            }
            stages = [
                ("simulate", t_sim, p_sim),
                ("preprocess", t_pre, p_pre),
                ("train+evaluate", t_tr, p_tr),
            ]
            if args.ccm:
                ccm = ["baseline", "ccm", str(base / "features"), "--workers", str(args.workers)]
                ccm += ["--tracking-uri", uri, "--results", str(base / "ccm.json")]
                t_ccm, p_ccm = _stage(ccm, log)
                stages.append(("baseline ccm", t_ccm, p_ccm))
            for name, t, p in stages:
                print(
                    f"x{f:<3d} {name:15s} {t:8.1f} s  driver peak {p['driver'] * mb:8.0f} MB  "
                    f"largest worker {p['worker'] * mb:8.0f} MB",
                    flush=True,
                )
            breakdown, artifacts = _train_breakdown(base, t_tr)
            sizes = {
                "BIDS": _size(base / "bids"),
                "features": _size(base / "features"),
                "train run artifacts": _size(artifacts),
            }
            on_disk = ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in sizes.items())
            print(f"x{f:<3d} on disk: {on_disk}", flush=True)
            print(f"x{f:<3d} train: {breakdown}", flush=True)
            print(
                f"x{f:<3d} {len(subjects)} subjects, {voxels:,} brain voxels, {windows:,} windows: "
                f"preprocess {rows[f]['preprocess_per_cpu']:,.0f} voxels/s/CPU, "
                f"train+evaluate {rows[f]['train_per_cpu']:,.0f} windows/s/CPU",
                flush=True,
            )
        lo, hi = min(factors), max(factors)
        if lo == hi:
            return
        print(
            f"scale driver_peak_ratio_{hi}x={rows[hi]['train_driver'] / rows[lo]['train_driver']:.2f} "
            f"throughput_ratio_{hi}x={rows[hi]['train_per_cpu'] / rows[lo]['train_per_cpu']:.2f}"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
