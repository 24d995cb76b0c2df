"""Reads a GPU memory log written by `nvidia-smi --query-gpu=... --format=csv -l N` into a Timeline.

Any query field list in any order, with or without header, units and index/uuid columns; UTF-8 (with or
without a BOM) or UTF-16. Input that is not a sample (nvidia-smi error lines, repeated headers, a line
cut off by a crash, an index that is no GPU's) is skipped, and every such decision becomes a one-line
note; only a file that cannot be read, or a headerless file whose memory column cannot be found,
raises InputError. The log is read CHUNK_CHARS at a time into typed arrays, its lines sorted by numpy
over the chunk's bytes (never a Python string per line): beyond the samples kept (~80 bytes each at the
peak, ~1.5x a log of 55-byte lines), memory is a few chunks, whatever the log's size.
`parse_mib` and `unavailable` are the unit helpers, meant for any other "1234 MiB" / "[N/A]" column.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from avatardoctor.errors import InputError
from avatardoctor.files import FileTooBig, UnreadableFile, open_regular

from .timeline import MAX_GPU_INDEX, MAX_MIB, STREAM_SAMPLES, Envelope, Timeline
from .timeline import label as display_label

# A 2-hour, 8-GPU log at 10 Hz is ~30 MB. Memory no longer grows with the log past STREAM_SAMPLES (~80 MiB
# added at any size, docs/performance.md), so the cap bounds the time spent reading: 16 GiB is minutes.
MAX_BYTES = 16 * 1024**3
CHUNK_CHARS = 2 * 2**20  # text parsed at a time: 8 MiB parsed no faster and held 4x the working memory
NEWLINE = ord("\n")
MAX_LINE_CHARS = 64 * 2**10  # a sample line is ~60 characters; a longer one is cut to this while read (it is junk)
MAX_SAMPLES = 400_000_000  # rows read (24 h of 8 GPUs at 10 Hz is 7 M); past this the rest is left unread
MAX_GPUS = MAX_GPU_INDEX + 1  # different uuids (or rows per sample) read as different GPUs
MAX_LABELS = 4096  # different GPU names kept; past it a GPU is shown without one
TIMESTAMP_FORMAT = "%Y/%m/%d %H:%M:%S.%f"  # nvidia-smi's, e.g. 2026/11/20 09:14:02.123
ASSUMED_INTERVAL_S = 1.0  # the seed command's `-l 1`, used when the log has no timestamps
ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id"}  # query name -> header name
IDENTITY_FIELDS = ("uuid", "pci.bus_id")  # tell GPUs apart when there is no index column
MEMORY_FIELDS = ("memory.used", "memory.total", "memory.free")
READ_FIELDS = ("timestamp", "index", *IDENTITY_FIELDS, "name", *MEMORY_FIELDS)
MIB_PER_UNIT = {"KiB": 2.0**-10, "MiB": 1.0, "GiB": 2.0**10, "TiB": 2.0**20}  # " B" could be in a GPU's name
BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)

HEADER_FIELD = re.compile(r"[A-Za-z_][\w.]*( \[[^\]]*\])?")  # "memory.used [MiB]"
TIMESTAMP_VALUE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d+")
MIB_VALUE = re.compile(r"\d+ MiB")
UUID_VALUE = re.compile(r"(GPU|MIG)-[0-9A-Fa-f-]+")
INDEX_VALUE = r"[0-9]{1,4}"


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


def field_unit(header_field: str) -> str | None:
    """'memory.used [MiB]' -> 'MiB'; None without a unit."""
    unit = re.search(r"\[([^\]]*)\]\s*$", header_field)
    return unit[1].strip() if unit else None


def is_header(line: str) -> bool:
    fields = [f.strip() for f in line.split(",")]
    return all(HEADER_FIELD.fullmatch(f) for f in fields) and any("." in f or f in READ_FIELDS for f in fields)


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


def open_text(path: Path) -> tuple[TextIO, str]:
    """The log as text (its encoding from its BOM: UTF-8 without one), and the encoding's name."""
    try:
        raw, _ = open_regular(path, MAX_BYTES)
    except FileTooBig as e:
        raise InputError(
            f"{path}: {e.size / 1024**3:.1f} GiB is too big for a GPU memory log (limit {MAX_BYTES / 1024**3:g} GiB)"
        ) from None
    except UnreadableFile as e:
        raise InputError(f"cannot read {path}: {e}") from None
    buffered = io.BufferedReader(raw)  # type: ignore[type-var]  # typeshed wants a RawIOBase; a binary file reads the same
    start = buffered.peek(4)[:4]
    encoding, name = next(((enc, name) for bom, enc, name in BOMS if start.startswith(bom)), ("utf-8", "UTF-8"))
    return io.TextIOWrapper(buffered, encoding=encoding, errors="replace", newline=None), name


