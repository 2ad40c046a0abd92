"""The shared atomic text writer."""

from __future__ import annotations

import pytest

from oefray.io.files import write_text_atomic


def test_writes_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "results.json"
    assert write_text_atomic(path, "one") == path
    write_text_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomic(path, "old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "half \udcff")  # a lone surrogate cannot be encoded
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_folder_never_replaces_a_file(tmp_path):
    from oefray.io.files import atomic_folder

    target = tmp_path / "precious.txt"
    target.write_text("mine")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        with atomic_folder(target, replace=True) as partial:
            (partial / "x").write_text("new")
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]  # no partial left
