"""Writing the user's files: never over something they had unless asked, never half-written."""

from __future__ import annotations

import os
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
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(limit)
    return data
