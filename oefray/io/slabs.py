"""Streaming slab reads: every z plane of a scan's images read once, in z order.

:func:`oefray.io.bids.read_brain_voxels` reads one slab lazily from ``img.dataobj``, which is free
random access for a plain ``.nii`` but not for a ``.nii.gz``: gzip cannot seek, so each slab read
decompresses the file from its start, and a scan cut into S slabs is decompressed about S/2
times. :class:`PlaneReader` keeps one image open and reads its planes forward only, so each
compressed byte is inflated once; :func:`iter_brain_voxels` does that for every image of a
subject and yields the brain voxels of one slab at a time, the same arrays
:func:`~oefray.io.bids.read_brain_voxels` returns for that slab, with at most two slabs in memory
(the one handed out and the next, read ahead in a background thread while the caller works on
the first; inflating releases the GIL).

The fastest available inflater is used: ISA-L (the ``isal`` package, about 1.7x zlib's speed
here) when it is installed, else the standard library's zlib (:data:`INFLATER` says which). Each
open gzip stream holds fixed buffers besides the planes it returns (ISA-L reads 512 KiB of input
at a time): about 0.6 MB per image, whatever the size of the scan.
"""

from __future__ import annotations

import gzip
import io
import types
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.filebasedimages import ImageFileError

from oefray.errors import DatasetError
from oefray.io.bids import MASK_THRESHOLD, BrainVoxels, ScanFiles, label_values

_gzip: types.ModuleType
try:  # ISA-L's inflate: the same bytes, faster than zlib's
    from isal import igzip as _gzip

    INFLATER = "isal"
except ImportError:  # pragma: no cover - isal is a dependency; the fallback is the stdlib's
    _gzip = gzip
    INFLATER = "zlib"

#: What a broken file raises while it is read (gzip's BadGzipFile is an OSError).
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


def _corrupt(path: str | Path, exc: BaseException | str) -> DatasetError:
    return DatasetError(path, f"cannot read image data, file corrupt or truncated ({exc})")


