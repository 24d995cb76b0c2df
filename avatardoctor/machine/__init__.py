"""GPU and host facts behind one interface, so every check runs on machines without GPUs.

A backend has one method, `snapshot() -> Machine`. NvmlBackend reads the live machine; RecordedBackend
replays a recorded file or a catalogue box. Only avatardoctor.machine.nvml imports pynvml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from avatardoctor.errors import InputError
from avatardoctor.machine.model import Machine


class GpuBackend(Protocol):
    def snapshot(self) -> Machine: ...


def backend_for(machine: str | None = None, demo: bool = False) -> GpuBackend:
    """--machine FILE.json|FILE.toml|COUNTxMODEL, --demo, or (neither) the live NVML backend."""
    from avatardoctor.machine import catalogue, recorded

    if demo and machine:
        raise InputError("--demo and --machine both name a machine; pass one of them")
    if demo:
        return recorded.RecordedBackend(catalogue.catalogue_machine(catalogue.DEMO_SPEC))
    if machine is None:
        from avatardoctor.machine.nvml import NvmlBackend

        return NvmlBackend()
    path = Path(machine)
    if path.suffix == ".toml":  # a box described, not recorded (docs/machines.md, "Your own cards")
        return recorded.RecordedBackend(catalogue.spec_file_machine(path))
    if path.exists():
        return recorded.RecordedBackend(recorded.read_machine_file(path))
    if catalogue.looks_like_spec(machine):
        return recorded.RecordedBackend(catalogue.catalogue_machine(machine))
    raise InputError(
        f"--machine: {machine!r} is neither a file nor a COUNTxMODEL spec such as 5x4090 "
        "(see 'avatardoctor machine list')"
    )
