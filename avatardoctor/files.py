"""Writing the user's files: never over something they had unless asked, never half-written."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from avatardoctor.errors import InputError


def write_new_file(path: Path, text: str, flag: str, force: bool = False) -> None:
    """Write text to path atomically; refuse to replace an existing file unless force."""
    if path.exists() and not force:
        raise InputError(f"{flag} {path}: the file exists; pass --force to overwrite it or choose another name")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{flag} {path}: cannot write ({err.strerror})") from None


class FileTooLarge(Exception):
    """A file over the limit its reader allows; it was not read beyond it."""


def read_limited(path: Path, limit: int) -> bytes:
    """A small file's bytes, reading at most limit + 1 of them: a huge file is refused unread.
    OSError for a file that cannot be read; FileTooLarge for one over the limit."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):  # only regular files are read: a FIFO or a device may never end
            raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device?)", str(path))
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(limit)
    return data


SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular_file(path: Path | str) -> str | None:
    """What path is when it is there but not a regular file ("a FIFO (named pipe)"...), seen without
    opening it: opening a FIFO blocks until a writer comes, a device may never end. None for a regular
    file (through symlinks) and for a path that cannot be looked at (the open will say why)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return next(
        (what for is_kind, what in SPECIAL_FILES if is_kind(mode)), None if stat.S_ISREG(mode) else "not a regular file"
    )
