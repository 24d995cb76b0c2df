"""A run folder, as `avatardoctor run` writes it (docs/run-folder.md), read with bounds and
forgiveness: whatever is missing or damaged becomes a note, never a traceback.

    plan.json               avatardoctor.plan/1: configuration and the predicted peaks
    debug_info.json         avatardoctor.debug/1: outcome, failure class, remedy, durations, clips
    logs/gpu_memory.csv     time, elapsed_s, gpu, uuid, memory_used_mib, memory_total_mib, utilization_pct
    logs/phases.csv         phase, start_s, end_s (seconds since the first sample)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from avatardoctor.reports.timeline import Timeline

JSON_LIMIT = 64 * 2**20
MEMORY_CSV = Path("logs") / "gpu_memory.csv"
PHASES_CSV = Path("logs") / "phases.csv"


@dataclass
class RunFolder:
    path: Path
    timeline: Timeline
    plan: dict = field(default_factory=dict)
    debug: dict = field(default_factory=dict)
    phases: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["phase", "start_s", "end_s"]))
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> dict[str, dict]:
        """gpu -> the plan's prediction for it (peak_gib, usable_gib, ...)."""
        gpus = (self.plan.get("prediction") or {}).get("gpus") or []
        return {str(g["index"]): g for g in gpus if isinstance(g, dict) and "index" in g}


def _json(path: Path, notes: list[str]) -> dict:
    if not path.exists():
        notes.append(f"no {path.name}: shown without it")
        return {}
    try:
        if path.stat().st_size > JSON_LIMIT:
            raise ValueError("over 64 MiB")
        doc = json.loads(path.read_bytes().decode("utf-8", errors="replace"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except (OSError, ValueError, RecursionError) as e:
        notes.append(f"{path.name} could not be read ({str(e)[:80]}): shown without it")
        return {}


def _csv(path: Path, columns: list[str], notes: list[str]) -> pd.DataFrame | None:
    if not path.exists():
        notes.append(f"no {path.as_posix()}: shown without it")
        return None
    try:
        frame = pd.read_csv(path, on_bad_lines="skip", encoding_errors="replace", skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError, UnicodeDecodeError) as e:
        notes.append(f"{path.name} could not be read ({str(e)[:80]})")
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        notes.append(f"{path.name} has no {', '.join(missing)} column: shown without it")
        return None
    return frame


def read_memory_csv(path: Path) -> Timeline:
    notes: list[str] = []
    frame = _csv(path, ["elapsed_s", "gpu", "memory_used_mib"], notes)
    if frame is None:
        return Timeline.empty(notes)
    samples = pd.DataFrame(
        {
            "elapsed_s": pd.to_numeric(frame["elapsed_s"], errors="coerce"),
            "gpu": frame["gpu"].astype(str).str.strip(),
            "used_mib": pd.to_numeric(frame["memory_used_mib"], errors="coerce"),
            "total_mib": pd.to_numeric(frame.get("memory_total_mib", pd.Series(float("nan"), index=frame.index)), errors="coerce"),
        }
    )
    bad = samples["elapsed_s"].isna() | samples["used_mib"].isna()
    if bad.any():
        notes.append(f"{int(bad.sum())} unreadable sample(s) in {path.name} skipped")
        samples = samples[~bad]
    backwards = (samples.groupby("gpu")["elapsed_s"].diff() < 0).sum()
    if backwards:
        notes.append(f"{int(backwards)} sample(s) in {path.name} go back in time: drawn in time order")
    samples = samples.sort_values(["gpu", "elapsed_s"], kind="stable").reset_index(drop=True)
    names = {}
    if "uuid" in frame.columns:
        names = frame.assign(gpu=frame["gpu"].astype(str).str.strip()).groupby("gpu")["uuid"].first().astype(str).to_dict()
    start = None
    if "time" in frame.columns and len(frame):
        start = pd.to_datetime(frame["time"].iloc[0], errors="coerce", utc=True)
        start = None if pd.isna(start) else start.to_pydatetime()
    return Timeline(samples, names, start, notes)


def read_run_folder(path: Path) -> RunFolder:
    notes: list[str] = []
    timeline = read_memory_csv(path / MEMORY_CSV)
    plan = _json(path / "plan.json", notes)
    debug = _json(path / "debug_info.json", notes)
    phases = _csv(path / PHASES_CSV, ["phase", "start_s", "end_s"], notes)
    if phases is not None:
        phases = phases.assign(start_s=pd.to_numeric(phases["start_s"], errors="coerce"), end_s=pd.to_numeric(phases["end_s"], errors="coerce"))
        phases = phases.dropna(subset=["start_s", "end_s"])
    else:
        phases = pd.DataFrame(columns=["phase", "start_s", "end_s"])
    for gpu, name in (debug.get("gpu_names") or {}).items():
        timeline.gpu_names.setdefault(str(gpu), str(name))
    return RunFolder(path, timeline, plan, debug, phases, notes + timeline.notes)