class LineBlock:
    """Whole lines of a log as UTF-8 bytes (each ends in a line end), asked about all its lines at
    once: a line at a time in Python would cost more than the parse itself."""

    def __init__(self, first: int, text: str):
        self.first = first  # the first line's number in the log
        self.data = text.encode()
        self.codes = np.frombuffer(self.data, dtype=np.uint8)
        self.ends = np.flatnonzero(self.codes == NEWLINE)
        self.starts = np.concatenate(([0], self.ends[:-1] + 1))

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> str:
        return self.data[self.starts[i] : self.ends[i]].decode()

    def positions(self, pattern: bytes) -> np.ndarray:
        """Where pattern (ASCII, no line end) starts, in order."""
        found = np.flatnonzero(self.codes == pattern[0])
        for k in range(1, len(pattern)):  # the last byte is a line end, so "clip" never matches
            found = found[self.codes.take(found + k, mode="clip") == pattern[k]]
        return found

    def per_line(self, positions: np.ndarray, typical: int = 0) -> np.ndarray:
        """How many of the positions fall on each line. `typical`, the count nearly every line has, is
        tried first: when every line holds exactly that many, O(lines) comparisons prove it."""
        if typical and len(positions) == typical * len(self):
            grid = positions.reshape(len(self), typical)
            if (grid[:, 0] >= self.starts).all() and (grid[:, -1] < self.ends).all():
                return np.full(len(self), typical)
        return np.diff(np.searchsorted(positions, self.ends), prepend=0)  # how many fall before each line's end

    def nonblank(self, which: np.ndarray) -> np.ndarray:
        """bool(line.strip()) of the lines `which` selects, False elsewhere. A line that starts with
        printable ASCII is not blank; the rest (a few) are asked in Python (Unicode whitespace)."""
        first = self.codes[self.starts]
        result = which & (first > ord(" ")) & (first < 0x7F)
        for i in np.flatnonzero(which & ~result):
            result[i] = bool(self.line(int(i)).strip())
        return result

    def matches(self, text: str) -> np.ndarray:
        """line == text for every line."""
        raw = text.encode()
        same_length = self.ends - self.starts == len(raw)
        result = np.zeros(len(self), dtype=bool)
        for i in np.flatnonzero(same_length & (self.codes[self.starts] == (raw or b"\n")[0])):
            result[i] = self.data[self.starts[i] : self.ends[i]] == raw
        return result

    def only(self, keep: np.ndarray) -> bytes:
        """The kept lines, each with its line end."""
        if keep.all():
            return self.data
        return self.codes[np.repeat(keep, self.ends - self.starts + 1)].tobytes()


def line_blocks(text: TextIO, encoding: str, name: str, notes: list[str]) -> Iterator[LineBlock]:
    """The log's lines, about CHUNK_CHARS at a time. A last line without a line end is dropped:
    nvidia-smi ends every line, so it was cut off (a value cut mid-number, `12` of `12345 MiB`,
    would draw a false drop at the very moment the reader is looking at)."""
    number, rest, replaced = 1, "", 0
    while block := text.read(CHUNK_CHARS):
        replaced += block.count("\ufffd")
        whole = rest + block
        end = whole.rfind("\n") + 1
        rest = whole[end:][:MAX_LINE_CHARS]  # 2 GiB without a line end must not be gathered into one string
        if end:
            lines = LineBlock(number, whole[:end])
            del whole
            yield lines
            number += len(lines)
    if replaced:
        notes.append(f"{name} is not valid {encoding}: {replaced} undecodable byte sequence(s) replaced")
    if rest.strip():
        notes.append(f"last line {number} of {name} is cut off (no line end): skipped")
    elif rest:
        yield LineBlock(number, rest + "\n")