class PlaneReader:
    """One NIfTI image, open, whose z planes are read in increasing z (each byte once).

    Parameters
    ----------
    path : path
        A 3-D (or X x Y x Z x 1) ``.nii`` or ``.nii.gz`` image; ``.gz`` is inflated as a stream.
    volume : int, optional
        Read volume ``volume`` of a 4-D image (the echoes of a 4-D MEGRE). Volumes lie one after
        the other on disk, so a ``.gz`` stream inflates (and drops) the volumes before it once.

    Notes
    -----
    Planes come out as :func:`oefray.io.bids.read_slab` gives them: scaled by
    ``scl_slope``/``scl_inter`` with nibabel's own rules (an :class:`~nibabel.arrayproxy.
    ArrayProxy` over the raw bytes) and cast to float32, so the values are bit-identical. Reading
    backwards is allowed but, for a ``.gz``, inflates from the start again.
    """

    def __init__(self, path: str | Path, volume: int | None = None) -> None:
        self.path = str(path)
        try:
            img = nib.load(self.path)
        except (ImageFileError, *_READ_ERRORS) as exc:
            raise DatasetError(self.path, f"cannot read NIfTI header ({exc})") from None
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise DatasetError(self.path, "not a NIfTI-1/2 image")
        proxy = img.dataobj
        if not isinstance(proxy, ArrayProxy) or len(proxy.shape) not in (3, 4):
            raise DatasetError(self.path, f"expected a 3-D NIfTI volume, got {img.shape}")
        n_volumes = proxy.shape[3] if len(proxy.shape) == 4 else 1
        if volume is None and n_volumes != 1:
            raise DatasetError(self.path, f"expected a 3-D volume, got shape {proxy.shape}")
        if volume is not None and not 0 <= volume < n_volumes:
            raise DatasetError(self.path, f"has {n_volumes} volume(s), not a volume {volume}")
        if proxy.order != "F":  # NIfTI is Fortran order: a z plane is contiguous on disk
            raise DatasetError(self.path, f"unexpected data order {proxy.order!r}")
        self.shape: tuple[int, int, int] = tuple(int(n) for n in proxy.shape[:3])  # type: ignore[assignment]
        self._dtype = np.dtype(proxy.dtype)
        volume_bytes = int(np.prod(self.shape)) * self._dtype.itemsize
        self._offset = int(proxy.offset) + (volume or 0) * volume_bytes
        self._scaling = (proxy.slope, proxy.inter)
        self._plane = self.shape[0] * self.shape[1] * self._dtype.itemsize
        self._fh: IO[bytes] | None = None
        self._pos = 0  # byte position of the open stream

    def _stream(self) -> IO[bytes]:
        if self._fh is None:
            try:
                if self.path.endswith(".gz"):
                    self._fh = _gzip.open(self.path, "rb")
                else:
                    self._fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except OSError as exc:
                raise _corrupt(self.path, exc) from None
            self._pos = 0
        return self._fh

    def read(self, z0: int, z1: int) -> np.ndarray:
        """Planes ``z0:z1`` as a float32 array of shape (X, Y, z1-z0).

        Raises
        ------
        DatasetError
            If the file is corrupt or ends early (naming the file).
        """
        if not 0 <= z0 < z1 <= self.shape[2]:
            raise ValueError(f"planes {z0}:{z1} outside 0:{self.shape[2]}")
        start, size = self._offset + z0 * self._plane, (z1 - z0) * self._plane
        try:
            fh = self._stream()
            if self._pos != start:  # forward: skip (gzip inflates what it skips)
                fh.seek(start)
            raw = fh.read(size)
        except _READ_ERRORS as exc:
            self.close()
            raise _corrupt(self.path, exc) from None
        if len(raw) != size:
            self.close()
            raise _corrupt(self.path, f"{len(raw)} of {size} bytes for planes {z0}:{z1}")
        self._pos = start + size
        slope, inter = self._scaling
        spec = ((*self.shape[:2], z1 - z0), self._dtype, 0, slope, inter)
        planes = ArrayProxy(io.BytesIO(raw), spec, mmap=False, order="F")
        return np.asarray(planes[:, :, :], dtype=np.float32)

    def close(self) -> None:
        """Close the stream (a later :meth:`read` reopens it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> PlaneReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_compressed(subject: ScanFiles) -> bool:
    """Whether any image of the subject is gzipped (its slabs are best read as one stream)."""
    paths = [
        *subject.echoes,
        subject.chi,
        subject.mask,
        *subject.truth.values(),
        *subject.labels.values(),
    ]
    return any(str(p).endswith(".gz") for p in paths)


def slab_bounds(z0: int, z1: int, slab: int) -> list[tuple[int, int]]:
    """The slabs ``(a, b)`` of at most ``slab`` planes that cut ``z0:z1``, in z order."""
    if slab < 1:
        raise ValueError(f"slab must be >= 1, got {slab}")
    return [(a, min(a + slab, z1)) for a in range(z0, z1, slab)]


class _SubjectReader:
    """The open :class:`PlaneReader` of every image of one subject."""

    def __init__(self, subject: ScanFiles) -> None:
        self.subject = subject
        self.readers: list[PlaneReader] = []
        try:
            self.mask = self._open(subject.mask)
            self.echoes = [self._open(p, subject.volume(k)) for k, p in enumerate(subject.echoes)]
            self.chi = self._open(subject.chi)
            self.truth = {name: self._open(p) for name, p in subject.truth.items()}
            self.labels = {name: self._open(p) for name, p in subject.labels.items()}
        except BaseException:
            self.close()
            raise

    def _open(self, path: str, volume: int | None = None) -> PlaneReader:
        reader = PlaneReader(path, volume)
        if reader.shape != self.subject.shape:
            raise DatasetError(path, f"shape {reader.shape} differs from {self.subject.shape}")
        self.readers.append(reader)
        return reader

    def start(self, z0: int, z1: int, pool: ThreadPoolExecutor | None) -> _PendingSlab:
        """Read the mask of slab ``z0:z1`` here, and start reading its other images in ``pool``
        (here too without one); :meth:`_PendingSlab.result` gathers them, or raises what went
        wrong, so that the slab before this one is still handed out first."""
        try:
            mask = self.mask.read(z0, z1) >= MASK_THRESHOLD
        except DatasetError as exc:
            return _PendingSlab(z0, z1, np.zeros((0, 0, 0), bool), [_Done(exc)], self)
        images = [*self.echoes, self.chi, *self.truth.values(), *self.labels.values()]
        if not mask.any():  # nothing to gather: a later read skips these planes
            empty = np.empty(0, dtype=np.float32)
            return _PendingSlab(z0, z1, mask, [_Done(empty) for _ in images], self)
        if pool is None:
            return _PendingSlab(
                z0, z1, mask, [_Done(_gather(r, z0, z1, mask)) for r in images], self
            )
        jobs = [pool.submit(_gather, r, z0, z1, mask) for r in images]
        return _PendingSlab(z0, z1, mask, jobs, self)

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


def _gather(reader: PlaneReader, z0: int, z1: int, mask: np.ndarray) -> np.ndarray:
    return reader.read(z0, z1)[mask]


class _Done:
    """A finished read (the no-thread case, or a failed mask), shaped like a
    :class:`~concurrent.futures.Future`."""

    def __init__(self, value: np.ndarray | DatasetError) -> None:
        self._value = value

    def result(self) -> np.ndarray:
        if isinstance(self._value, DatasetError):
            raise self._value
        return self._value


class _PendingSlab:
    """The reads of one slab's images, started; :meth:`result` waits for them."""

    def __init__(
        self,
        z0: int,
        z1: int,
        mask: np.ndarray,
        jobs: list[Future[np.ndarray]] | list[_Done],
        scan: _SubjectReader,
    ) -> None:
        self.z0, self.z1, self.mask, self.jobs, self.scan = z0, z1, mask, jobs, scan

    def result(self) -> BrainVoxels:
        values = [job.result() for job in self.jobs]  # the first error raises, naming its file
        n_echoes = len(self.scan.echoes)
        labels = n_echoes + 1 + len(self.scan.truth)
        signal = np.empty((int(self.mask.sum()), n_echoes), dtype=np.float32)
        for k in range(n_echoes):
            signal[:, k] = values[k]
        return BrainVoxels(
            z0=self.z0,
            z1=self.z1,
            mask=self.mask,
            signal=signal,
            chi=values[n_echoes],
            truth=dict(zip(self.scan.truth, values[n_echoes + 1 : labels], strict=True)),
            labels={
                k: label_values(v) for k, v in zip(self.scan.labels, values[labels:], strict=True)
            },
        )

    def cancel(self) -> None:
        """Wait for reads nobody will use (the caller stopped early), ignoring their errors."""
        for job in self.jobs:
            _quietly(job)


