"""What logs/gpu_health.csv says happened to the GPUs' health during a run, as events the report lists: a
throttle episode (from the first row that shows a slowdown to the last), an uncorrected ECC count that rose, a
memory repair that became pending, and each Xid NVML reported (docs/run-folder.md)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from avatardoctor.files import UnreadableFile, open_regular
from avatardoctor.machine.model import xid_meaning
from avatardoctor.runner.classify import MAX_HEALTH_CSV

MAX_REASONS = 120  # the five throttle reasons NVML names, with room; a longer field is cut
MAX_DIGITS = 12  # a count or an Xid code; a longer run of digits is damage, not a number
MAX_EVENTS = 200  # a GPU throttling on and off for hours is many episodes: the first ones say enough


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class _Gpu:
    """One GPU's state as the rows go by: the episode under way and the last counts seen."""

    def __init__(self) -> None:
        self.throttle: tuple[float, float, str] | None = None  # (from, to, reasons)
        self.ecc: int | None = None
        self.pending = False


def health_events(path: Path, root: Path, notes: list[str]) -> list[dict]:
    """Events in time order ({gpu, at_s, kind, text}); none without the file (a CPU run, an older folder)."""
    try:
        f, _ = open_regular(path, MAX_HEALTH_CSV, within=root)
    except UnreadableFile as err:
        if path.exists() or path.is_symlink():
            notes.append(f"{path.name}: {err}; no health events shown")
        return []
    events: list[dict] = []
    gpus: dict[str, _Gpu] = {}
    bad = 0

    def episode_ended(gpu: str, state: _Gpu) -> None:
        if state.throttle is not None:
            start, end, reasons = state.throttle
            events.append(
                {
                    "gpu": gpu,
                    "at_s": round(start, 1),
                    "kind": "throttle",
                    "text": f"GPU {gpu}: clocks held down ({reasons}) from {_clock(start)} to {_clock(end)}",
                }
            )
            state.throttle = None

    with io.TextIOWrapper(f, errors="replace", newline="") as text:
        rows = csv.DictReader(text)
        try:
            for row in rows:
                try:
                    gpu, at = str(int(row["gpu"])), float(row["elapsed_s"])
                    if not math.isfinite(at):
                        raise ValueError(at)
                except (TypeError, ValueError, KeyError):
                    bad += 1
                    continue
                state = gpus.setdefault(gpu, _Gpu())
                reasons = row.get("throttle") or ""
                if reasons and reasons != "none":
                    start = state.throttle[0] if state.throttle else at
                    state.throttle = (start, at, reasons[:MAX_REASONS].replace(";", ", "))
                else:
                    episode_ended(gpu, state)
                ecc = row.get("ecc_volatile_uncorrected") or ""
                if ecc.isdigit() and len(ecc) <= MAX_DIGITS:
                    if state.ecc is not None and int(ecc) > state.ecc:
                        events.append(
                            {
                                "gpu": gpu,
                                "at_s": round(at, 1),
                                "kind": "ecc",
                                "text": f"GPU {gpu}: uncorrected ECC errors rose from {state.ecc} to {ecc} at {_clock(at)}",
                            }
                        )
                    state.ecc = int(ecc)
                pending = row.get("repair_pending") == "1"
                if pending and not state.pending:
                    events.append(
                        {
                            "gpu": gpu,
                            "at_s": round(at, 1),
                            "kind": "repair",
                            "text": f"GPU {gpu}: a memory repair became pending at {_clock(at)} (it needs a GPU reset)",
                        }
                    )
                state.pending = pending
                for code in filter(None, (row.get("xid") or "").split(";")):
                    if code.isdigit() and len(code) <= MAX_DIGITS:
                        events.append(
                            {
                                "gpu": gpu,
                                "at_s": round(at, 1),
                                "kind": "xid",
                                "text": f"GPU {gpu}: {xid_meaning(int(code)).replace('-i N', f'-i {gpu}')} at {_clock(at)}",
                            }
                        )
        except csv.Error as err:  # a field over the csv module's limit: what came before it still counts
            notes.append(f"{path.name}: stopped reading at line {rows.line_num} ({err})")
    for gpu, state in gpus.items():
        episode_ended(gpu, state)
    if bad:
        notes.append(f"{path.name}: {bad} unreadable row(s) skipped")
    events.sort(key=lambda e: e["at_s"])
    if len(events) > MAX_EVENTS:
        notes.append(f"{path.name}: {len(events)} health events; the first {MAX_EVENTS} shown")
    return events[:MAX_EVENTS]
