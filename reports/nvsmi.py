"""Reads a GPU memory log written by `nvidia-smi --query-gpu=... --format=csv -l N` into a Timeline.

Any query field list in any order, with or without header, units and index/uuid columns. Input that
is not a sample (nvidia-smi error lines, repeated headers, a last line cut off by a crash) is skipped,
and every such decision becomes a one-line note; only a file that cannot be read, or a headerless
file whose memory column cannot be found, raises InputError.
`parse_mib` and `unavailable` are the unit helpers, meant for any other "1234 MiB" / "[N/A]" column.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from avatardoctor.errors import InputError

from .timeline import Timeline

MAX_BYTES = 2 * 1024**3  # a 2-hour, 8-GPU log at 10 Hz is ~30 MB; 2 GiB is no single run's log
TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S.%f"  # nvidia-smi's, e.g. 2026/11/20 09:14:02.123
ASSUMED_INTERVAL_S = 1.0  # the seed command's `-l 1`, used when the log has no timestamps
ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id"}  # query name -> header name
IDENTITY_FIELDS = ("uuid", "pci.bus_id")  # tell GPUs apart when there is no index column
MEMORY_FIELDS = ("memory.used", "memory.total", "memory.free")
READ_FIELDS = ("timestamp", "index", *IDENTITY_FIELDS, "name", *MEMORY_FIELDS)

HEADER_FIELD = re.compile(r"[A-Za-z_][\w.]*( \[[^\]]*\])?")  # "memory.used [MiB]"
TIMESTAMP_VALUE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+")
MIB_VALUE = re.compile(r"\d+ MiB")
UUID_VALUE = re.compile(r"(GPU|MIG)-[0-9A-Fa-f-]+")


def parse_mib(values: pd.Series) -> pd.Series:
    """'1234 MiB' or '1234' (or numbers already) -> 1234.0; '[N/A]' and anything unreadable -> NaN."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    return pd.to_numeric(values.str.removesuffix(" MiB"), errors="coerce").astype("float64")


def unavailable(values: pd.Series) -> pd.Series:
    """True where nvidia-smi says a value is not available: '[N/A]', '[Not Supported]', 'N/A', ..."""
    if pd.api.types.is_numeric_dtype(values):
        return pd.Series(False, index=values.index)
    return values.str.startswith("[") | (values == "N/A")


def field_name(header_field: str) -> str:
    """'memory.used [MiB]' -> 'memory.used'; 'gpu_name' -> 'name'."""
    name = header_field.strip().split(" [")[0].lower()
    return ALIASES.get(name, name)


def is_header(line: str) -> bool:
    fields = [f.strip() for f in line.split(",")]
    return all(HEADER_FIELD.fullmatch(f) for f in fields) and any("." in f or f in READ_FIELDS for f in fields)


def read_lines(path: Path, notes: list[str]) -> list[str]:
    """The file's lines, decoded leniently; a last line without a line end is dropped (cut off)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise InputError(f"{path}: {size / 1024**3:.1f} GiB is too big for a GPU memory log (limit 2 GiB)")
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        notes.append(f"{path.name} is not valid UTF-8: {text.count(chr(0xFFFD))} undecodable byte sequence(s) replaced")
    lines = text.splitlines()
    if lines and lines[-1].strip() and not text.endswith(("\n", "\r")):
        # nvidia-smi ends every line; without the end, a value may be cut mid-number ("12" of "12345")
        notes.append(f"last line {len(lines)} of {path.name} is cut off (no line end): skipped")
        lines.pop()
    return lines


def infer_fields(path: Path, data_lines: list[str]) -> tuple[list[str], str]:
    """Column names for a headerless log, from the values of its first lines, and a note saying so.
    Only what values prove is named (timestamp, uuid, the one MiB column); bare numbers stay unread."""
    width = Counter(line.count(",") for line in data_lines).most_common(1)[0][0] + 1
    rows = [[v.strip() for v in line.split(",")] for line in data_lines if line.count(",") + 1 == width]
    names = [f"column {i + 1}" for i in range(width)]

    def mostly(pattern: re.Pattern, i: int) -> bool:  # "mostly": a junk line may be among the rows
        return sum(bool(pattern.fullmatch(row[i])) for row in rows) > len(rows) / 2

    for i in range(width):
        names[i] = "timestamp" if mostly(TIMESTAMP_VALUE, i) else "uuid" if mostly(UUID_VALUE, i) else names[i]
    mib_columns = [i for i in range(width) if mostly(MIB_VALUE, i)]
    if len(mib_columns) != 1:  # none (e.g. nounits), or used/total/free in an order we cannot know
        found = "no 'NNN MiB' column" if not mib_columns else f"{len(mib_columns)} 'NNN MiB' columns"
        raise InputError(
            f"{path}: no header line and {found}, so memory.used cannot be told apart; log again without "
            f"'noheader' in --format, or pass the --query-gpu field list (--fields timestamp,memory.used)"
        )
    names[mib_columns[0]] = "memory.used"
    read = ", ".join(f"column {i + 1} as {n}" for i, n in enumerate(names) if not n.startswith("column"))
    return names, f"{path.name} has no header: read {read} (guessed from the values)"


def split_lines(name: str, lines: list[str], width: int, header: str | None, notes: list[str]):
    """The lines with the header's field count, their line numbers, and the numbers of junk lines."""
    kept, numbers, junk, blank, headers = [], [], [], [], []
    for number, line in enumerate(lines, 1):
        if line.count(",") == width - 1 and line != header:  # the fast path: almost every line
            kept.append(line)
            numbers.append(number)
        elif line == header:
            headers.append(number)
        elif line.strip():
            junk.append(number)
        else:
            blank.append(number)
    if len(headers) > 1:
        notes.append(f"{len(headers) - 1} repeated header(s) in {name} skipped (logs appended?), first at line {headers[1]}")
    if blank:
        notes.append(f"{len(blank)} blank line(s) in {name} skipped, first at line {blank[0]}")
    return kept, np.array(numbers, dtype=np.int64), junk


