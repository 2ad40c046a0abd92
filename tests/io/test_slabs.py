"""Streaming slab reads (oefray/io/slabs.py): the same arrays as the lazy per-slab read, every
image read once, memory bounded by the slab, corrupt files named."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import DatasetError
from oefray.io import bids, scans, slabs

TE = (0.0045, 0.0095, 0.0145, 0.0195)


def _write(root: Path, shape=(9, 7, 11), *, suffix=".nii.gz", seed=0, truth=True) -> bids.ScanFiles:
    """A small subject with a ragged brain mask (some planes empty) and ground truth."""
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.1, 1.2, size=(*shape, len(TE))).astype(np.float32)
    chi = rng.normal(0, 0.05, size=shape).astype(np.float32)
    mask = rng.uniform(size=shape) < 0.6
    mask[:, :, :2] = False  # planes with no brain at the start ...
    mask[:, :, -1] = False  # ... and at the end
    maps = {k: rng.uniform(0.5, 1.5, size=shape).astype(np.float32) for k in bids.TRUTH_DESC}
    bids.write_dataset_description(root, "t")
    bids.write_subject(
        root, "A1", np.eye(4), mag, TE, chi, mask, maps if truth else None, suffix=suffix
    )
    return scans.scan_subject(root, "A1")


def _assert_same(got: bids.BrainVoxels, want: bids.BrainVoxels) -> None:
    assert (got.z0, got.z1) == (want.z0, want.z1)
    np.testing.assert_array_equal(got.mask, want.mask)
    for a, b in ((got.signal, want.signal), (got.chi, want.chi)):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert got.truth.keys() == want.truth.keys()
    for name in want.truth:
        np.testing.assert_array_equal(got.truth[name], want.truth[name])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("slab", [1, 4, 11, 40])  # one plane, ragged, the depth, more than it
@pytest.mark.parametrize(
    ("read_ahead", "threads"), [(False, 1), (True, 1), (True, 3)], ids=["here", "ahead", "3thr"]
)
def test_stream_equals_lazy_reads(tmp_path, suffix, slab, read_ahead, threads):
    sub = _write(tmp_path, suffix=suffix)
    bounds = slabs.slab_bounds(0, sub.depth, slab)
    got = list(slabs.iter_brain_voxels(sub, bounds, read_ahead=read_ahead, threads=threads))
    assert [(v.z0, v.z1) for v in got] == bounds
    for voxels, (z0, z1) in zip(got, bounds, strict=True):
        _assert_same(voxels, bids.read_brain_voxels(sub, z0, z1))


def test_integer_storage_with_scaling_and_4d_images(tmp_path):
    """Another tool's files: int16 with scl_slope/scl_inter, big-endian, X x Y x Z x 1; the
    stream scales them with nibabel's rules, bit for bit."""
    sub = _write(tmp_path, shape=(6, 5, 8))
    for path in sub.echoes[:2]:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        slope, inter = float(data.max()) / 30000, 0.01
        raw = np.round((data - inter) / slope).astype(">i2")[..., None]  # 4-D, one volume
        new = nib.Nifti1Image(raw, img.affine)
        new.header.set_slope_inter(slope, inter)
        nib.save(new, path)
    sub = scans.scan_subject(tmp_path, "A1")
    bounds = slabs.slab_bounds(0, sub.depth, 3)
    for voxels, (z0, z1) in zip(slabs.iter_brain_voxels(sub, bounds), bounds, strict=True):
        _assert_same(voxels, bids.read_brain_voxels(sub, z0, z1))


def test_mixed_formats_and_a_part_of_the_depth(tmp_path):
    sub = _write(tmp_path)
    plain = Path(sub.echoes[1]).with_suffix("")  # .nii.gz -> .nii
    plain.write_bytes(gzip.decompress(Path(sub.echoes[1]).read_bytes()))
    Path(sub.echoes[1]).unlink()
    sub = scans.scan_subject(tmp_path, "A1")
    assert slabs.is_compressed(sub) and not sub.echoes[1].endswith(".gz")
    bounds = [(3, 5), (6, 9)]  # a gap, and slabs that do not start at 0
    for voxels, (z0, z1) in zip(slabs.iter_brain_voxels(sub, bounds), bounds, strict=True):
        _assert_same(voxels, bids.read_brain_voxels(sub, z0, z1))


def test_is_compressed(tmp_path):
    assert slabs.is_compressed(_write(tmp_path / "gz"))
    assert not slabs.is_compressed(_write(tmp_path / "plain", suffix=".nii"))


