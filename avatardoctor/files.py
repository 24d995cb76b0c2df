"""The user's files, written and read safely: never written over unless asked, never half-written; read
only when regular and within a bound (a FIFO is refused without waiting for a writer, /dev/zero
unread, a huge file refused before it is read), which is how every untrusted file is read here."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

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


class UnreadableFile(Exception):
    """A file a reader does not read; str() is the reason, e.g. 'not a regular file'."""


class FileTooBig(UnreadableFile):
    """A regular file over the reader's limit, left unread."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"{size / 2**20:.1f} MiB, over the {limit / 2**20:g} MiB limit")
        self.size, self.limit = size, limit


class FileTooLarge(Exception):
    """read_limited's refusal of a file over its limit; it was not read beyond it."""


def inside(path: Path, folder: Path) -> bool:
    """Whether path, its links resolved, lies in folder (its links resolved too)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _open_regular_fd(path: Path) -> tuple[int, os.stat_result]:
    """The open descriptor (-1 where path is no regular file, closed then), and what it is. O_NONBLOCK: opening a
    FIFO must not wait for a writer; nothing is read here. OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # only regular files are read: a FIFO or a device may never end
        os.close(fd)
        return -1, info
    return fd, info


def open_regular(path: Path, limit: int, within: Path | None = None) -> tuple[BinaryIO, int]:
    """(the open file, its size) if path is a regular file of at most limit bytes, inside `within` when
    given; else UnreadableFile saying why (FileTooBig for one over the limit)."""
    if within is not None and not inside(path, within):
        raise UnreadableFile(f"a link out of {within.name or within}: not followed")
    try:
        fd, info = _open_regular_fd(path)
    except OSError as e:
        raise UnreadableFile(e.strerror or str(e)) from None
    if fd < 0:
        raise UnreadableFile("not a regular file")
    if info.st_size > limit:
        os.close(fd)
        raise FileTooBig(info.st_size, limit)
    return os.fdopen(fd, "rb"), info.st_size


def read_regular(path: Path, limit: int, within: Path | None = None) -> bytes:
    """A regular file's bytes, at most limit of them even if it grows while read (open_regular's errors)."""
    f, _ = open_regular(path, limit, within)
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"grew over the {limit / 2**20:g} MiB limit while read")
    return data


def read_limited(path: Path, limit: int) -> bytes:
    """A small file's bytes, reading at most limit + 1 of them: a huge file is refused unread.
    OSError (with the system's reason) for a file that cannot be read; FileTooLarge for one over the limit."""
    fd, info = _open_regular_fd(path)
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if fd < 0:
        raise OSError(errno.EINVAL, "not a regular file (a FIFO or a device?)", str(path))
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(limit)
    return data


class UnreadableJson(Exception):
    """Why a JSON file could not be read, in words that follow its name: "not valid JSON (line 3, column 1: ...)"."""


def read_json(path: Path, limit: int, what: str) -> Any:
    """A JSON document read within a bound, for the caller to check field by field. UnreadableJson says why not:
    cannot be read, a directory, over the limit (then it is not `what`, "a plan"), not UTF-8, not JSON (with the
    line and column), nested too deeply for the parser."""
    try:
        data = read_limited(path, limit)
    except IsADirectoryError:
        raise UnreadableJson("a directory where a file should be") from None
    except FileTooLarge:
        raise UnreadableJson(f"over {limit / 2**20:g} MiB, not {what}") from None
    except OSError as err:
        raise UnreadableJson(f"cannot read ({err.strerror})") from None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnreadableJson("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise UnreadableJson(f"not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise UnreadableJson("JSON nested too deeply") from None


def read_tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes of a regular file (a log that may have grown to gigabytes); OSError otherwise."""
    fd, info = _open_regular_fd(path)
    if fd < 0:
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with os.fdopen(fd, "rb") as f:
        f.seek(max(0, info.st_size - limit))
        return f.read(limit)


def read_buffered(path: Path, limit: int) -> bytes:
    """What a record device such as /dev/kmsg holds now, without waiting for more: one record per read() until it
    says there is nothing more (EAGAIN), at most limit bytes; a regular file is read to its end, as far. OSError
    when it cannot be opened (/dev/kmsg under dmesg_restrict: EPERM)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks, size = [], 0
    try:
        while size < limit:
            try:
                chunk = os.read(fd, 8192)  # a kmsg record is at most 8 KiB (the kernel's CONSOLE_EXT_LOG_MAX)
            except BlockingIOError:  # nothing more buffered
                break
            except BrokenPipeError:  # kmsg: records were overwritten while read; the next read goes on
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)[:limit]


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
