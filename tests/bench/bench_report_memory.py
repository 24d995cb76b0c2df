"""Benchmark: peak memory of reading a GPU memory log, as a multiple of the log's size, at several sizes.

Target (issue 19): at most ~2x the log below the streaming threshold (STREAM_SAMPLES samples, ~55 MB of
nvidia-smi log), and past it a peak that no longer grows with the log. Run:
    .venv/bin/python tests/bench/bench_report_memory.py [--hours 2 10 20 40] [--gpus 5] [--hz 10] [--copies 1]
For each HOURS it writes the same run twice, as bench_report_parse.py does: an nvidia-smi log (COPIES times
over, as `>>` appends logs) and a run folder's logs/gpu_memory.csv (one copy; past its 256 MiB cap the
reader's note is printed). Each is parsed in a fresh process, whose peak resident memory (VmHWM, reset
after the imports) is compared with its memory before the parse and with the log's size; the last column
says whether the log was past the threshold (kept as an envelope). Memory does not move with the machine's
load; the load average is printed all the same.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_report_parse import write_log, write_run_folder_csv

CHILD = """
import re, sys
from pathlib import Path
from avatardoctor.reports.nvsmi import read_nvidia_smi_csv
from avatardoctor.reports.runfolder import read_memory_csv
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
read = read_nvidia_smi_csv if sys.argv[1] == "nvidia-smi" else read_memory_csv
Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the memory now in use
before = status("VmRSS")
timeline = read(Path(sys.argv[2]))
print(before, status("VmHWM"), sum(timeline.counts.values()) or len(timeline.samples), len(timeline.samples))
print(*timeline.notes[-1:])  # the reason when nothing was read (over the size cap, say)
"""


def peak(kind: str, hours: float, path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, check=True
    ).stdout
    numbers, last_note = out.split("\n", 1)
    before, hwm, samples, kept = map(int, numbers.split())
    if not samples:
        print(f"| {kind} | {hours:g} h | nothing read: {last_note.strip()} |")
        return
    size, added = path.stat().st_size, hwm - before
    envelope = f"envelope, {kept:,} samples kept" if kept < samples else "every sample kept"
    print(
        f"| {kind} | {hours:g} h | {size / 2**20:,.0f} MiB | {samples / 1e6:.2f} M | {added / 2**20:,.0f} MiB "
        f"| **{added / size:.2f}x** | {envelope} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="+", default=[2.0, 10.0, 20.0, 40.0])
    parser.add_argument("--gpus", type=int, default=5)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.gpus} GPUs at {args.hz:g} Hz, nvidia-smi logs x{args.copies}; parse added = VmHWM - VmRSS before")
    print("| input | run | log | samples | parse added | x the log | kept |")
    print("|---|---|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as folder:
        for hours in args.hours:
            path = Path(folder) / "gpu_log.csv"
            write_log(path, hours, args.gpus, args.hz)
            if args.copies > 1:
                one_log = path.read_bytes()
                with path.open("ab") as log:
                    for _ in range(args.copies - 1):
                        log.write(one_log)
                del one_log
            peak("nvidia-smi", hours, path)
            path.unlink()
            memory_csv = Path(folder) / "logs" / "gpu_memory.csv"
            memory_csv.parent.mkdir(exist_ok=True)
            write_run_folder_csv(memory_csv, hours, args.gpus, args.hz)
            peak("run folder", hours, memory_csv)
            memory_csv.unlink()
    print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