def test_plane_reader_reads_forward_and_back(tmp_path):
    sub = _write(tmp_path)
    want = np.asarray(nib.load(sub.chi).dataobj, dtype=np.float32)
    with slabs.PlaneReader(sub.chi) as reader:
        np.testing.assert_array_equal(reader.read(2, 4), want[:, :, 2:4])
        np.testing.assert_array_equal(reader.read(7, 9), want[:, :, 7:9])  # skips 4:7
        np.testing.assert_array_equal(reader.read(0, 1), want[:, :, 0:1])  # back: reopens
        with pytest.raises(ValueError, match="outside"):
            reader.read(5, 12)


@pytest.mark.parametrize("read_ahead", [False, True])
def test_truncated_file_is_named_after_the_good_slabs(tmp_path, read_ahead):
    sub = _write(tmp_path, shape=(30, 30, 12))
    bad = Path(sub.echoes[2])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    bounds = slabs.slab_bounds(0, sub.depth, 2)
    got = []
    with pytest.raises(DatasetError, match="corrupt or truncated") as err:
        for voxels in slabs.iter_brain_voxels(sub, bounds, read_ahead=read_ahead):
            got.append((voxels.z0, voxels.z1))
    assert bad.name in str(err.value)
    assert 1 <= len(got) < len(bounds) and got == bounds[: len(got)]


def test_bad_bounds_are_refused(tmp_path):
    sub = _write(tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        list(slabs.iter_brain_voxels(sub, [(4, 6), (2, 3)]))
    with pytest.raises(ValueError, match="increasing"):
        list(slabs.iter_brain_voxels(sub, [(0, sub.depth + 1)]))
    with pytest.raises(ValueError, match="threads"):
        list(slabs.iter_brain_voxels(sub, [(0, 1)], threads=0))
    with pytest.raises(ValueError, match="slab"):
        slabs.slab_bounds(0, 5, 0)
    assert list(slabs.iter_brain_voxels(sub, [])) == []


def test_a_stream_stopped_early_closes_its_files(tmp_path):
    sub = _write(tmp_path)
    stream = slabs.iter_brain_voxels(sub, slabs.slab_bounds(0, sub.depth, 2))
    next(stream)
    stream.close()  # the read-ahead of the next slab is waited for, every file closed
    assert stream.gi_frame is None


def _peak_streaming(sub: bids.ScanFiles, slab: int, read_ahead: bool) -> int:
    """Peak Python-traced memory (numpy arrays, the bytes read and inflated: tracemalloc) while
    ``sub`` streams by slabs, each slab dropped once counted."""
    bounds = slabs.slab_bounds(0, sub.depth, slab)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        n = 0
        for voxels in slabs.iter_brain_voxels(sub, bounds, read_ahead=read_ahead):
            n += len(voxels.signal)
            del voxels
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == sub.n_brain
    return peak - base


#: Buffers of one open gzip stream, whatever the image: ISA-L reads 512 KiB of input at a time.
STREAM_BUFFERS = 1 << 20


@pytest.mark.parametrize("read_ahead", [False, True])
def test_memory_is_bounded_by_the_slab_not_the_scan(tmp_path, read_ahead):
    """Streaming a gzipped scan by slabs of 3 planes holds at most 4 slabs' worth of every
    image's planes (the slab handed out, the one read ahead, and each one's raw bytes and float32
    copy on their way) plus fixed buffers per open stream; and a scan 4x as deep (96 planes, its
    images 8 MB in all) peaks no higher than one of 24 planes, but for one slab's worth."""
    peaks, slab_bytes = {}, 0
    for depth in (24, 96):
        shape = (48, 40, depth)
        sub = _write(tmp_path / str(depth), shape=shape, truth=True)
        images = len(sub.echoes) + 2 + len(sub.truth)  # echoes, chi, mask, truth
        slab_bytes = images * shape[0] * shape[1] * 3 * 4  # float32 planes of one slab
        peaks[depth] = _peak_streaming(sub, 3, read_ahead)
        assert peaks[depth] < 4 * slab_bytes + images * STREAM_BUFFERS, (peaks, slab_bytes)
    assert peaks[96] < peaks[24] + slab_bytes, (peaks, slab_bytes)


def test_the_standard_library_inflater_gives_the_same(tmp_path, monkeypatch):
    """Without ISA-L (``isal`` missing) the stream inflates with zlib: the same arrays."""
    sub = _write(tmp_path)
    bounds = slabs.slab_bounds(0, sub.depth, 4)
    fast = list(slabs.iter_brain_voxels(sub, bounds))
    monkeypatch.setattr(slabs, "_gzip", gzip)
    for got, want in zip(slabs.iter_brain_voxels(sub, bounds), fast, strict=True):
        _assert_same(got, want)
