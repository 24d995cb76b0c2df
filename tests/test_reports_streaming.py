"""The report's CSV readers stream: what they return is what the whole-file readers they replaced
returned (kept here as references), and the memory they take is bounded by their chunk, not the file.

Memory is measured with tracemalloc (numpy and pandas arrays report to it), never with a clock.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runfixture import make_run

from avatardoctor.reports import nvsmi, runfolder
from avatardoctor.reports.nvsmi import LineBlock, Skipped, read_nvidia_smi_csv
from avatardoctor.reports.runfolder import READ_COLUMNS, TEXT_COLUMNS, read_memory_csv
from avatardoctor.reports.timeline import MAX_MIB, MAX_SECONDS, Timeline, gpu_id, label

# ---- run folders: logs/gpu_memory.csv -----------------------------------------------------------------


def whole_file_memory_csv(path: Path) -> Timeline:
    """The reader before it streamed (one read of the whole file, one pandas frame of it): the reference."""
    notes: list[str] = []
    data = path.read_bytes()
    if data.strip() and not data.endswith((b"\n", b"\r")):
        notes.append(f"last line of {path.name} is cut off (no line end): skipped")
        data = data[: data.rfind(b"\n") + 1]
    try:
        frame = pd.read_csv(
            io.BytesIO(data),
            on_bad_lines="skip",
            encoding_errors="replace",
            skipinitialspace=True,
            usecols=lambda c: c in READ_COLUMNS,
            dtype={c: str for c in TEXT_COLUMNS},
            keep_default_na=False,
        )
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        return Timeline.empty(notes + [f"{path.name} could not be read ({str(e)[:80]})"])
    missing = [c for c in ["elapsed_s", "gpu", "memory_used_mib"] if c not in frame.columns]
    if missing:
        return Timeline.empty(notes + [f"{path.name} has no {', '.join(missing)} column: shown without it"])

    def numbers(column, low, high):
        values = pd.to_numeric(column, errors="coerce").astype("float64")
        return values.where((values >= low) & (values <= high))

    total = frame["memory_total_mib"] if "memory_total_mib" in frame else pd.Series("", index=frame.index)
    samples = pd.DataFrame(
        {
            "elapsed_s": numbers(frame["elapsed_s"], -MAX_SECONDS, MAX_SECONDS),
            "gpu": frame["gpu"].map(gpu_id),
            "used_mib": numbers(frame["memory_used_mib"], 0, MAX_MIB),
            "total_mib": numbers(total, 0, MAX_MIB),
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


HEADER = "time,elapsed_s,gpu,uuid,memory_used_mib,memory_total_mib,utilization_pct\n"


def row(t: float, gpu, used, uuid: str | None = None) -> str:
    uuid = uuid if uuid is not None else f"GPU-{gpu}"
    return f"2026-11-20T09:00:{t:06.3f}Z,{t},{gpu},{uuid},{used},81559,97\n"


HOSTILE = {
    "cut mid-number": HEADER + row(0, 0, 100) + row(0.1, 0, 101) + "2026-11-20T09:00:00.2Z,0.2,0,GPU-0,12",
    "blank tail": HEADER + row(0, 0, 100) + "   ",
    "carriage return end": HEADER + row(0, 0, 100) + row(0.1, 1, 7).rstrip("\n") + "\r",
    "all blank": "   \n  ",
    "empty": "",
    "header only": HEADER,
    "no gpu column": "time,elapsed_s,memory_used_mib\n1,2,3\n4,5,6",
    "unreadable cells": HEADER
    + row(0, 0, "x")
    + row(0.1, "99999", 5)
    + row(0.2, "cpu", 5)
    + row(0.3, 1, "inf")
    + row(0.4, 1, -3)
    + "2026-11-20T09:00:00Z,0.5,1\n"
    + row(0.6, " 2", 9),
    "too many fields": HEADER + row(0, 0, 1) + "a,b,c,d,e,f,g,h,i\n" + row(0.1, 0, 2),
    "not utf-8": (HEADER + row(0, 0, 1)).replace("GPU-0", "GPU-\udcff", 1),
    "time goes back": HEADER + row(5, 0, 1) + row(3, 0, 2) + row(4, 1, 3) + row(1, 1, 4) + row(2, 0, 5),
    "gpu ids sort as text": HEADER + row(0, 10, 1) + row(0, 2, 2) + row(0, "cpu", 3) + row(0.1, 10, 4),
    "uuid missing on first rows": "time,elapsed_s,gpu,uuid,memory_used_mib\n1,0,0,,5\n1,0.1,0\n1,0.2,0,GPU-x,6\n",
    "no uuid or time": "elapsed_s,gpu,memory_used_mib\n0,0,1\n0.1,0,2\n",
    "first time unreadable": HEADER.replace("time", "time", 1) + "yesterday,0,0,GPU-0,1,2,3\n" + row(0.1, 0, 2),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def assert_same_timeline(ours: Timeline, reference: Timeline) -> None:
    pd.testing.assert_frame_equal(ours.samples, reference.samples)
    assert ours.notes == reference.notes
    assert ours.gpu_names == reference.gpu_names and list(ours.gpu_names) == list(reference.gpu_names)
    assert ours.start == reference.start


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 2**16])
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_memory_csv_reads_as_the_whole_file_reader_did(tmp_path, monkeypatch, case, chunk_rows):
    monkeypatch.setattr(runfolder, "CSV_CHUNK_ROWS", chunk_rows)
    path = write(tmp_path / "logs" / "gpu_memory.csv", HOSTILE[case])
    assert_same_timeline(read_memory_csv(path), whole_file_memory_csv(path))


@pytest.mark.parametrize("chunk_rows", [7, 1000, 2**16])
def test_a_run_folders_memory_csv_reads_as_before(tmp_path, monkeypatch, chunk_rows):
    monkeypatch.setattr(runfolder, "CSV_CHUNK_ROWS", chunk_rows)
    monkeypatch.setattr(runfolder, "CSV_READ_BYTES", 4096)  # lines cross every read
    path = make_run(tmp_path / "run", seconds=60) / "logs" / "gpu_memory.csv"
    ours = read_memory_csv(path)
    assert len(ours.samples) == 5 * 600 and ours.start is not None
    assert_same_timeline(ours, whole_file_memory_csv(path))


def test_a_memory_csv_that_grows_past_its_limit_while_read_is_a_note(tmp_path, monkeypatch):
    path = write(tmp_path / "logs" / "gpu_memory.csv", HEADER + row(0, 0, 1) * 100)
    real_open = runfolder.open_regular

    def open_then_grow(*args, **kwargs):
        opened = real_open(*args, **kwargs)
        with open(path, "a") as f:
            f.write(row(1, 0, 2) * 100)
        return opened

    monkeypatch.setattr(runfolder, "open_regular", open_then_grow)
    limit = path.stat().st_size + 10
    monkeypatch.setattr(runfolder, "MEMORY_CSV_LIMIT", limit)
    t = read_memory_csv(path)
    assert t.samples.empty
    assert t.notes == [f"gpu_memory.csv could not be read (grew over the {limit / 2**20:g} MiB limit while read)"]


def traced_peak(read) -> tuple[int, object]:
    read()  # imports and caches: not what is measured
    tracemalloc.start()
    try:
        result = read()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_a_memory_csv_of_unreadable_rows_takes_the_same_memory_whatever_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "CSV_CHUNK_ROWS", 1000)
    peaks, sizes = [], []
    for rows in (25_000, 100_000):
        path = write(tmp_path / f"{rows}" / "gpu_memory.csv", HEADER + row(0, 0, "x") * rows + row(1, 0, 5))
        peak, timeline = traced_peak(lambda: read_memory_csv(path))
        assert len(timeline.samples) == 1 and f"{rows} unreadable sample(s)" in timeline.notes[0]
        peaks.append(peak)
        sizes.append(path.stat().st_size)
    # Four times the text, and pandas' own buffers aside (the same for both) only a few hundred bytes more
    # per chunk of rows: under a tenth of the extra text, where the whole-file reader took over 3x it.
    assert peaks[1] - peaks[0] < (sizes[1] - sizes[0]) / 10, (peaks, sizes)


def test_a_run_folders_memory_csv_takes_under_twice_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "CSV_CHUNK_ROWS", 2000)
    path = make_run(tmp_path / "run", seconds=600) / "logs" / "gpu_memory.csv"  # 30,000 rows, 15 chunks
    peak, timeline = traced_peak(lambda: read_memory_csv(path))
    assert len(timeline.samples) == 30_000
    assert peak < 2 * path.stat().st_size  # the whole-file reader, a string per cell: over 3x


# ---- nvidia-smi logs -----------------------------------------------------------------------------------

NVSMI_HEADER = "timestamp, index, memory.used [MiB], memory.total [MiB]"


def test_an_nvidia_smi_log_of_junk_holds_a_few_chunks_whatever_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(nvsmi, "CHUNK_CHARS", 64 * 2**10)
    lines = [NVSMI_HEADER] + ["Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error"] * 100_000
    path = tmp_path / "gpu_log.csv"
    path.write_text("\n".join([*lines, "2026/11/20 09:00:00.000, 0, 10 MiB, 81559 MiB"]) + "\n")
    assert path.stat().st_size > 100 * nvsmi.CHUNK_CHARS
    peak, timeline = traced_peak(lambda: read_nvidia_smi_csv(path))
    assert len(timeline.samples) == 1 and any("100000 line(s)" in n for n in timeline.notes)
    assert peak <= 16 * nvsmi.CHUNK_CHARS


def test_an_nvidia_smi_logs_memory_follows_its_samples_not_its_text(tmp_path, monkeypatch):
    monkeypatch.setattr(nvsmi, "CHUNK_CHARS", 64 * 2**10)
    rows = [
        f"2026/11/20 {9 + k // 3600:02d}:{k // 60 % 60:02d}:{k % 60:02d}.{3 * g:03d}, {g}, {1000 + k % 5000} MiB, 81559 MiB"
        for k in range(40_000)
        for g in range(2)
    ]
    path = tmp_path / "gpu_log.csv"
    path.write_text("\n".join([NVSMI_HEADER, *rows]) + "\n")
    assert path.stat().st_size > 50 * nvsmi.CHUNK_CHARS
    peak, timeline = traced_peak(lambda: read_nvidia_smi_csv(path))
    kept = timeline.samples.memory_usage(deep=True).sum()
    assert len(timeline.samples) == 80_000
    assert peak <= 3 * kept + 16 * nvsmi.CHUNK_CHARS, (peak, kept)


def line_by_line(layout, first: int, lines: list[str], skipped: Skipped) -> tuple[list[str], list[int]]:
    """The line filter before it ran on numpy, a line at a time in Python: the reference."""
    width, header, (suffix, suffixes) = len(layout.columns), layout.header, layout.mark
    kept, numbers = [], []
    for number, line in enumerate(lines, first):
        if line.count(",") == width - 1 and line != header and (width > 1 or line.strip()):
            if suffixes and line.count(suffix) < suffixes and "[" not in line and "N/A" not in line:
                skipped.add("junk", [number], [line])
                continue
            kept.append(line)
            numbers.append(number)
        elif line == header:
            skipped.add("repeated header" if skipped.count["header"] else "header", [number], [line])
        elif line.strip():
            skipped.add("junk", [number], [line])
        else:
            skipped.add("blank", [number], [line])
    return kept, numbers


PIECES = [
    "2026/11/20 09:14:02.100",
    ", ",
    ",",
    "0",
    "12 MiB",
    " MiB",
    "[N/A]",
    "N/A",
    " ",
    "\t",
    "\u00a0",
    "\x1c",
    "é",
    "x",
]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.lists(st.sampled_from(PIECES), max_size=6).map("".join), min_size=1, max_size=30),
    width=st.integers(1, 3),
    with_units=st.booleans(),
    first=st.integers(1, 1000),
    headers_before=st.booleans(),
)
def test_the_numpy_line_filter_sorts_lines_as_the_python_loop_did(lines, width, with_units, first, headers_before):
    columns = ["timestamp", "memory.used", "memory.total"][:width]
    header = ", ".join(columns)
    lines = [header if line == "x" else line for line in lines]  # headers among the lines
    layout = nvsmi.Layout("gpu_log.csv", columns, header, {}, (" MiB", width - 1) if with_units else ("", 0))
    ours, reference = Skipped(), Skipped()
    if headers_before:
        ours.count["header"] = reference.count["header"] = 1
    text, numbers = nvsmi.split_lines(layout, LineBlock(first, "".join(f"{line}\n" for line in lines)), ours)
    kept, kept_numbers = line_by_line(layout, first, lines, reference)
    assert text.decode() == "".join(f"{line}\n" for line in kept)
    assert numbers.tolist() == kept_numbers
    assert ours.count == reference.count and ours.first == reference.first
    assert np.issubdtype(numbers.dtype, np.unsignedinteger)


def test_the_memory_csv_limit_still_holds(tmp_path, monkeypatch):
    path = write(tmp_path / "logs" / "gpu_memory.csv", HEADER + row(0, 0, 1) * 10)
    monkeypatch.setattr(runfolder, "MEMORY_CSV_LIMIT", 100)
    t = read_memory_csv(path)
    assert t.samples.empty and t.notes == ["gpu_memory.csv could not be read (0.0 MiB, over the 9.53674e-05 MiB limit)"]
