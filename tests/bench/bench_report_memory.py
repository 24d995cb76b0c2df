"""Benchmark: peak memory of reading a long nvidia-smi log, as a multiple of the log's size.

Target: at most ~2x the log (issue 14: the reader held ~7.4x, so a 2 GiB log failed under a 12 GiB cap).
Run:
    .venv/bin/python tests/bench/bench_report_memory.py [--hours 20] [--gpus 5] [--hz 10] [--copies 1]
It writes the log as bench_report_parse.py does (COPIES times over, as `>>` appends logs: 24 h x 9 is
~2 GiB), then parses it in a fresh process and compares that process's peak resident memory (VmHWM,
reset after the imports) with its memory before the parse.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_report_parse import write_log

CHILD = """
import re, sys
from pathlib import Path
from avatardoctor.reports.nvsmi import read_nvidia_smi_csv
status = lambda key: int(re.search(key + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024
Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak (VmHWM) restarts from the memory now in use
before = status("VmRSS")
timeline = read_nvidia_smi_csv(sys.argv[1])
print(before, status("VmHWM"), len(timeline.samples))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=20.0)
    parser.add_argument("--gpus", type=int, default=5)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gpu_log.csv"
        write_log(path, args.hours, args.gpus, args.hz)
        one_log = path.read_bytes()
        with path.open("ab") as log:
            for _ in range(args.copies - 1):
                log.write(one_log)
        del one_log
        size = path.stat().st_size
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True
        ).stdout
    before, peak, samples = map(int, out.split())
    print(
        f"log {size / 2**20:.0f} MiB, {samples:,} samples: peak {peak / 2**20:.0f} MiB, {before / 2**20:.0f} MiB before the parse"
    )
    print(f"parse added {(peak - before) / 2**20:.0f} MiB = {(peak - before) / size:.2f}x the log (target <= 2x)")


if __name__ == "__main__":
    main()
