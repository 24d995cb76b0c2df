"""A run folder, as `avatardoctor run` writes it (docs/run-folder.md), read with bounds and
forgiveness: whatever is missing, damaged or of the wrong type becomes a note, never a traceback.
The folder's layout is the runner's (avatardoctor.runner.folder.RunFolder): one description of it.

    plan.json               avatardoctor.plan/1: configuration and the predicted peaks
    debug_info.json         avatardoctor.debug/1: outcome, failure class, remedy, durations, clips
    logs/gpu_memory.csv     time, elapsed_s, gpu, uuid, memory_used_mib, memory_total_mib, utilization_pct
    logs/phases.csv         phase, start_s, end_s (seconds since the first sample)

Only regular files inside the folder are read (a link out of it, a FIFO or a device is a note).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from avatardoctor.files import UnreadableFile, read_regular
from avatardoctor.reports.timeline import MAX_MIB, MAX_SECONDS, Timeline, gpu_id, label
from avatardoctor.runner.folder import RunFolder

JSON_LIMIT = 64 * 2**20
MEMORY_CSV_LIMIT = 256 * 2**20  # 5 GPUs at 10 Hz for 2 hours is ~30 MB
PHASES_CSV_LIMIT = 16 * 2**20  # a run has a few dozen phases
MAX_PHASES = 1000  # more bands than a plot can show
TEXT_COLUMNS = ("time", "gpu", "uuid", "phase")  # the others are numbers where readable (not a string per cell)
READ_COLUMNS = (*TEXT_COLUMNS, "elapsed_s", "memory_used_mib", "memory_total_mib", "start_s", "end_s")
CONFIG_KEYS = (
    "mode",
    "nproc",
    "size",
    "infer_frames",
    "num_clip",
    "sample_steps",
    "fp8",
    "offload_model",
    "offload_kv_cache",
    "t5_cpu",
    "dit_fsdp",
    "t5_fsdp",
    "num_gpus_dit",
)
FAILURE_TEXT = ("class", "phase", "message", "remedy")
FAILURE_NUMBERS = ("tried_to_allocate_mib", "at_elapsed_s")
MAX_TEXT_CHARS = 4000  # a failure message or prompt longer than this is cut
MAX_ARGS = 200  # a launch command's words kept (upstream's scripts pass about 40)
MAX_PREDICTION_NOTES = 8  # the plan's prediction notes shown in the report
MAX_NUMBER = 2.0**50  # sizes, seconds and counts in a run's JSON: larger is a damaged value


@dataclass(frozen=True)
class PredictedGpu:
    peak_gib: float | None
    usable_gib: float | None
    phase: str | None


@dataclass
class RunPlan:
    config: dict[str, str | int | float | bool] = field(default_factory=dict)  # CONFIG_KEYS present, scalars
    prompt: str | None = None
    predicted: dict[str, PredictedGpu] = field(default_factory=dict)  # gpu -> the plan's prediction


@dataclass
class RunDebug:
    outcome: str | None = None
    failure: dict | None = None  # class, gpu, phase, message, remedy (str); tried_to_allocate_mib, at_elapsed_s
    durations: dict[str, float] = field(default_factory=dict)  # total_s, ... (seconds)
    clips_done: int | None = None
    gpu_names: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # what was launched, as argv


@dataclass
class RunRecord:
    """What a run folder says, as read."""

    path: Path
    timeline: Timeline
    plan: RunPlan = field(default_factory=RunPlan)
    debug: RunDebug = field(default_factory=RunDebug)
    phases: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["phase", "start_s", "end_s"]))
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> dict[str, PredictedGpu]:
        return self.plan.predicted


class _Fields:
    """Typed reads from one JSON object; a field of the wrong type is a note and reads as None."""

    def __init__(self, doc: dict, where: str, notes: list[str]):
        self.doc, self.where, self.notes = doc, where, notes

    def _wrong(self, key: str, value, expected: str) -> None:
        self.notes.append(f"{self.where}: {key} is {type(value).__name__}, not {expected}: shown without it")

    def text(self, key: str) -> str | None:
        value = self.doc.get(key)
        if value is None or isinstance(value, str):
            return value if value is None or len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "…"
        return self._wrong(key, value, "text")

    def number(self, key: str) -> float | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or abs(value) > MAX_NUMBER
        ):
            return self._wrong(key, value, "a number")
        return float(value)

    def count(self, key: str) -> int | None:
        value = self.doc.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31):
            return value
        return self._wrong(key, value, "a count")

    def object(self, key: str) -> _Fields:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, dict):
            self._wrong(key, value, "an object")
        return _Fields(value if isinstance(value, dict) else {}, f"{self.where} {key}", self.notes)

    def items(self, key: str) -> list:
        value = self.doc.get(key)
        if value is not None and not isinstance(value, list):
            self._wrong(key, value, "a list")
        return value if isinstance(value, list) else []


def _json(path: Path, root: Path, notes: list[str]) -> _Fields:
    if not path.exists() and not path.is_symlink():
        notes.append(f"no {path.name}: shown without it")
        return _Fields({}, path.name, notes)
    try:
        doc = json.loads(read_regular(path, JSON_LIMIT, within=root).decode("utf-8", errors="replace"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return _Fields(doc, path.name, notes)
    except (UnreadableFile, ValueError, RecursionError) as e:
        notes.append(f"{path.name} could not be read ({str(e)[:80]}): shown without it")
        return _Fields({}, path.name, notes)


def read_plan(fields: _Fields) -> RunPlan:
    config, given = {}, fields.object("config").doc
    for key in CONFIG_KEYS:
        value = given.get(key)
        if isinstance(value, (str, int, float, bool)) and not (isinstance(value, float) and not math.isfinite(value)):
            config[key] = label(value) if isinstance(value, str) else value
    argv = [a for a in fields.items("argv") if isinstance(a, str)]
    prompt = next((a for flag, a in zip(argv, argv[1:]) if flag == "--prompt"), None)
    predicted = {}
    prediction = fields.object("prediction")
    said = [n for n in prediction.items("notes") if isinstance(n, str)][:MAX_PREDICTION_NOTES]  # the demo's caveat
    fields.notes.extend(n if len(n) <= MAX_TEXT_CHARS else n[:MAX_TEXT_CHARS] + "…" for n in said)
    for entry in prediction.items("gpus"):
        gpu = gpu_id(entry.get("index")) if isinstance(entry, dict) else None
        if gpu is not None:
            g = _Fields(entry, f"{fields.where} prediction GPU {gpu}", fields.notes)
            predicted[gpu] = PredictedGpu(g.number("peak_gib"), g.number("usable_gib"), g.text("phase"))
    return RunPlan(
        config, prompt if prompt is None or len(prompt) <= MAX_TEXT_CHARS else prompt[:MAX_TEXT_CHARS] + "…", predicted
    )


def read_debug(fields: _Fields) -> RunDebug:
    f = fields.object("failure")
    failure = {
        k: v
        for k, v in {
            **{k: f.text(k) for k in FAILURE_TEXT},
            "gpu": gpu_id(f.doc.get("gpu")),
            **{k: f.number(k) for k in FAILURE_NUMBERS},
        }.items()
        if v is not None
    }
    durations = fields.object("durations")
    seconds = {k: durations.number(k) for k in durations.doc if isinstance(k, str)}
    names = fields.object("gpu_names").doc
    return RunDebug(
        outcome=fields.text("outcome"),
        failure=failure or None,
        durations={k: v for k, v in seconds.items() if v is not None},
        clips_done=fields.count("clips_done"),
        gpu_names={gpu_id(g): label(n) for g, n in names.items() if gpu_id(g) is not None and isinstance(n, str)},
        command=[a[:MAX_TEXT_CHARS] for a in fields.items("command")[:MAX_ARGS] if isinstance(a, str)],
    )


def _csv(path: Path, root: Path, limit: int, columns: list[str], notes: list[str]) -> pd.DataFrame | None:
    """The CSV's cells as text (empty where missing), or None with a note."""
    if not path.exists() and not path.is_symlink():
        notes.append(f"no {path.as_posix()}: shown without it")
        return None
    try:
        data = read_regular(path, limit, within=root)
        if data.strip() and not data.endswith((b"\n", b"\r")):  # the run was killed mid-write: "12" of "12345"
            notes.append(f"last line of {path.name} is cut off (no line end): skipped")
            data = data[: data.rfind(b"\n") + 1]
        frame = pd.read_csv(
            io.BytesIO(data),
            on_bad_lines="skip",
            encoding_errors="replace",
            skipinitialspace=True,
            usecols=lambda c: c in READ_COLUMNS,
            dtype={c: str for c in TEXT_COLUMNS},
            keep_default_na=False,
        )
    except UnreadableFile as e:
        notes.append(f"{path.name} could not be read ({e})")
        return None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        notes.append(f"{path.name} could not be read ({str(e)[:80]})")
        return None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        notes.append(f"{path.name} has no {', '.join(missing)} column: shown without it")
        return None
    return frame


