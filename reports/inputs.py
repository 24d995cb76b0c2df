"""Opening the files a report reads: regular files only, of bounded size, and (in a run folder) never
through a link that leads out of it. A FIFO is refused without waiting for a writer; /dev/zero unread."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


class UnreadableFile(Exception):
    """A file the report does not read; str() is the reason, e.g. 'not a regular file'."""


class FileTooBig(UnreadableFile):
    """A regular file over the reader's limit, left unread."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB limit")
        self.size = size


def inside(path: Path, folder: Path) -> bool:
    """Whether path, its links resolved, lies in folder (its links resolved too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def open_regular(path: Path, limit: int, within: Path | None = None) -> tuple[BinaryIO, int]:
    """(the open file, its size) if path is a regular file of at most limit bytes, inside `within` when given."""
    if within is not None and not inside(path, within):
        raise UnreadableFile(f"a link out of {within.name or within}: not followed")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    except OSError as e:
        raise UnreadableFile(e.strerror or str(e)) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnreadableFile("not a regular file")
    if info.st_size > limit:
        os.close(fd)
        raise FileTooBig(info.st_size, limit)
    return os.fdopen(fd, "rb"), info.st_size


def read_regular(path: Path, limit: int, within: Path | None = None) -> bytes:
    """A regular file's bytes, at most limit of them even if it grows while read."""
    f, _ = open_regular(path, limit, within)
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"grew over the {limit / 2**20:g} MiB limit while read")
    return data