def iter_brain_voxels(
    subject: ScanFiles,
    bounds: Sequence[tuple[int, int]],
    *,
    read_ahead: bool = True,
    threads: int = 1,
) -> Iterator[BrainVoxels]:
    """The brain voxels of each slab of ``bounds``, every image of the subject read once.

    Parameters
    ----------
    subject : ScanFiles
        The scan (its images may be gzipped or plain, in any mix; echoes 3-D files or one 4-D).
    bounds : sequence of (int, int)
        Slabs ``(z0, z1)`` in increasing z, not overlapping (e.g. :func:`slab_bounds`).
    read_ahead : bool
        Start reading the next slab, in background threads, before yielding this one, so that
        inflating overlaps the caller's work on it (at most two slabs in memory). With False,
        one slab at a time, all in the calling thread.
    threads : int
        Background threads of the read-ahead; the images of a slab are independent streams, so
        up to one per image inflate at once.

    Yields
    ------
    BrainVoxels
        One per slab, equal to ``read_brain_voxels(subject, z0, z1)``.

    Raises
    ------
    DatasetError
        When an image is corrupt or truncated (naming it), at the first slab that reaches the
        damage; slabs before it have been yielded.
    ValueError
        If ``bounds`` are not increasing or leave the volume, or ``threads < 1``.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    last = 0
    for z0, z1 in bounds:
        if not last <= z0 < z1 <= subject.depth:
            raise ValueError(f"slabs must be increasing within 0:{subject.depth}, got {bounds}")
        last = z1
    if not bounds:
        return
    scan = _SubjectReader(subject)
    pool = None
    if read_ahead:
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="slab-read")
    pending: _PendingSlab | None = None
    try:
        for i, (z0, z1) in enumerate(bounds):
            current = pending if pending is not None else scan.start(z0, z1, pool)
            pending = current  # until it is read: what a stop waits for
            voxels = current.result()
            pending = scan.start(*bounds[i + 1], pool) if i + 1 < len(bounds) else None
            yield voxels
            del voxels
    finally:
        if pending is not None:
            pending.cancel()
        if pool is not None:
            pool.shutdown(wait=True)
        scan.close()


def _quietly(future: Future[Any] | _Done) -> None:
    """Wait for a read nobody will use (the caller stopped early), ignoring its error."""
    try:
        future.result()
    except Exception:  # noqa: BLE001 - the caller has stopped; an error here has no reader
        pass
