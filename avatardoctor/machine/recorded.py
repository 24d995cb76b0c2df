"""The recorded backend: replays a machine description (`avatardoctor.machine/1` JSON)."""

from __future__ import annotations

from pathlib import Path

from avatardoctor.errors import InputError
from avatardoctor.files import UnreadableJson, read_json
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
        obj = read_json(path, MAX_FILE_BYTES, "a machine description")
    except UnreadableJson as err:
        raise InputError(f"{where}: {err}; pass a file written by 'avatardoctor machine record'") from None
    try:
        return machine_from_dict(obj, source=f"recorded:{path}")
    except MachineFormatError as e:
        raise InputError(f"{where}: {e}") from None