def sampling_interval(times_s: np.ndarray) -> float:
    """Typical seconds between samples. Rows of one sample are ms apart; gaps between samples are at
    least 1/GPUs of all gaps, so the 97th percentile is one of them for up to 33 GPUs."""
    steps = np.diff(times_s)
    steps = steps[steps > 0]
    return float(np.quantile(steps, 0.97)) if steps.size else ASSUMED_INTERVAL_S


def gpu_numbers(name: str, table: pd.DataFrame, times_s: np.ndarray | None, numbers: np.ndarray, notes: list[str]):
    """Each row's GPU number, and which rows to keep (not the rows of a sample missing a GPU's row)."""
    every_row = np.ones(len(table), dtype=bool)
    if "index" in table:
        return table["index"].astype("int64").to_numpy(), every_row
    for column in IDENTITY_FIELDS:
        if column in table:
            notes.append(f"no index column in {name}: GPUs numbered 0, 1, ... by first appearance of their {column}")
            return pd.factorize(table[column])[0], every_row
    if times_s is None:
        notes.append(f"no index or timestamp column in {name}: read as one GPU (log index to tell GPUs apart)")
        return np.zeros(len(table), dtype=np.int64), every_row
    # nvidia-smi writes a sample as consecutive rows, one per GPU in index order, ms apart; a new sample
    # starts after a gap of over half the sampling interval, or where the clock went back.
    steps = np.diff(times_s, prepend=-np.inf)
    starts = (steps > sampling_interval(times_s) / 2) | (steps < 0)
    sample = np.cumsum(starts) - 1
    position = np.arange(len(table)) - np.flatnonzero(starts)[sample]
    sizes = np.bincount(sample)
    gpus = int(np.bincount(sizes).argmax())  # the usual number of rows per sample
    keep = sizes[sample] == gpus
    layout = "one row per sample, read as one GPU" if gpus == 1 else f"GPU = position of the row within each sample ({gpus} GPUs)"
    notes.append(f"no index column in {name}: {layout}")
    if not keep.all():
        missed = f"{(sizes != gpus).sum()} sample(s) in {name} without exactly {gpus} rows skipped (a GPU's row missing?)"
        notes.append(f"{missed}, first at line {numbers[~keep][0]}")
    return position, keep


def monotonic_elapsed(name: str, times_s: np.ndarray, numbers: np.ndarray, notes: list[str]) -> np.ndarray:
    """Seconds since the first row, in file order; where the clock goes back (a clock change, two logs
    appended), the later rows are shifted to follow one sampling interval after the earlier ones."""
    steps = np.diff(times_s, prepend=times_s[0])
    back = steps < 0
    if not back.any():
        return times_s
    interval = sampling_interval(times_s)
    notes.append(
        f"timestamps in {name} go back {back.sum()} time(s), first at line {numbers[back][0]} (clock change or "
        f"logs appended?): later samples placed {interval:g} s after the ones before"
    )
    return times_s + np.cumsum(np.where(back, interval - steps, 0.0))


