"""The recorded backend: replays a machine description (`avatardoctor.machine/1` JSON)."""

from __future__ import annotations

import json
from pathlib import Path

from avatardoctor.errors import InputError
from avatardoctor.files import FileTooLarge, read_limited
from avatardoctor.machine.model import Machine, MachineFormatError, machine_from_dict

MAX_FILE_BYTES = 16 * 2**20  # a 64-GPU box with hundreds of processes is well under 1 MiB


class RecordedBackend:
    """Serves one fixed snapshot: a recorded file or a catalogue machine."""

    def __init__(self, machine: Machine):
        self.machine = machine

    def snapshot(self) -> Machine:
        return self.machine


def read_machine_file(path: Path, flag: str = "--machine") -> Machine:
    where = f"{flag} {path}"
    try:
        text = read_limited(path, MAX_FILE_BYTES).decode("utf-8")
    except FileTooLarge:
        raise InputError(
            f"{where}: {path.stat().st_size:,} bytes is too large for a machine description (limit 16 MiB)"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text; pass a file written by 'avatardoctor machine record'") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    try:
        return machine_from_dict(obj, source=f"recorded:{path}")
    except MachineFormatError as e:
        raise InputError(f"{where}: {e}") from None
