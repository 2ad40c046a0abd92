"""Ways to read a gzipped subject slab by slab, serially in one process (no fit, no Ray).

Simulates one ``full`` subject (15 images of 176 x 208 x 160 float32: 334 MB inflated) as
``.nii.gz`` and as plain ``.nii``, and times reading the brain voxels of every slab of it by:

* ``lazy``: :func:`oefray.io.bids.read_brain_voxels` per slab (``img.dataobj``), what each slab
  task did before: for ``.nii.gz`` each read inflates the file from its start;
* ``inflate``: each image inflated whole, once, in one piece (the floor of any streaming design);
* ``seek index``: an ``indexed_gzip`` index built once per image (one full inflate), exported, and
  imported by each slab read, which then inflates only from the checkpoint before its planes
  (only when ``indexed_gzip`` is installed; it is not a dependency);
* ``stream``: :func:`oefray.io.slabs.iter_brain_voxels`, every image read once in z order, with
  zlib and with ISA-L, without and with read-ahead threads.

Ends with ``gzip_reads lazy=<s> stream=<s> plain_lazy=<s>`` (``stream``: the design preprocess
uses, with one read-ahead thread, ISA-L when installed). Read-ahead only pays off when the caller
works on each slab meanwhile (preprocess fits it); here it shows what parallel inflating of a
slab's images gives.

    python benchmarks/gzip_reads.py [--preset full] [--slab 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _timed(name: str, fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    best = statistics.median(runs)
    print(f"{name:44s} {best:7.3f} s   runs: {', '.join(f'{x:.2f}' for x in runs)}", flush=True)
    return best


def _images(sub) -> list[str]:
    return [sub.mask, *sub.echoes, sub.chi, *sub.truth.values()]


def _seek_index(sub, bounds) -> Callable[[], None] | None:
    """Build an indexed_gzip index per image once, then read each slab through it."""
    try:
        import indexed_gzip as igz
        import nibabel as nib
    except ImportError:
        return None

    def run() -> None:
        indexes, layout = {}, {}
        for path in _images(sub):
            proxy = nib.load(path).dataobj
            plane = proxy.shape[0] * proxy.shape[1] * proxy.dtype.itemsize
            layout[path] = (proxy.offset, plane, proxy.dtype)
            with igz.IndexedGzipFile(path) as fh:
                fh.build_full_index()
                buf = io.BytesIO()
                fh.export_index(fileobj=buf)
                indexes[path] = buf.getvalue()
        for z0, z1 in bounds:  # what each slab task would do with the index handed to it
            for path in _images(sub):
                offset, plane, dtype = layout[path]
                with igz.IndexedGzipFile(path) as fh:
                    fh.import_index(fileobj=io.BytesIO(indexes[path]))
                    fh.seek(offset + z0 * plane)
                    np.frombuffer(fh.read((z1 - z0) * plane), dtype).astype(np.float32)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="full")
    ap.add_argument("--slab", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from oefray.config import PAPER_SUBJECTS, SimulationConfig
    from oefray.io import bids, scans, slabs
    from oefray.orchestration.simulate import simulate_cohort

    work = Path(tempfile.mkdtemp(prefix="oefray-gzbench-"))
    try:
        config = SimulationConfig(preset=args.preset, subjects=PAPER_SUBJECTS[:1], seed=1)
        subs = {}
        for fmt, suffix in (("gzip", ".nii.gz"), ("plain", ".nii")):
            simulate_cohort(work / fmt, config, suffix=suffix)
            subs[fmt] = scans.scan_subject(work / fmt, PAPER_SUBJECTS[0])
        sub = subs["gzip"]
        bounds = slabs.slab_bounds(0, sub.depth, args.slab)
        size = sum(Path(p).stat().st_size for p in _images(subs["plain"]))
        print(f"{len(_images(sub))} images, {size / 1e6:.0f} MB inflated, {len(bounds)} slabs")
        r = args.repeats

        def lazy(s):
            return lambda: [bids.read_brain_voxels(s, a, b) for a, b in bounds]

        def inflate_whole(opener):
            def run() -> None:
                for path in _images(sub):
                    with opener(path, "rb") as fh:
                        while fh.read(1 << 22):
                            pass

            return run

        def stream(**kw):
            return lambda: [v.z0 for v in slabs.iter_brain_voxels(sub, bounds, **kw)]

        times = {"plain_lazy": _timed("plain .nii, lazy per slab", lazy(subs["plain"]), r)}
        # nibabel reads .gz through indexed_gzip whenever it is importable
        igz = importlib.util.find_spec("indexed_gzip") is not None
        how = "nibabel with indexed_gzip" if igz else "nibabel with zlib"
        times["lazy"] = _timed(f".nii.gz, lazy per slab (before; {how})", lazy(sub), r)
        _timed(".nii.gz, inflate each image once, zlib", inflate_whole(gzip.open), r)
        seek = _seek_index(sub, bounds)
        if seek is not None:
            _timed(".nii.gz, indexed_gzip index once + seeks", seek, r)
        fast = slabs._gzip
        try:
            slabs._gzip = gzip  # the standard library's zlib
            _timed(".nii.gz, stream, zlib", stream(read_ahead=False), r)
        finally:
            slabs._gzip = fast
        if slabs.INFLATER == "isal":
            _timed(".nii.gz, inflate each image once, ISA-L", inflate_whole(fast.open), r)
            _timed(".nii.gz, stream, ISA-L", stream(read_ahead=False), r)
        for threads in (1, 2):
            times[f"stream{threads}"] = _timed(
                f".nii.gz, stream, {slabs.INFLATER}, read-ahead {threads} thread(s)",
                stream(threads=threads),
                r,
            )
        times["stream"] = times["stream1"]
        print(
            f"gzip_reads lazy={times['lazy']:.3f} stream={times['stream']:.3f} "
            f"plain_lazy={times['plain_lazy']:.3f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
