"""Fuzzing `avatardoctor report`: nvidia-smi logs (header variants, encodings, junk lines, odd indexes and
units) and run folders (wrong-typed JSON, odd CSV values, hostile GPU names, links, FIFOs). Whatever the
input: exit 0 or a one-line error (exit 2), no traceback, and nothing written outside the report folder.

Readers are fuzzed directly (fast, many examples) and through the CLI (PNG rendering: few examples in CI).
Corpus files in corpus/reports/: `*.csv` is a log; `*.log.json` a log with --fields, {"log": "text", "fields":
"a,b"}; `*.run.json` a run folder, {"path": "text"} per file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from harness import corpus_files, fuzz_settings, run_cli
from hypothesis import given
from hypothesis import strategies as st

from avatardoctor.errors import InputError
from avatardoctor.reports.nvsmi import read_nvidia_smi_csv
from avatardoctor.reports.runfolder import read_run_folder
from avatardoctor.reports.summary import build_summary

CATEGORY = "reports"
FIELDS = [
    "timestamp",
    "index",
    "uuid",
    "pci.bus_id",
    "name",
    "gpu_name",
    "memory.used",
    "memory.total",
    "memory.free",
    "utilization.gpu",
    "Memory.Used",
]
UNITS = ["", " [MiB]", " [GiB]", " [KiB]", " [%]", " [MB]", " []"]
INDEXES = [
    "0",
    "1",
    "4",
    "1023",
    "1024",
    "-1",
    "999999999",
    "99999999999999999999999",
    "1.5",
    "²",
    "0x1",
    "",
    "[N/A]",
    " 3 ",
]
MEMORY = [
    "0",
    "1234",
    "81559",
    "1234 MiB",
    "10.5 GiB",
    "[N/A]",
    "[Not Supported]",
    "N/A",
    "inf",
    "-5",
    "1e300",
    "nan",
    "12",
    "",
    "1234 MiB MiB",
    "١٢٣",
]
TEXT = [
    "NVIDIA H800",
    "GPU-0f1e2d3c-aaaa",
    "GPU-0f1e2d3c-bbbb",
    "00000000:3B:00.0",
    "<script>",
    "/../../../x",
    "a" * 300,
    "",
    "$\\foo$",
    "\u202e",
    "{{ x }}",
]
STAMPS = [
    "2026/11/20 09:14:02.123",
    "2026/11/20 09:14:03.100",
    "2026/11/20 09:14:01.000",
    "1969/01/01 00:00:00.000",
    "9999/12/31 23:59:59.999",
    "/11/20 09:14:02",
    "garbage",
]
JUNK = [
    "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error",
    "",
    "   ",
    "\x00\x01",
    '"unterminated, quote',
    ",,,,",
    "timestamp, memory.used [MiB]",
    "\ufeffindex, memory.used [MiB]",
    "# comment",
]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1"]

header_fields = st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(UNITS)), min_size=1, max_size=6)


@st.composite
def nvsmi_logs(draw) -> tuple[bytes, list[str] | None]:
    """A log's bytes and, sometimes, a --fields list: rows mostly of the header's width, values drawn per field."""
    fields = draw(header_fields)
    names = [f.lower() for f, _ in fields]

    def value(name: str) -> str:
        if name == "timestamp":
            return draw(st.sampled_from(STAMPS))
        if name == "index":
            return draw(st.sampled_from(INDEXES[:4]) if draw(st.integers(0, 4)) else st.sampled_from(INDEXES))
        if name.startswith("memory"):
            return draw(st.sampled_from(MEMORY[:4]) if draw(st.integers(0, 3)) else st.sampled_from(MEMORY))
        return draw(st.sampled_from(TEXT))

    lines = [", ".join(f + u for f, u in fields)] if draw(st.booleans()) or len(fields) > 3 else []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            lines.append(", ".join(value(n) for n in names))
        elif kind < 9:
            lines.append(draw(st.sampled_from(JUNK)))
        else:
            lines.append(draw(st.text(max_size=40)))
    if draw(st.integers(0, 3)) == 0:
        lines = [""] * draw(st.integers(1, 60)) + lines
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n", "\n2026/11/20 09:14:0"]))
    raw = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    fields_flag = [",".join(n for n in names)] if draw(st.integers(0, 4)) == 0 else None
    return raw, fields_flag


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
PLAN_KEYS = {"config": ["mode", "nproc", "size", "fp8"], "argv": None, "prediction": ["verdict", "gpus"]}
DEBUG_KEYS = {
    "outcome": None,
    "failure": ["class", "gpu", "phase", "message", "remedy", "tried_to_allocate_mib", "at_elapsed_s"],
    "durations": ["total_s"],
    "clips_done": None,
    "gpu_names": ["0", "1"],
}
GPU_VALUES = ["0", "1", "cpu", "/../../../escaped", "..", "9999999999", "-1", "1.0", "", "a/b", "<b>", " 2 ", "007"]
NUMBERS = ["0", "1.5", "30000", "-1", "inf", "-inf", "nan", "1e308", "", "x", "99999999999999999999"]


@st.composite
def json_docs(draw, keys: dict) -> str:
    """A plan.json / debug_info.json: the known keys with well- or wrong-typed values, or not JSON at all."""
    doc = {}
    for key, inner in keys.items():
        if draw(st.booleans()):
            if inner and draw(st.booleans()):
                doc[key] = {k: draw(json_values) for k in inner if draw(st.booleans())}
                if key == "prediction" and draw(st.booleans()):
                    doc[key]["gpus"] = draw(
                        st.lists(st.fixed_dictionaries({"index": json_values, "peak_gib": json_values}), max_size=3)
                    )
            elif key == "argv":
                doc[key] = draw(st.lists(st.sampled_from(["--prompt", "--size", "x" * 5000]) | json_values, max_size=4))
            else:
                doc[key] = draw(json_values)
    text = json.dumps(doc, allow_nan=True)
    return draw(st.sampled_from([text, text, text, "[1, 2]", "{", "null", "\ufeff" + text]))


@st.composite
def csv_texts(draw, header: list[str], columns: list[list[str]]) -> str:
    rows = [",".join(draw(st.sampled_from(values)) for values in columns) for _ in range(draw(st.integers(0, 8)))]
    head = draw(
        st.sampled_from([",".join(header), ",".join(header[:-1]), "", "x,y"])
        if draw(st.integers(0, 5)) == 0
        else st.just(",".join(header))
    )
    return "\n".join([head, *rows]) + draw(st.sampled_from(["\n", "", "\n1,2"]))


RUN_FILES = ["plan.json", "debug_info.json", "logs/gpu_memory.csv", "logs/phases.csv"]
MEMORY_HEADER = ["time", "elapsed_s", "gpu", "uuid", "memory_used_mib", "memory_total_mib", "utilization_pct"]
run_folders = st.fixed_dictionaries(
    {
        "plan.json": json_docs(PLAN_KEYS),
        "debug_info.json": json_docs(DEBUG_KEYS),
        "logs/gpu_memory.csv": csv_texts(
            MEMORY_HEADER, [["2026-11-20T09:00:00Z", "x"], NUMBERS, GPU_VALUES, TEXT, NUMBERS, NUMBERS, NUMBERS]
        ),
        "logs/phases.csv": csv_texts(["phase", "start_s", "end_s"], [TEXT + ["load"], NUMBERS, NUMBERS]),
    }
)
SPECIALS = ["file", "file", "file", "missing", "fifo", "dev-zero", "link-out", "dir"]


def materialise(root: Path, files: dict[str, str], specials: dict[str, str]) -> Path:
    """A run folder of these files; some replaced by a FIFO, a link to /dev/zero or out of the folder, a directory."""
    run = root / "run"
    (run / "logs").mkdir(parents=True)
    outside = root / "outside.json"
    outside.write_text("{}")
    for name, text in files.items():
        path = run / name
        special = specials.get(name, "file")
        if special == "file":
            path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        elif special == "fifo":
            os.mkfifo(path)
        elif special == "dev-zero":
            path.symlink_to("/dev/zero")
        elif special == "link-out":
            path.symlink_to(outside)
        elif special == "dir":
            path.mkdir()
    return run


def everything_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_report_stays_inside(root: Path, args: list[str], out: Path) -> None:
    before = everything_under(root)
    result = run_cli("report", *args, "-o", str(out))
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    written = {p for p in everything_under(root) - before if out not in p.parents and p != out}
    assert not written, written


def check_log(path: Path, fields: list[str] | None) -> None:
    """The reader's promises: a one-line error, or samples of GPUs 0-1023 with memory a GPU can hold."""
    try:
        timeline = read_nvidia_smi_csv(path, fields=fields)
    except InputError as e:
        assert "\n" not in str(e)
        return
    build_summary(path, "nvidia-smi", timeline)
    samples = timeline.samples
    assert samples["used_mib"].dropna().between(0, 2**30).all() and samples["elapsed_s"].notna().all()
    assert all(g.isdigit() and int(g) <= 1023 for g in timeline.gpus)


