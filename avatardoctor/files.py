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
