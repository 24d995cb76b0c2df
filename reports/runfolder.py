"""A run folder, as `avatardoctor run` writes it (docs/run-folder.md), read with bounds and
forgiveness: whatever is missing, damaged or of the wrong type becomes a note, never a traceback.
The folder's layout is the runner's (avatardoctor.runner.folder.RunFolder): one description of it.

    plan.json               avatardoctor.plan/1: configuration and the predicted peaks
    debug_info.json         avatardoctor.debug/1: outcome, failure class, remedy, durations, clips
    logs/gpu_memory.csv     time, elapsed_s, gpu, uuid, memory_used_mib, memory_total_mib, utilization_pct
    logs/phases.csv         phase, start_s, end_s (seconds since the first sample)
    logs/requests.csv       request, start_s, end_s, outcome (each generation the entry served)
    logs/rank_clips.csv     rank, clip, start_s, end_s (each rank's clips, where the log's lines name ranks)

Only regular files inside the folder are read (a link out of it, a FIFO or a device is a note).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from avatardoctor.files import UnreadableFile, open_regular, read_regular
from avatardoctor.reports.timeline import MAX_MIB, MAX_SECONDS, Timeline, gpu_id, label
from avatardoctor.runner.folder import RunFolder

JSON_LIMIT = 64 * 2**20
MEMORY_CSV_LIMIT = 256 * 2**20  # 5 GPUs at 10 Hz for 2 hours is ~30 MB
CSV_CHUNK_ROWS = 2**16  # rows parsed at a time: beyond its numbers, a CSV costs the text of one chunk
CSV_READ_BYTES = 2**20  # read from the file at a time (at most)
PHASES_CSV_LIMIT = 16 * 2**20  # a run has a few dozen phases
MAX_PHASES = 1000  # more bands than a plot can show
MAX_REQUESTS = 10000  # a Gradio session of days; past this the trend is no news
MAX_RANK_CLIP_ROWS = 100_000  # every rank's clips of one generation (logparse.MAX_RANK_CLIPS a rank)
REQUEST_OUTCOMES = ("done", "failed", "open")
TEXT_COLUMNS = (
    "time",
    "gpu",
    "uuid",
    "phase",
    "outcome",
)  # the others are numbers where readable (not a string per cell)
# gpu: a handful of different cells, so pandas' categories give each row's code without a string per row
CELL_DTYPES = {c: "category" if c == "gpu" else str for c in TEXT_COLUMNS}
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
    requests: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["start_s", "end_s", "outcome"]))
    rank_clips: pd.DataFrame | None = None  # None: the run folder has no logs/rank_clips.csv (older runs)
    notes: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> dict[str, PredictedGpu]:
        return self.plan.predicted


class _Fields:
    """Typed reads from one JSON object; a field of the wrong type is a note and reads as None."""

    def __init__(self, doc: dict, where: str, notes: list[str]):
        self.doc, self.where, self.notes = doc, where, notes

    def _wrong(self, key: str, value: object, expected: str) -> None:
        """Note a field of the wrong type; the caller reads it as None."""
        self.notes.append(f"{self.where}: {key} is {type(value).__name__}, not {expected}: shown without it")

    def text(self, key: str) -> str | None:
        value = self.doc.get(key)
        if value is None or isinstance(value, str):
            return value if value is None or len(value) <= MAX_TEXT_CHARS else value[:MAX_TEXT_CHARS] + "…"
        self._wrong(key, value, "text")
        return None

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
            self._wrong(key, value, "a number")
            return None
        return float(value)

    def count(self, key: str) -> int | None:
        value = self.doc.get(key)
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31):
            return value
        self._wrong(key, value, "a count")
        return None

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
        gpu_names={gid: label(n) for g, n in names.items() if (gid := gpu_id(g)) is not None and isinstance(n, str)},
        command=[a[:MAX_TEXT_CHARS] for a in fields.items("command")[:MAX_ARGS] if isinstance(a, str)],
    )


class _WholeLines(io.RawIOBase):
    """A CSV file as pandas is given it: at most `limit` bytes even if it grows while read, and without
    a last line that has no line end (the run was killed mid-write: "12" of "12345"); `cut` says so."""

    def __init__(self, f: BinaryIO, limit: int):
        self.f, self.limit, self.left = f, limit, limit
        self.ready, self.at, self.held = b"", 0, b""  # bytes to pass on (from `at`); bytes after the last line end
        self.content, self.cut, self.done = False, False, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self.at == len(self.ready) and not self.done:
            self._fill(len(buffer))
        n = min(len(buffer), len(self.ready) - self.at)
        buffer[:n] = self.ready[self.at : self.at + n]
        self.at += n
        return n

    def _fill(self, size: int) -> None:
        data = self.f.read(min(size, CSV_READ_BYTES))
        if len(data) > self.left:
            raise UnreadableFile(f"grew over the {self.limit / 2**20:g} MiB limit while read")
        self.left -= len(data)
        self.at = 0
        if data:
            data = self.held + data
            end = data.rfind(b"\n") + 1
            self.ready, self.held = data[:end], data[end:]
            self.content = self.content or bool(self.ready.strip())
            return
        # The end: what follows the last line end is a cut line, unless it ends in \r or the file is all blank.
        self.done = True
        passed = self.held.endswith(b"\r") or not (self.content or self.held.strip())
        self.ready, self.cut = (self.held, False) if passed else (b"", bool(self.held))


def _csv(
    path: Path,
    root: Path,
    limit: int,
    columns: list[str],
    notes: list[str],
    typed: Callable,
    read: Collection[str] = READ_COLUMNS,
    rows: int | None = None,
) -> list | None:
    """The CSV's cells in `read` (text cells as text, empty where missing; the first `rows` rows, or all)
    CSV_CHUNK_ROWS rows at a time, each chunk turned by `typed` into what the caller keeps (numbers, not a
    string per cell); None with a note when unreadable."""
    if not path.exists() and not path.is_symlink():
        notes.append(f"no {path.as_posix()}: shown without it")
        return None
    try:
        f, _ = open_regular(path, limit, within=root)
        with f, _WholeLines(f, limit) as lines:
            chunks = pd.read_csv(
                lines,
                on_bad_lines="skip",
                encoding_errors="replace",
                skipinitialspace=True,
                usecols=lambda c: c in read,
                dtype=CELL_DTYPES,
                keep_default_na=False,
                chunksize=CSV_CHUNK_ROWS,
                nrows=rows,
            )
            kept, missing = [], []
            for chunk in chunks:
                missing = [c for c in columns if c not in chunk.columns]
                if missing:
                    while lines.read(CSV_READ_BYTES):  # on to the end: is its last line cut?
                        pass
                    break
                kept.append(typed(chunk))
        if lines.cut:
            notes.append(f"last line of {path.name} is cut off (no line end): skipped")
        if missing:
            notes.append(f"{path.name} has no {', '.join(missing)} column: shown without it")
            return None
    except UnreadableFile as e:
        notes.append(f"{path.name} could not be read ({e})")
        return None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        notes.append(f"{path.name} could not be read ({str(e)[:80]})")
        return None
    return kept


def _numbers(column: pd.Series, low: float, high: float) -> pd.Series:
    """Numbers in [low, high]; NaN for anything else (text, inf, damaged values)."""
    values = pd.to_numeric(column, errors="coerce").astype("float64")
    return values.where((values >= low) & (values <= high))


class _MemorySamples:
    """logs/gpu_memory.csv read a chunk at a time: each chunk's readable samples as typed arrays (GPU
    ids as codes into `ids`), and what the report takes from the text: the first time, each GPU's first
    uuid (looked for only while some GPU has none), and where the first readable sample is."""

    def __init__(self) -> None:
        self.ids: list[str] = []  # GPU ids as reports name them ("0", "cpu": gpu_id)
        self.codes: dict[str, int] = {}
        self.uuids: dict[int, str] = {}
        self.rows = 0
        self.first_good_row: int | None = None  # its time is read afterwards: a string per row costs 15% of a parse
        self.unreadable = 0

    def typed(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        gpu = self._gpu_codes(frame["gpu"])
        total = frame["memory_total_mib"] if "memory_total_mib" in frame else pd.Series("", index=frame.index)
        columns = {
            "elapsed_s": _numbers(frame["elapsed_s"], -MAX_SECONDS, MAX_SECONDS).to_numpy(),
            "gpu": gpu,
            "used_mib": _numbers(frame["memory_used_mib"], 0, MAX_MIB).to_numpy(),
            "total_mib": _numbers(total, 0, MAX_MIB).to_numpy(),
        }
        good = ~np.isnan(columns["elapsed_s"]) & ~np.isnan(columns["used_mib"]) & (gpu >= 0)
        self.unreadable += int((~good).sum())
        if "uuid" in frame.columns and len(self.uuids) < len(self.ids):  # some GPU still without a name
            for code, uuid in frame["uuid"][good].groupby(gpu[good]).first().items():
                self.uuids.setdefault(code, uuid)
        if self.first_good_row is None and good.any():
            self.first_good_row = self.rows + int(np.argmax(good))
        self.rows += len(frame)
        return {name: values[good] for name, values in columns.items()}

    def _gpu_codes(self, cells: pd.Series) -> np.ndarray:
        """Each cell's code (a categorical column's), -1 where it names no GPU."""
        known = [self._code(gpu_id(category)) for category in cells.cat.categories]
        return np.array(known + [-1], dtype=np.int32)[cells.cat.codes.to_numpy()]  # a missing cell's -1: the last

    def _code(self, gpu: str | None) -> int:
        if gpu is None:
            return -1
        if gpu not in self.codes:
            self.codes[gpu] = len(self.ids)
            self.ids.append(gpu)
        return self.codes[gpu]


def read_memory_csv(path: Path, root: Path | None = None) -> Timeline:
    """logs/gpu_memory.csv; links are followed only within root (default: the file's own folder).
    Read CSV_CHUNK_ROWS rows at a time into typed arrays: memory follows the samples, not the text."""
    notes: list[str] = []
    read = _MemorySamples()
    required = ["elapsed_s", "gpu", "memory_used_mib"]
    numbers = set(READ_COLUMNS) - {"time"}
    chunks = _csv(path, root or path.parent, MEMORY_CSV_LIMIT, required, notes, read.typed, numbers)
    if chunks is None:
        return Timeline.empty(notes)
    if read.unreadable:
        notes.append(
            f"{read.unreadable} unreadable sample(s) in {path.name} skipped (time, GPU index or memory not readable)"
        )
    elapsed, gpu, used, total = (  # one column at a time, each chunk's part let go once joined
        np.concatenate([chunk.pop(column) for chunk in chunks])
        for column in ("elapsed_s", "gpu", "used_mib", "total_mib")
    )
    rank = np.argsort(np.argsort(np.array(read.ids, dtype=str))).astype(np.int32)[gpu]  # "10" before "2", as text
    order = np.argsort(rank, kind="stable")  # by GPU, then file order
    same_gpu = rank[order][1:] == rank[order][:-1]
    backwards = int((same_gpu & (np.diff(elapsed[order]) < 0)).sum())
    if backwards:
        notes.append(f"{backwards} sample(s) in {path.name} go back in time: drawn in time order")
        order = np.lexsort((elapsed, rank))  # by GPU, then time, then file order
    samples = pd.DataFrame(
        {
            "elapsed_s": elapsed[order],
            "gpu": pd.Series(np.array(read.ids, dtype=object)[gpu[order]], dtype="str"),
            "used_mib": used[order],
            "total_mib": total[order],
        }
    )
    names = dict(sorted((read.ids[code], label(uuid)) for code, uuid in read.uuids.items()))
    start = None
    if read.first_good_row is not None:  # the wall-clock time of the first readable sample, from the file's head
        last_times = _csv(  # each chunk's last time: the first readable sample's is the last one read
            path,
            root or path.parent,
            MEMORY_CSV_LIMIT,
            [],
            [],
            lambda frame: frame["time"].iloc[-1] if "time" in frame and len(frame) else None,
            ("time",),
            read.first_good_row + 1,
        )
        if last_times and last_times[-1] is not None:
            start = pd.to_datetime(last_times[-1], errors="coerce", utc=True)
    start = None if start is None or pd.isna(start) else start.to_pydatetime()
    return Timeline(samples, names, start, notes)


def read_phases(path: Path, root: Path, notes: list[str]) -> pd.DataFrame:
    chunks = _csv(path, root, PHASES_CSV_LIMIT, ["phase", "start_s", "end_s"], notes, lambda frame: frame)
    if chunks is None:
        return pd.DataFrame(columns=["phase", "start_s", "end_s"])
    phases = pd.concat(chunks)
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


def read_requests(path: Path, root: Path, notes: list[str]) -> pd.DataFrame:
    """logs/requests.csv in request order; absent (runs before it existed) is no requests, without a note."""
    if not path.exists() and not path.is_symlink():
        return pd.DataFrame(columns=["start_s", "end_s", "outcome"])
    chunks = _csv(path, root, PHASES_CSV_LIMIT, ["start_s", "end_s", "outcome"], notes, lambda frame: frame)
    if chunks is None:
        return pd.DataFrame(columns=["start_s", "end_s", "outcome"])
    requests = pd.concat(chunks)
    outcome = requests["outcome"].astype(str)
    requests = pd.DataFrame(
        {
            "start_s": _numbers(requests["start_s"], -MAX_SECONDS, MAX_SECONDS),
            "end_s": _numbers(requests["end_s"], -MAX_SECONDS, MAX_SECONDS),
            "outcome": outcome.where(outcome.isin(REQUEST_OUTCOMES)),
        }
    )
    bad = requests.isna().any(axis=1)
    if bad.any():
        notes.append(f"{int(bad.sum())} unreadable request(s) in {path.name} skipped")
    requests = requests[~bad].sort_values("start_s", kind="stable")
    if len(requests) > MAX_REQUESTS:
        notes.append(f"{len(requests)} requests in {path.name}: the first {MAX_REQUESTS} used")
        requests = requests.head(MAX_REQUESTS)
    return requests.reset_index(drop=True)


def read_rank_clips(path: Path, root: Path, notes: list[str]) -> pd.DataFrame | None:
    """logs/rank_clips.csv by rank and clip; None when absent (runs before it existed) or unreadable (noted)."""
    if not path.exists() and not path.is_symlink():
        return None
    columns = ["rank", "clip", "start_s", "end_s"]
    chunks = _csv(
        path, root, PHASES_CSV_LIMIT, columns, notes, lambda frame: frame, read=columns, rows=MAX_RANK_CLIP_ROWS
    )
    if chunks is None:
        return None
    clips = pd.concat(chunks)
    clips = pd.DataFrame(
        {
            "rank": _numbers(clips["rank"], 0, 65535),
            "clip": _numbers(clips["clip"], 1, MAX_RANK_CLIP_ROWS),
            "start_s": _numbers(clips["start_s"], -MAX_SECONDS, MAX_SECONDS),
            "end_s": _numbers(clips["end_s"], -MAX_SECONDS, MAX_SECONDS),
        }
    )
    bad = clips.isna().any(axis=1) | (clips["rank"] % 1 != 0) | (clips["clip"] % 1 != 0)
    if bad.any():
        notes.append(f"{int(bad.sum())} unreadable row(s) in {path.name} skipped")
    clips = clips[~bad].astype({"rank": "int64", "clip": "int64"})
    return clips.sort_values(["rank", "clip"], kind="stable").reset_index(drop=True)


def read_run_folder(path: Path) -> RunRecord:
    notes: list[str] = []
    layout = RunFolder(path)
    timeline = read_memory_csv(layout.gpu_memory_csv, path)
    plan = read_plan(_json(layout.plan_json, path, notes))
    debug = read_debug(_json(layout.debug_json, path, notes))
    phases = read_phases(layout.phases_csv, path, notes)
    requests = read_requests(layout.requests_csv, path, notes)
    rank_clips = read_rank_clips(layout.rank_clips_csv, path, notes)
    for gpu, name in debug.gpu_names.items():
        timeline.gpu_names.setdefault(gpu, name)
    return RunRecord(path, timeline, plan, debug, phases, requests, rank_clips, notes + timeline.notes)
