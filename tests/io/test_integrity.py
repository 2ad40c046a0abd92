"""Per-file checksums (oefray.io.integrity) and folder locks (oefray.io.locks), checked against
hashlib and against a second process holding the lock."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import pytest

from oefray.errors import FeaturesError, OefrayError
from oefray.io import integrity, locks


@pytest.fixture(autouse=True)
def _fresh_memory():
    integrity.forget_verified()
    yield
    integrity.forget_verified()


def _folder(tmp_path, contents: dict[str, bytes]):
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    return {name: integrity.file_record(tmp_path / name) for name in contents}


def test_file_record_is_hashlib_sha256_and_size(tmp_path):
    data = bytes(range(256)) * 5000  # > one read chunk
    (tmp_path / "f").write_bytes(data)
    assert integrity.file_record(tmp_path / "f") == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "part-a.parquet").write_bytes(b"xbcdef"), "does not match its checksum"),
        (
            lambda d: (d / "part-a.parquet").write_bytes(b"abc"),
            "is 3 bytes, the manifest records 6",
        ),
        (lambda d: (d / "part-a.parquet").unlink(), "is missing"),
        (lambda d: (d / "part-c.parquet").write_bytes(b"new"), "is not recorded in the manifest"),
    ],
    ids=["same-size-edit", "truncated", "missing", "unrecorded"],
)
def test_a_damaged_folder_is_one_line_naming_the_file(tmp_path, damage, message):
    records = _folder(tmp_path, {"part-a.parquet": b"abcdef", "part-b.parquet": b"xyz"})
    assert integrity.verify_files(tmp_path, records, pattern="part-*.parquet") == [
        tmp_path / "part-a.parquet",
        tmp_path / "part-b.parquet",
    ]
    integrity.forget_verified()
    damage(tmp_path)
    with pytest.raises(FeaturesError, match=message) as info:
        integrity.verify_files(tmp_path, records, pattern="part-*.parquet")
    assert str(tmp_path / "part-") in str(info.value) and "\n" not in str(info.value)


def test_a_file_is_hashed_once_per_process_until_it_changes(tmp_path, monkeypatch):
    records = _folder(tmp_path, {"part-a.parquet": b"abcdef"})
    calls = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        integrity.verify_files(tmp_path, records, pattern="part-*.parquet")
    assert len(calls) == 1
    # the same size, another content, a new modification time: hashed again, and refused
    (tmp_path / "part-a.parquet").write_bytes(b"abcdeX")
    with pytest.raises(FeaturesError, match="does not match"):
        integrity.verify_files(tmp_path, records, pattern="part-*.parquet")
    assert len(calls) == 2
    # cached=False hashes every time
    (tmp_path / "part-a.parquet").write_bytes(b"abcdef")
    integrity.verify_files(tmp_path, records, pattern="part-*.parquet", cached=False)
    integrity.verify_files(tmp_path, records, pattern="part-*.parquet", cached=False)
    assert len(calls) == 4


_HOLD = textwrap.dedent(
    """
    import sys, time
    from oefray.io import locks
    with locks.{how}(sys.argv[1]{extra}):
        print("held", flush=True)
        time.sleep(60)
    """
)


def _holder(tmp_path, how: str):
    extra = ', "preprocess"' if how == "writing" else ""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(how=how, extra=extra), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_reader_is_refused_while_another_process_writes_and_names_it(tmp_path):
    proc = _holder(tmp_path, "writing")
    try:
        with pytest.raises(OefrayError, match=rf"oefray preprocess \(pid {proc.pid}\) is writing"):
            with locks.reading(tmp_path):
                pass
        with pytest.raises(OefrayError, match="another oefray preprocess .* is writing"):
            with locks.writing(tmp_path, "simulate"):
                pass
    finally:
        proc.kill()
        proc.wait()
    with locks.reading(tmp_path), locks.reading(tmp_path):  # the kernel let go of the lock
        pass
    with locks.writing(tmp_path, "preprocess"):
        assert (tmp_path / locks.LOCK_FILE).read_text().startswith("oefray preprocess (pid")


def test_a_writer_is_refused_while_another_process_reads(tmp_path):
    with locks.writing(tmp_path, "preprocess"):
        pass  # makes the lock file, as every writer does
    proc = _holder(tmp_path, "reading")
    try:
        with locks.reading(tmp_path):  # readers share
            pass
        with pytest.raises(OefrayError, match="being read or written by another oefray command"):
            with locks.writing(tmp_path, "preprocess"):
                pass
    finally:
        proc.kill()
        proc.wait()


def test_a_reader_never_creates_the_lock_file(tmp_path):
    with locks.reading(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []
