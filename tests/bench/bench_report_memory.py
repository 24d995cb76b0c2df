"""Benchmark: peak memory of reading a long GPU memory log, as a multiple of the log's size.

Target (issue 19): at most ~2x the log, and beyond the samples kept (typed arrays, a fixed number of bytes
each) a working set that does not grow with the log. Run:
    .venv/bin/python tests/bench/bench_report_memory.py [--hours 20] [--gpus 5] [--hz 10] [--copies 1]
It writes the same run twice, as bench_report_parse.py does: an nvidia-smi log (COPIES times over, as `>>`
appends logs: 24 h x 9 is ~2 GiB, the reader's cap) and a run folder's logs/gpu_memory.csv (one copy; its
cap is 256 MiB: past it, the reader's note is printed). Each is parsed in a fresh process, whose peak resident memory (VmHWM, reset after the
imports) is compared with its memory before the parse and with the bytes of the samples it returned.
Memory does not move with the machine's load; the load average is printed all the same.
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
print(before, status("VmHWM"), len(timeline.samples), timeline.samples.memory_usage(index=False).sum())
print(*timeline.notes[-1:])  # the reason when nothing was read (over the size cap, say)
"""


def peak(kind: str, path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, check=True
    ).stdout
    numbers, last_note = out.split("\n", 1)
    before, hwm, samples, kept = map(int, numbers.split())
    if not samples:
        print(f"{kind}: nothing read: {last_note.strip()}")
        return
    size, added = path.stat().st_size, hwm - before
    print(f"{kind}: log {size / 2**20:,.0f} MiB, {samples:,} samples ({size / max(samples, 1):.0f} bytes of log each)")
    print(f"  parse added {added / 2**20:,.0f} MiB = {added / size:.2f}x the log (target <= 2x)")
    print(f"  of which the samples returned {kept / 2**20:,.0f} MiB; the rest {(added - kept) / 2**20:,.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=20.0)
    parser.add_argument("--gpus", type=int, default=5)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gpu_log.csv"
        write_log(path, args.hours, args.gpus, args.hz)
        one_log = path.read_bytes()
        with path.open("ab") as log:
            for _ in range(args.copies - 1):
                log.write(one_log)
        del one_log
        peak("nvidia-smi", path)
        path.unlink()
        memory_csv = Path(folder) / "logs" / "gpu_memory.csv"
        memory_csv.parent.mkdir()
        write_run_folder_csv(memory_csv, args.hours, args.gpus, args.hz)
        peak("run folder", memory_csv)


if __name__ == "__main__":
    main()