def sample_rows(name: str, lines: list[str], columns: list[str], header: str | None, notes: list[str]):
    """The rows that are samples: their columns as read (strings, or memory as numbers), the memory
    and time columns typed, and their line numbers. A row whose memory, timestamp or index cannot be
    read is a junk line too."""
    kept, numbers, junk = split_lines(name, lines, len(columns), header, notes)
    wanted = {columns.index(c): c for c in READ_FIELDS if c in columns}  # position -> field, first occurrence
    # The line filter leaves clean text for pandas' C parser (QUOTE_NONE: a stray quote cannot swallow
    # the next lines). Without " MiB" it reads memory columns as numbers, fast; a column stays strings
    # only where some value is not a number ([N/A], junk).
    table = pd.read_csv(
        io.StringIO("\n".join(kept).replace(" MiB", "")), sep=",", header=None, names=range(len(columns)),
        usecols=list(wanted), dtype={i: str for i, c in wanted.items() if c not in MEMORY_FIELDS},
        skipinitialspace=True, quoting=csv.QUOTE_NONE, na_filter=False, engine="c",
    ).rename(columns=wanted) if kept else pd.DataFrame({c: pd.Series(dtype=str) for c in wanted.values()})  # fmt: skip
    typed = pd.DataFrame({c: parse_mib(table[c]) for c in MEMORY_FIELDS if c in table})
    good, missing = np.ones(len(table), dtype=bool), np.zeros(len(table), dtype=np.int64)
    for column in list(typed):
        nan = typed[column].isna().to_numpy()
        said_na = np.zeros_like(nan)
        said_na[nan] = unavailable(table[column][nan]).to_numpy()
        good &= ~nan | said_na
        missing += said_na
    if "timestamp" in table:
        typed["timestamp"] = pd.to_datetime(table["timestamp"], format=TIMESTAMP_FORMAT, errors="coerce")
        good &= (typed["timestamp"].dt.year >= 1970).to_numpy()  # pandas reads "/11/20 09:14..." as year 0
    if "index" in table:
        good &= table["index"].str.isdigit().to_numpy()
    junk = sorted(junk + numbers[~good].tolist())
    if junk:
        excerpt = lines[junk[0] - 1].strip()[:60]
        notes.append(f"{len(junk)} line(s) in {name} are not samples and were skipped, first line {junk[0]}: '{excerpt}'")
    if missing[good].sum():
        notes.append(f"{missing[good].sum()} memory value(s) in {name} not available ([N/A] or similar): left as gaps")
    return table[good].reset_index(drop=True), typed[good].reset_index(drop=True), numbers[good]


def read_nvidia_smi_csv(path: Path, fields: list[str] | None = None) -> Timeline:
    """The memory timeline in an nvidia-smi CSV log. `fields` names the columns of a headerless log
    (the --query-gpu list, e.g. ["timestamp", "memory.used"]); a header in the file is then ignored."""
    path, notes = Path(path), []
    lines = read_lines(path, notes)
    if not any(line.strip() for line in lines):
        return Timeline.empty(notes + [f"{path.name} is empty: nothing to plot"])
    header = next((line for line in lines[:20] if is_header(line)), None)  # junk may come first
    if fields:
        columns = [field_name(f) for entry in fields for f in entry.split(",")]
    elif header:
        columns = [field_name(f) for f in header.split(",")]
    else:
        columns, note = infer_fields(path, [line for line in lines[:50] if line.strip()])
        notes.append(note)
    if "memory.used" not in columns and not {"memory.total", "memory.free"} <= set(columns):
        return Timeline.empty(notes + [f"no memory.used column in {path.name}: nothing to plot"])
    table, typed, numbers = sample_rows(path.name, lines, columns, header, notes)
    if table.empty:
        return Timeline.empty(notes + [f"no samples in {path.name}: nothing to plot"])

    if "memory.used" not in typed:
        typed["memory.used"] = typed["memory.total"] - typed["memory.free"]
        notes.append(f"no memory.used column in {path.name}: used = memory.total - memory.free")
    if "memory.total" not in typed:
        typed["memory.total"] = typed["memory.used"] + typed["memory.free"] if "memory.free" in typed else np.nan
    stamps = typed.get("timestamp")
    times_s = None if stamps is None else (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
    gpu, keep = gpu_numbers(path.name, table, times_s, numbers, notes)
    if times_s is None:  # sample k of a GPU is its k-th row
        elapsed = pd.Series(gpu).groupby(gpu).cumcount().to_numpy() * ASSUMED_INTERVAL_S
        notes.append(f"no timestamp column in {path.name}: samples assumed {ASSUMED_INTERVAL_S:g} s apart (nvidia-smi -l 1)")
    else:
        elapsed = monotonic_elapsed(path.name, times_s, numbers, notes)

    gpu_ids = np.array([str(g) for g in range(gpu.max() + 1)], dtype=object)  # 3 -> "3", fast on many rows
    samples = pd.DataFrame({
        "elapsed_s": elapsed.astype("float64"), "gpu": gpu_ids[gpu], "used_mib": typed["memory.used"].to_numpy(),
        "total_mib": typed["memory.total"].to_numpy(dtype="float64"), "gpu_number": gpu,
    })[keep].sort_values(["gpu_number", "elapsed_s"], kind="stable").drop(columns="gpu_number")  # fmt: skip
    label = next((c for c in ("name", *IDENTITY_FIELDS) if c in table), None)  # what the report calls each GPU
    gpu_names = {}
    if label:
        firsts = pd.DataFrame({"gpu": gpu_ids[gpu], "label": table[label]})[keep].drop_duplicates("gpu")
        gpu_names = dict(zip(firsts["gpu"], firsts["label"].astype(str), strict=True))
    start = None if stamps is None else stamps.iloc[0].to_pydatetime()
    return Timeline(samples.reset_index(drop=True), gpu_names=gpu_names, start=start, notes=notes)