@fuzz_settings(ci_examples=60)
@given(nvsmi_logs())
def test_fuzz_nvidia_smi_log_reader(log):
    raw, fields = log
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gpu_log.csv"
        path.write_bytes(raw)
        check_log(path, fields)


@fuzz_settings(ci_examples=6)
@given(nvsmi_logs())
def test_fuzz_nvidia_smi_log_report(log):
    raw, fields = log
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "gpu_log.csv").write_bytes(raw)
        args = [str(root / "gpu_log.csv"), *(["--fields", fields[0]] if fields else [])]
        assert_report_stays_inside(root, args, root / "out")


@fuzz_settings(ci_examples=40)
@given(run_folders, st.dictionaries(st.sampled_from(RUN_FILES), st.sampled_from(SPECIALS), max_size=2))
def test_fuzz_run_folder_reader(files, specials):
    with tempfile.TemporaryDirectory() as folder:
        run = materialise(Path(folder), files, specials)
        folder_read = read_run_folder(run)
        summary = build_summary(run, "run", folder_read.timeline, folder_read)
        json.dumps(summary, allow_nan=False)  # summary.json is valid JSON: no NaN or Infinity
        assert all(g["gpu"] == "cpu" or (g["gpu"].isdigit() and int(g["gpu"]) <= 1023) for g in summary["gpus"])