def _numbers(column: pd.Series, low: float, high: float) -> pd.Series:
    """Numbers in [low, high]; NaN for anything else (text, inf, damaged values)."""
    values = pd.to_numeric(column, errors="coerce").astype("float64")
    return values.where((values >= low) & (values <= high))


def read_memory_csv(path: Path, root: Path | None = None) -> Timeline:
    """logs/gpu_memory.csv; links are followed only within root (default: the file's own folder)."""
    notes: list[str] = []
    frame = _csv(path, root or path.parent, MEMORY_CSV_LIMIT, ["elapsed_s", "gpu", "memory_used_mib"], notes)
    if frame is None:
        return Timeline.empty(notes)
    gpu = frame["gpu"].map(gpu_id)
    total = frame["memory_total_mib"] if "memory_total_mib" in frame else pd.Series("", index=frame.index)
    samples = pd.DataFrame(
        {
            "elapsed_s": _numbers(frame["elapsed_s"], -MAX_SECONDS, MAX_SECONDS),
            "gpu": gpu,
            "used_mib": _numbers(frame["memory_used_mib"], 0, MAX_MIB),
            "total_mib": _numbers(total, 0, MAX_MIB),
        }
    )
    bad = samples["elapsed_s"].isna() | samples["used_mib"].isna() | samples["gpu"].isna()
    if bad.any():
        notes.append(
            f"{int(bad.sum())} unreadable sample(s) in {path.name} skipped (time, GPU index or memory not readable)"
        )
        samples, frame = samples[~bad], frame[~bad]
    backwards = (samples.groupby("gpu")["elapsed_s"].diff() < 0).sum()
    if backwards:
        notes.append(f"{int(backwards)} sample(s) in {path.name} go back in time: drawn in time order")
    names = {}
    if "uuid" in frame.columns:
        names = {g: label(u) for g, u in frame.assign(gpu=samples["gpu"]).groupby("gpu")["uuid"].first().items()}
    samples = samples.sort_values(["gpu", "elapsed_s"], kind="stable").reset_index(drop=True)
    start = None
    if "time" in frame.columns and len(frame):
        start = pd.to_datetime(frame["time"].iloc[0], errors="coerce", utc=True)
        start = None if pd.isna(start) else start.to_pydatetime()
    return Timeline(samples, names, start, notes)