class Interner:
    """Text values -> 0, 1, ... in order of first appearance; past `limit` different ones, -1."""

    def __init__(self, limit: int):
        self.codes: dict[str, int] = {}
        self.values: list[str] = []
        self.limit = limit

    def encode(self, values: pd.Series) -> np.ndarray:
        codes, uniques = pd.factorize(values)
        known = [self.codes.get(u, -1) for u in uniques]
        for i, u in enumerate(uniques):
            if known[i] < 0 and len(self.codes) < self.limit:
                known[i] = self.codes[u] = len(self.codes)
                self.values.append(u)
        return np.asarray(known, dtype=np.int16)[codes] if len(codes) else np.zeros(0, dtype=np.int16)


@dataclass
class Skipped:
    """Lines that are not samples, by kind: how many, and the first (line number, text)."""

    count: Counter = field(default_factory=Counter)
    first: dict = field(default_factory=dict)

    def add(self, kind: str, numbers, texts) -> None:
        if len(numbers):
            self.count[kind] += len(numbers)
            if kind not in self.first or numbers[0] < self.first[kind][0]:
                self.first[kind] = (int(numbers[0]), texts[0])


@dataclass
class Layout:
    """How every line of one log is read, settled by its first lines."""

    name: str
    columns: list[str]
    header: str | None
    units: dict[str, tuple[float, str]]  # memory column -> (MiB per unit, " MiB": the suffix its values may carry)
    mark: tuple[str, int]  # (" MiB", how many times a whole line holds it); ("", 0) when the log is nounits
    identity: Interner = field(default_factory=lambda: Interner(MAX_GPUS))
    labels: Interner = field(default_factory=lambda: Interner(MAX_LABELS))

    @property
    def label_column(self) -> str | None:  # what the report calls each GPU
        return next((c for c in ("name", *IDENTITY_FIELDS) if c in self.columns), None)

    @property
    def identity_column(self) -> str | None:
        return next((c for c in IDENTITY_FIELDS if c in self.columns), None) if "index" not in self.columns else None


def memory_units(
    columns: list[str], units: list[str | None], head: list[str]
) -> tuple[dict[str, tuple[float, str]], tuple[str, int]]:
    """Each memory column's (MiB per unit, " MiB" suffix its values may carry), the unit the header's or
    MiB; and, where the first lines' values carry it ("1234 MiB"), how many times a line holds the
    suffix: a line with fewer, and no [N/A] to explain it, was cut mid-number ("12" of "12345 MiB")."""
    rows = [line for line in head if line.count(",") + 1 == len(columns)]
    found, mark = {}, ("", 0)
    for c in MEMORY_FIELDS:
        if c in columns:
            i = columns.index(c)
            unit = units[i] or "MiB"
            found[c] = (MIB_PER_UNIT.get(unit, np.nan), f" {unit}")
            values = [v for v in (row.split(",")[i].strip() for row in rows) if not v.startswith("[") and v != "N/A"]
            if sum(v.endswith(f" {unit}") for v in values) > len(values) / 2:
                mark = (f" {unit}", Counter(row.count(f" {unit}") for row in rows).most_common(1)[0][0])
    return found, mark


def split_lines(layout: Layout, lines: LineBlock, skipped: Skipped) -> tuple[bytes, np.ndarray]:
    """The lines with the header's field count (with their line ends), and their line numbers; the
    others are counted by kind."""
    width, (suffix, suffixes) = len(layout.columns), layout.mark
    header = lines.matches(layout.header) if layout.header is not None else np.zeros(len(lines), dtype=bool)
    keep = (lines.per_line(lines.positions(b","), width - 1) == width - 1) & ~header
    if width == 1:  # no comma to tell a sample from a blank line
        keep = lines.nonblank(keep)
    if suffixes:  # a value cut mid-number: fewer units than a line has, and no [N/A] to explain it
        short = keep & (lines.per_line(lines.positions(suffix.encode()), suffixes) < suffixes)
        if short.any():
            explained = (lines.per_line(lines.positions(b"[")) > 0) | (lines.per_line(lines.positions(b"N/A")) > 0)
            keep &= ~(short & ~explained)
    numbers = lines.first + np.arange(len(lines), dtype=np.uint64)  # a 16 GiB log may have over 2**32 lines

    def add(kind: str, which: np.ndarray) -> None:
        if which.any():
            skipped.add(kind, numbers[which], [lines.line(int(np.argmax(which)))])

    if header.any():
        first_header = np.zeros(len(lines), dtype=bool)
        if not skipped.count["header"]:
            first_header[np.argmax(header)] = True
        add("header", first_header)
        add("repeated header", header & ~first_header)
    rest = ~keep & ~header
    nonblank = lines.nonblank(rest)
    add("junk", nonblank)
    add("blank", rest & ~nonblank)
    return lines.only(keep), numbers[keep]