@fuzz_settings(ci_examples=6)
@given(
    run_folders,
    st.dictionaries(st.sampled_from(RUN_FILES), st.sampled_from(SPECIALS), max_size=2),
    st.sampled_from(["new", "report-link", "file", "ours-with-links"]),
)
def test_fuzz_run_folder_report(files, specials, output):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        run = materialise(root, files, specials)
        out = run / "report"
        if output == "report-link":
            (root / "elsewhere").mkdir()
            (root / "elsewhere" / "keep.png").write_bytes(b"keep")
            out.symlink_to(root / "elsewhere")
        elif output == "file":
            out.write_text("keep")
        elif output == "ours-with-links":
            out.mkdir()
            (out / "summary.json").write_text(json.dumps({"schema": "avatardoctor.report/1"}))
            (out / "timeline-gpu0.png").symlink_to(root / "outside.json")
        assert_report_stays_inside(root, [str(run)], out)
        assert (root / "outside.json").read_text() == "{}"
        if output == "report-link":
            assert (root / "elsewhere" / "keep.png").read_bytes() == b"keep"


def corpus_case(path: Path, root: Path) -> list[str]:
    """The report's arguments for a corpus file, made real under root."""
    if path.name.endswith(".run.json"):
        return [str(materialise(root, json.loads(path.read_text()), {}))]
    if path.name.endswith(".log.json"):
        case = json.loads(path.read_text())
        (root / "gpu_log.csv").write_text(case["log"])
        return [str(root / "gpu_log.csv"), "--fields", case["fields"]]
    (root / path.name).write_bytes(path.read_bytes())
    return [str(root / path.name)]


@pytest.mark.parametrize("crasher", corpus_files(CATEGORY), ids=lambda p: p.name)
def test_corpus_crasher_is_a_report_or_a_one_line_error(crasher, tmp_path):
    args = corpus_case(crasher, tmp_path)
    if not crasher.name.endswith(".run.json"):
        check_log(Path(args[0]), args[2:] or None)
    assert_report_stays_inside(tmp_path, args, tmp_path / "out")
