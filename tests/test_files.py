"""Writing the user's files: no clobbering unless asked, never a half-written file."""

from __future__ import annotations

import os

import pytest

from avatardoctor.errors import InputError
from avatardoctor.files import write_new_file


def test_writes_a_new_file(tmp_path):
    write_new_file(tmp_path / "m.json", "{}\n", "-o")
    assert (tmp_path / "m.json").read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary left behind


def test_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("the user's")
    with pytest.raises(InputError, match="exists; pass --force"):
        write_new_file(target, "new", "-o")
    assert target.read_text() == "the user's"
    write_new_file(target, "new", "-o", force=True)
    assert target.read_text() == "new"


def test_unwritable_place_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="cannot write"):
        write_new_file(tmp_path / "no-such-dir" / "m.json", "{}", "-o")


def test_read_limited_refuses_a_large_file_without_reading_it(tmp_path):
    from avatardoctor.files import FileTooLarge, read_limited

    small = tmp_path / "small.json"
    small.write_bytes(b"{}")
    assert read_limited(small, 2) == b"{}"
    with pytest.raises(FileTooLarge):
        read_limited(small, 1)
    with pytest.raises(OSError):
        read_limited(tmp_path / "missing.json", 10)


def test_read_limited_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    """`ckpt verify --manifest fifo` (and every other bounded read) waited forever for a writer."""
    from test_ckpt_hashing import writer_releasing_any_reader

    from avatardoctor.files import read_limited

    fifo = tmp_path / "manifest.sha256"
    os.mkfifo(fifo)
    with writer_releasing_any_reader(fifo), pytest.raises(OSError, match="not a regular file"):
        read_limited(fifo, 10)