def gpu_index(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(whether each value is a whole number, the number where it is a GPU's index, else -1)."""
    if pd.api.types.is_numeric_dtype(values):  # the C parser read every value as a number: the fast path
        number = values.to_numpy(dtype="float64")
        whole = np.isfinite(number) & (number == np.floor(number))  # not 1.5
        return whole, np.where(whole & (number >= 0) & (number <= MAX_GPU_INDEX), number, -1)
    text = values.astype(str).str.strip()
    digits = text.str.fullmatch("[0-9]+").to_numpy()
    short = digits & (text.str.len() <= len(str(MAX_GPU_INDEX))).to_numpy()  # 10**30 is no GPU's and no int64
    number = np.where(short, pd.to_numeric(text.where(short, "-1")).to_numpy(), -1)
    return digits, np.where(number <= MAX_GPU_INDEX, number, -1)


def parse_chunk(layout: Layout, lines: LineBlock, skipped: Skipped) -> dict[str, np.ndarray] | None:
    """The chunk's samples as typed arrays: line, ns (timestamp), gpu (index or identity code), label
    code, used_mib, total_mib, missing (memory values not available). A row whose memory, timestamp or
    index cannot be read is a junk line."""
    text, numbers = split_lines(layout, lines, skipped)
    if not text:
        return None
    wanted = {
        layout.columns.index(c): c for c in READ_FIELDS if c in layout.columns
    }  # position -> field, first occurrence
    for suffix in {suffix for _, suffix in layout.units.values()}:
        text = text.replace(suffix.encode(), b"")  # so the C parser reads memory columns as numbers, fast
    # The line filter leaves clean text for pandas' C parser (QUOTE_NONE: a stray quote cannot swallow the
    # next lines). A column stays strings only where some value is not a number ([N/A], junk).
    table = pd.read_csv(
        io.BytesIO(text),
        sep=",",
        header=None,
        names=range(len(layout.columns)),
        usecols=list(wanted),
        dtype={i: str for i, c in wanted.items() if c not in (*MEMORY_FIELDS, "index")},
        skipinitialspace=True,
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        skip_blank_lines=False,
        engine="c",
    ).rename(columns=wanted)
    del text
    good, rows = np.ones(len(table), dtype=bool), {"line": numbers}
    missing = np.zeros(len(table), dtype=np.int8)  # at most 3 memory columns
    memory = {}
    for column, (scale, _) in layout.units.items():
        number = parse_mib(table[column]).to_numpy() * scale
        na = np.zeros(len(table), dtype=bool)
        na[np.isnan(number)] = unavailable(table[column][np.isnan(number)]).to_numpy()
        readable = (number >= 0) & (number <= MAX_MIB)  # not inf, -5 or 1e300
        good &= readable | na
        missing += na
        memory[column] = np.where(readable, number, np.nan)
    used, total, free = (memory.get(c) for c in MEMORY_FIELDS)
    if used is None:
        assert total is not None and free is not None  # the caller returned early without either way to know it
        used = total - free
    rows["used_mib"] = used
    rows["total_mib"] = (
        total
        if total is not None
        else used + free
        if free is not None and used is not None
        else np.full(len(table), np.nan)
    )
    good &= ~(rows["used_mib"] < 0) & ~(rows["total_mib"] > MAX_MIB)  # free > total: neither can be right
    if "timestamp" in table:
        stamps = pd.to_datetime(table["timestamp"], format=TIMESTAMP_FORMAT, errors="coerce")
        good &= (stamps.dt.year >= 1970).to_numpy()  # pandas reads "/11/20 09:14..." as year 0
        rows["ns"] = stamps.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if "index" in table:
        whole, index = gpu_index(table["index"])
        good &= whole  # "[Unknown Error]", "1.5": junk; a number that is no GPU's index: said below
        rows["gpu"] = index.astype(np.int16)
    skipped.add("junk", numbers[~good], [lines.line(n - lines.first) for n in numbers[~good][:1]])
    if "index" not in table and layout.identity_column:
        rows["gpu"] = np.full(len(table), -1, dtype=np.int16)
        rows["gpu"][good] = layout.identity.encode(table[layout.identity_column][good])
    if "index" in table or layout.identity_column:  # -1: an index no GPU has, or one uuid past the bound
        no_gpu = good & (rows["gpu"] < 0)
        skipped.add(
            "index" if "index" in table else "identity",
            numbers[no_gpu],
            [lines.line(n - lines.first) for n in numbers[no_gpu][:1]],
        )
        good &= ~no_gpu
    if layout.label_column:
        rows["label"] = np.full(len(table), -1, dtype=np.int16)
        rows["label"][good] = layout.labels.encode(table[layout.label_column][good])
    rows["missing"] = missing
    return {k: v[good] for k, v in rows.items()}


def sampling_interval(times_s: np.ndarray) -> float:
    """Typical seconds between samples. Rows of one sample are ms apart; gaps between samples are at
    least 1/GPUs of all gaps, so the 97th percentile is one of them for up to 33 GPUs."""
    steps = np.diff(times_s)
    steps = steps[steps > 0]
    return float(np.quantile(steps, 0.97)) if steps.size else ASSUMED_INTERVAL_S


class Placement:
    """Where each sample goes: its GPU number, its seconds since the first sample, and whether it is kept (not
    a row of a sample missing a GPU's row). Settled by the first batch of rows it is given (the whole log
    below STREAM_SAMPLES, else its first STREAM_SAMPLES samples), then applied batch by batch; what it had
    to assume becomes notes at the end, in the order a reader needs them."""

    def __init__(self, layout: Layout, ns: np.ndarray | None, gpu_column: bool):
        """ns: the first rows' timestamps (None without a timestamp column); gpu_column: whether rows carry
        their GPU (an index or identity column)."""
        self.layout = layout
        self.ns0 = None if ns is None else int(ns[0])
        times_s = None if ns is None else (ns - ns[0]) / 1e9
        self.interval = ASSUMED_INTERVAL_S if times_s is None else sampling_interval(times_s)
        self.gpus = 0  # rows per sample, when GPUs are told apart by their row's place in a sample
        if not gpu_column and times_s is not None:
            sizes = np.bincount(self._samples(times_s, -np.inf)[0])
            self.gpus = int(np.bincount(sizes).argmax())  # the usual number of rows per sample
        self.last_s = -np.inf  # the previous batch's last time, as logged (not shifted)
        self.shift = 0.0  # seconds added since the clock first went back
        self.back, self.first_back = 0, 0
        self.missed, self.first_missed = 0, 0  # samples without exactly `gpus` rows
        self.per_gpu = np.zeros(MAX_GPUS, dtype=np.int64)  # rows so far per GPU, without timestamps
        self.held: dict[str, np.ndarray] | None = None  # a sample that may go on in the next batch

    def _samples(self, times_s: np.ndarray, before: float) -> tuple[np.ndarray, np.ndarray]:
        """nvidia-smi writes a sample as consecutive rows, one per GPU in index order, ms apart; a new
        sample starts after a gap of over half the sampling interval, or where the clock went back.
        Each row's sample number from 0, and where each sample starts."""
        steps = np.diff(times_s, prepend=before)
        starts = (steps > self.interval / 2) | (steps < 0)
        starts[0] = True
        return np.cumsum(starts) - 1, np.flatnonzero(starts)

    @property
    def by_position(self) -> bool:
        return 0 < self.gpus <= MAX_GPUS

    def place(self, rows: dict[str, np.ndarray], last: bool):
        """(the rows placed, their elapsed seconds, GPU numbers, which to keep), in file order. Unless `last`,
        the rows of the batch's last sample are held for the next batch when GPUs are told apart by position."""
        if self.held is not None:
            rows = {k: np.concatenate((self.held[k], v)) for k, v in rows.items()}
            self.held = None
        ns = rows.get("ns")
        times_s = None if ns is None else (ns - self.ns0) / 1e9
        count = len(rows["line"])
        if "gpu" in rows:
            gpu, keep = rows["gpu"], np.ones(count, dtype=bool)
        elif not self.by_position:
            gpu, keep = np.zeros(count, dtype=np.int16), np.ones(count, dtype=bool)
        else:
            assert times_s is not None
            sample, starts = self._samples(times_s, self.last_s)
            if not last and len(starts):  # the last sample may go on in the next batch
                self.held = {k: v[starts[-1] :] for k, v in rows.items()}
                rows = {k: v[: starts[-1]] for k, v in rows.items()}
                times_s, sample, count = times_s[: starts[-1]], sample[: starts[-1]], starts[-1]
                starts = starts[:-1]
            position = np.arange(count) - starts[sample]
            sizes = np.bincount(sample, minlength=len(starts))
            keep = sizes[sample] == self.gpus
            if not keep.all():
                self.first_missed = self.first_missed or int(rows["line"][~keep][0])
                self.missed += int((sizes != self.gpus).sum())
            gpu = position.astype(np.int16)
        if times_s is None:  # sample k of a GPU is its k-th row
            before = self.per_gpu[gpu]
            self.per_gpu += np.bincount(gpu, minlength=MAX_GPUS)
            elapsed = (before + pd.Series(gpu).groupby(gpu).cumcount().to_numpy()) * ASSUMED_INTERVAL_S
        else:
            elapsed = self._monotonic(times_s, rows["line"])
        return rows, elapsed, gpu, keep

    def _monotonic(self, times_s: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Seconds since the first row, in file order; where the clock goes back (a clock change, two logs
        appended), the later rows are shifted to follow one sampling interval after the earlier ones."""
        if not len(times_s):
            return times_s
        steps = np.diff(times_s, prepend=times_s[0] if self.last_s == -np.inf else self.last_s)
        self.last_s = float(times_s[-1])
        back = steps < 0
        if not back.any():
            return times_s + self.shift if self.shift else times_s
        self.first_back = self.first_back or int(numbers[back][0])
        self.back += int(back.sum())
        shifted = times_s + self.shift + np.cumsum(np.where(back, self.interval - steps, 0.0))
        self.shift = float(shifted[-1] - times_s[-1])
        return shifted

    def notes(self) -> list[str]:
        name, layout, notes = self.layout.name, self.layout, []
        if layout.identity_column:
            notes.append(
                f"no index column in {name}: GPUs numbered 0, 1, ... by first appearance of their {layout.identity_column}"
            )
        elif "index" not in layout.columns and self.ns0 is None:
            notes.append(f"no index or timestamp column in {name}: read as one GPU (log index to tell GPUs apart)")
        elif "index" not in layout.columns and not self.by_position:  # rows too close in time to tell samples apart
            notes.append(
                f"no index column in {name}: samples of {self.gpus} rows cannot be told apart, read as one GPU (log index)"
            )
        elif "index" not in layout.columns:
            layout_note = (
                "one row per sample, read as one GPU"
                if self.gpus == 1
                else f"GPU = position of the row within each sample ({self.gpus} GPUs)"
            )
            notes.append(f"no index column in {name}: {layout_note}")
            if self.missed:
                missed = (
                    f"{self.missed} sample(s) in {name} without exactly {self.gpus} rows skipped (a GPU's row missing?)"
                )
                notes.append(f"{missed}, first at line {self.first_missed}")
        if self.ns0 is None:
            notes.append(
                f"no timestamp column in {name}: samples assumed {ASSUMED_INTERVAL_S:g} s apart (nvidia-smi -l 1)"
            )
        elif self.back:
            notes.append(
                f"timestamps in {name} go back {self.back} time(s), first at line {self.first_back} (clock change or "
                f"logs appended?): later samples placed {self.interval:g} s after the ones before"
            )
        return notes


def skipped_notes(name: str, skipped: Skipped) -> list[str]:
    notes, first, count = [], skipped.first, skipped.count
    if count["repeated header"]:
        notes.append(
            f"{count['repeated header']} repeated header(s) in {name} skipped (logs appended?), first at line {first['repeated header'][0]}"
        )
    if count["blank"]:
        notes.append(f"{count['blank']} blank line(s) in {name} skipped, first at line {first['blank'][0]}")
    if count["index"]:
        notes.append(
            f"{count['index']} line(s) in {name} have an index that is no GPU's (not 0-{MAX_GPU_INDEX}): skipped, "
            f"first line {first['index'][0]}"
        )
    if count["identity"]:
        notes.append(
            f"{count['identity']} line(s) in {name} name a GPU past the first {MAX_GPUS} different ones: skipped, "
            f"first line {first['identity'][0]}"
        )
    if count["junk"]:
        excerpt = first["junk"][1].strip()[:60]
        notes.append(
            f"{count['junk']} line(s) in {name} are not samples and were skipped, first line {first['junk'][0]}: '{excerpt}'"
        )
    return notes


def read_nvidia_smi_csv(path: Path, fields: list[str] | None = None) -> Timeline:
    """The memory timeline in an nvidia-smi CSV log. `fields` names the columns of a headerless log
    (the --query-gpu list, e.g. ["timestamp", "memory.used"]); a header in the file is then ignored."""
    path, notes = Path(path), list[str]()
    text, encoding = open_text(path)
    with text:
        return _read(path, text, encoding, fields, notes)


def _read(path: Path, text: TextIO, encoding: str, fields: list[str] | None, notes: list[str]) -> Timeline:
    name, skipped = path.name, Skipped()
    blocks = line_blocks(text, encoding, name, notes)
    head = None
    for lines in blocks:  # the first block with a line that is not blank settles the layout
        nonblank_lines = np.flatnonzero(lines.nonblank(np.ones(len(lines), dtype=bool)))
        if len(nonblank_lines):
            head = lines
            break
        skipped.add("blank", range(lines.first, lines.first + len(lines)), [""])
    if head is None:
        return Timeline.empty(notes + [f"{name} is empty: nothing to plot"])
    nonblank = [head.line(i) for i in nonblank_lines[nonblank_lines < 100_000][:50]]
    header = next((line for line in nonblank[:20] if is_header(line)), None)  # junk may come first
    if fields:
        columns = [field_name(f) for entry in fields for f in entry.split(",")]
    elif header:
        columns = [field_name(f) for f in header.split(",")]
    else:
        columns, note = infer_fields(path, nonblank)
        notes.append(note)
    if "memory.used" not in columns and not {"memory.total", "memory.free"} <= set(columns):
        return Timeline.empty(notes + [f"no memory.used column in {name}: nothing to plot"])
    units: list[str | None] = (
        [field_unit(f) for f in header.split(",")] if header and not fields else [None] * len(columns)
    )
    layout = Layout(name, columns, header, *memory_units(columns, units, [line for line in nonblank if line != header]))
    unknown = [f"{c} [{suffix.strip()}]" for c, (scale, suffix) in layout.units.items() if np.isnan(scale)]
    if unknown:
        return Timeline.empty(
            notes + [f"{', '.join(unknown)} in {name}: not a unit of memory (KiB, MiB, GiB, TiB): nothing to plot"]
        )

    parts, count, missing = [], 0, 0
    streamed: Streamed | None = None  # past STREAM_SAMPLES samples
    for lines in itertools.chain([head], blocks):
        part = parse_chunk(layout, lines, skipped)
        if part is not None and len(part["line"]):
            count += len(part["line"])
            missing += int(part.pop("missing").sum())
            if streamed is not None:
                streamed.add(part)
            elif count <= STREAM_SAMPLES:
                parts.append(part)
            else:
                parts.append(part)
                streamed = Streamed(layout, parts)  # empties parts
        if count >= MAX_SAMPLES:
            notes.append(
                f"{name} has over {MAX_SAMPLES:,} samples: read up to line {lines.first + len(lines) - 1}, the rest left unread"
            )
            break
    del head, lines
    notes += skipped_notes(name, skipped)
    if not count:
        return Timeline.empty(notes + [f"no samples in {name}: nothing to plot"])
    if missing:
        notes.append(f"{missing} memory value(s) in {name} not available ([N/A] or similar): left as gaps")
    if "memory.used" not in columns:
        notes.append(f"no memory.used column in {name}: used = memory.total - memory.free")
    if streamed is None:
        rows = joined(parts)
        placement = Placement(layout, rows.get("ns"), "gpu" in rows)
        rows, elapsed, gpu, keep = placement.place(rows, last=True)
        kept = np.flatnonzero(keep)
        order = kept[np.argsort(gpu[kept], kind="stable")]  # by GPU, then time: elapsed never goes back in file order
        labels = first_labels(gpu[kept], rows.get("label", np.zeros(0))[kept] if "label" in rows else None, {})
        columns_kept = (elapsed[order], gpu[order], rows.pop("used_mib")[order], rows.pop("total_mib")[order])
        counts = {}
    else:
        placement, labels = streamed.placement, streamed.finish()
        columns_kept = tuple(streamed.envelope.samples().values())  # type: ignore[assignment]
        counts = {str(g): int(n) for g, n in enumerate(streamed.envelope.counts) if n}
    notes += placement.notes()
    if streamed is not None:
        notes.append(streamed.envelope.note(name))
    start = None if placement.ns0 is None else pd.Timestamp(placement.ns0).to_pydatetime(warn=False)  # ns -> µs
    gpu_names = {str(g): display_label(layout.labels.values[c]) for g, c in sorted(labels.items()) if c >= 0}
    return Timeline(samples_frame(*columns_kept), gpu_names=gpu_names, start=start, notes=notes, counts=counts)


def joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The parts' rows as one set of columns, one column at a time, each part's let go once joined."""
    return {k: np.concatenate([p.pop(k) for p in parts]) for k in list(parts[0])}


def first_labels(gpu: np.ndarray, label: np.ndarray | None, known: dict[int, int]) -> dict[int, int]:
    """`known` with each GPU first seen in these rows and the label code on its first row."""
    if label is not None:
        numbers, firsts = np.unique(gpu, return_index=True)
        for g, first in zip(numbers.tolist(), firsts.tolist()):
            known.setdefault(g, int(label[first]))
    return known


def samples_frame(elapsed: np.ndarray, gpu: np.ndarray, used: np.ndarray, total: np.ndarray) -> pd.DataFrame:
    """Timeline.samples from rows already in order by GPU number, then time."""
    numbers = np.flatnonzero(np.bincount(gpu, minlength=1))  # the GPU numbers that have samples
    codes = np.zeros(numbers[-1] + 1, dtype=np.int16)
    codes[numbers] = np.arange(len(numbers))
    return pd.DataFrame(
        {
            "elapsed_s": elapsed.astype("float64"),
            "gpu": pd.Categorical.from_codes(codes[gpu], categories=[str(g) for g in numbers]),
            "used_mib": used,
            "total_mib": total,
        },
        copy=False,
    )


class Streamed:
    """A log past STREAM_SAMPLES samples: its placement settled by the samples before, each batch placed
    and folded into an Envelope as read, so memory stays what it was at STREAM_SAMPLES."""

    def __init__(self, layout: Layout, parts: list[dict[str, np.ndarray]]):
        """parts: the samples read so far, each let go once added (never joined: that would double them)."""
        ns = np.concatenate([p["ns"] for p in parts]) if "ns" in parts[0] else None
        self.placement = Placement(layout, ns, "gpu" in parts[0])
        del ns
        self.envelope = Envelope()
        self.labels: dict[int, int] = {}
        while parts:
            self.add(parts.pop(0))

    def add(self, rows: dict[str, np.ndarray], last: bool = False) -> None:
        rows, elapsed, gpu, keep = self.placement.place(rows, last)
        gpu = gpu[keep]
        first_labels(gpu, rows["label"][keep] if "label" in rows else None, self.labels)
        self.envelope.add(elapsed[keep], gpu, rows["used_mib"][keep], rows["total_mib"][keep])

    def finish(self) -> dict[int, int]:
        """The labels' codes by GPU number, once the sample held back (if any) is placed."""
        if self.placement.held is not None:
            self.add({k: v[:0] for k, v in self.placement.held.items()}, last=True)
        return self.labels