def read_phases(path: Path, root: Path, notes: list[str]) -> pd.DataFrame:
    phases = _csv(path, root, PHASES_CSV_LIMIT, ["phase", "start_s", "end_s"], notes)
    if phases is None:
        return pd.DataFrame(columns=["phase", "start_s", "end_s"])
    phases = pd.DataFrame(
        {
            "phase": phases["phase"].map(label),
            "start_s": _numbers(phases["start_s"], -MAX_SECONDS, MAX_SECONDS),
            "end_s": _numbers(phases["end_s"], -MAX_SECONDS, MAX_SECONDS),
        }
    ).dropna(subset=["start_s", "end_s"])
    if len(phases) > MAX_PHASES:
        notes.append(f"{len(phases)} phases in {path.name}: the first {MAX_PHASES} shown")
        phases = phases.head(MAX_PHASES)
    return phases.reset_index(drop=True)


def read_run_folder(path: Path) -> RunRecord:
    notes: list[str] = []
    layout = RunFolder(path)
    timeline = read_memory_csv(layout.gpu_memory_csv, path)
    plan = read_plan(_json(layout.plan_json, path, notes))
    debug = read_debug(_json(layout.debug_json, path, notes))
    phases = read_phases(layout.phases_csv, path, notes)
    for gpu, name in debug.gpu_names.items():
        timeline.gpu_names.setdefault(gpu, name)
    return RunRecord(path, timeline, plan, debug, phases, notes + timeline.notes)
