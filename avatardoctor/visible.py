"""Which GPUs the ranks will get: CUDA_VISIBLE_DEVICES applied to the machine's GPUs as CUDA does.

CUDA reads the list left to right and stops at the first entry it cannot resolve: every entry
after a bad index or a repeated GPU is silently dropped. Entries are ordinals or (prefixes of)
GPU UUIDs; MIG instances are not usable by Live Avatar's one-process-per-GPU launch.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatardoctor.machine.model import Gpu


@dataclass(frozen=True)
class Visible:
    raw: str | None  # the variable's value, None when unset
    gpus: tuple[Gpu, ...]  # in CUDA ordinal order: rank r uses gpus[r] under torchrun
    problem: str | None = None  # the entry at which CUDA stops, and why
    dropped: tuple[str, ...] = ()  # entries ignored because of it


def _resolve(entry: str, gpus: tuple[Gpu, ...]) -> Gpu | str:
    """The GPU an entry names, or why it names none."""
    if entry.isdigit():
        index = int(entry)
        return gpus[index] if index < len(gpus) else f"there is no GPU {index} ({len(gpus)} found)"
    if entry.startswith("MIG-"):
        return "a MIG instance; Live Avatar needs whole GPUs"
    if entry.startswith("GPU-"):
        matches = [g for g in gpus if g.uuid.startswith(entry)]
        if len(matches) == 1:
            return matches[0]
        return "matches no GPU's UUID" if not matches else "matches several GPUs' UUIDs"
    return "neither a GPU index nor a GPU UUID"


def visible_gpus(raw: str | None, gpus: tuple[Gpu, ...]) -> Visible:
    if raw is None:
        return Visible(None, gpus)
    entries = [e.strip() for e in raw.split(",")] if raw.strip() else []
    chosen: list[Gpu] = []
    for i, entry in enumerate(entries):
        found = _resolve(entry, gpus)
        if isinstance(found, Gpu) and found in chosen:
            found = f"GPU {found.index} is listed twice"
        if not isinstance(found, Gpu):
            return Visible(raw, tuple(chosen), f"entry {entry!r}: {found}", tuple(entries[i + 1 :]))
        chosen.append(found)
    return Visible(raw, tuple(chosen))
