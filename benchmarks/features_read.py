"""What verifying features costs a reader: ``read_features`` against a bare pyarrow read.

Writes one subject of ``--rows`` feature rows (with ground truth, the training layout) as slab
files with oefray's own writer and a manifest recording each file's SHA-256, then measures, in the
same run, the median of ``--repeats`` reads of:

* pyarrow alone: ``pyarrow.dataset`` over the same files, no checks (the reference);
* ``read_features`` the first time in a process: every file hashed, then read;
* ``read_features`` again: the files are known (one ``stat`` each), then read;
* ``oefray verify``'s check: every file hashed, read, row count and content checksum compared.

Ends with ``features_read first_vs_pyarrow=<x> cached_vs_pyarrow=<y> verify_vs_pyarrow=<z>``.

    python benchmarks/features_read.py [--rows 1200000] [--slab-rows 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_subject(root: Path, rows: int, slab_rows: int) -> None:
    from oefray.io import features as fio
    from oefray.io.integrity import file_record
    from oefray.io.manifest import FeaturesManifest, SubjectRecord

    rng = np.random.default_rng(0)
    shape = (256, 256, max(1, rows // (256 * 64) + 1))
    idx = np.sort(rng.choice(np.prod(shape), size=rows, replace=False))
    x, y, z = np.unravel_index(idx, shape)
    cols = {"x": x, "y": y, "z": z, "idx": idx, "status": np.zeros(rows, np.int8)}
    for name in ("A", "B", "E", "S", *fio.TRUTH_COLUMNS):
        cols[name] = rng.random(rows, dtype=np.float32)
    folder = fio.scan_dir(root, "P3")
    files, total = {}, 0
    for start in range(0, rows, slab_rows):
        part = {k: v[start : start + slab_rows] for k, v in cols.items()}
        table = fio.table_from_columns(part, True)
        path = fio.write_slab_table(folder, table, start // slab_rows, start // slab_rows + 1)
        files[path.name] = file_record(path)
        total = (total + fio.checksum(table)) % 2**64
    manifest = FeaturesManifest(
        source={"dataset": "/bench", "name": "bench"},
        options={"normalize": "none"},
        has_truth=True,
        columns=list(fio.columns(True)),
    )
    record = SubjectRecord(
        rows=rows,
        checksum=fio.format_checksum(total),
        status_counts={"0": rows},
        split="train",
        shape=shape,
        affine=tuple(tuple(float(v) for v in r) for r in np.eye(4)),
        echo_times_s=(0.0045, 0.0095),
        files=files,
    )
    manifest.add_subject("P3", record, "bench")
    manifest.save(root)


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_200_000, help="feature rows (voxels)")
    ap.add_argument("--slab-rows", type=int, default=100_000, help="rows per Parquet file")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    args = ap.parse_args()

    import pyarrow.dataset as pads

    from oefray.io import features as fio
    from oefray.io.integrity import forget_verified

    root = Path(tempfile.mkdtemp(prefix="oefray-bench-read-"))
    try:
        _write_subject(root, args.rows, args.slab_rows)
        files = sorted(fio.scan_dir(root, "P3").glob("*.parquet"))
        size = sum(f.stat().st_size for f in files)
        schema = fio.file_schema(True)

        def bare():
            pads.dataset(files, schema=schema, format="parquet").to_table()

        def first():
            forget_verified()
            fio.read_features(root)

        t_bare = _median(bare, args.repeats)
        t_first = _median(first, args.repeats)
        fio.read_features(root)
        t_cached = _median(lambda: fio.read_features(root), args.repeats)
        t_verify = _median(lambda: fio.verify_features(root), args.repeats)
        assert fio.verify_features(root).ok
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"{args.rows:,} rows in {len(files)} files, {size / 1e6:.1f} MB")
    for name, t in (
        ("pyarrow read, no checks", t_bare),
        ("read_features, first", t_first),
        ("read_features, cached", t_cached),
        ("verify (hash+checksum)", t_verify),
    ):
        print(f"{name:24s}: {t:7.3f} s  ({args.rows / t:12,.0f} rows/s)")
    print(
        f"features_read first_vs_pyarrow={t_first / t_bare:.2f} "
        f"cached_vs_pyarrow={t_cached / t_bare:.2f} verify_vs_pyarrow={t_verify / t_bare:.2f}"
    )


if __name__ == "__main__":
    main()
