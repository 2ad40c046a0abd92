"""Print what `make demo` produced: subjects, voxels, fit throughput, where the Parquet is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from oefray.io.features import read_features, read_manifest
from oefray.physics.decay import FitStatus


def main(out: Path) -> None:
    sim = json.loads((out / "bids" / "results.json").read_text())
    pre = json.loads((out / "features" / "_results.json").read_text())
    manifest = read_manifest(out / "features")
    table = read_features(out / "features")
    subjects = manifest["subjects"]
    n_train = sum(1 for s in subjects.values() if s["split"] == "train")
    ok = pc.equal(table["status"], 0)
    status = {FitStatus(int(k)).name: v for k, v in _counts(table["status"].to_numpy()).items()}
    print(
        f"dataset   {sim['dataset']}  ({len(sim['subjects'])} subjects, simulated in {sim['seconds']:.1f} s)"
    )
    print(f"features  {pre['features']}")
    print(f"subjects  {len(subjects)} ({n_train} train, {len(subjects) - n_train} test)")
    print(f"voxels    {table.num_rows:,} brain voxels, fit status {status}")
    print(
        f"speed     {pre['voxels']:,} voxels in {pre['seconds']:.1f} s end to end "
        f"= {pre['voxels_per_second']:,.0f} voxels/s (Ray start-up included)"
    )
    for col in ("A", "B", "E", "S", "Y"):
        v = table[col].filter(ok).to_numpy()
        print(
            f"  {col:<2} median {np.median(v):9.4g}   5-95 %  [{np.percentile(v, 5):.4g}, {np.percentile(v, 95):.4g}]"
        )
    glob = out.resolve() / "features" / "*" / "*.parquet"
    print("look at it:")
    print(
        f"  duckdb -c \"SELECT subject, count(*), avg(B) FROM read_parquet('{glob}', hive_partitioning=true) GROUP BY ALL\""
    )
    print(
        f"  python -c \"import polars as pl; print(pl.read_parquet('{glob}', hive_partitioning=True))\""
    )
    print(
        f"  python -c \"from oefray.io.features import read_features; print(read_features('{out / 'features'}'))\""
    )


def _counts(values: np.ndarray) -> dict[int, int]:
    codes, counts = np.unique(values, return_counts=True)
    return {int(c): int(n) for c, n in zip(codes, counts, strict=True)}


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
