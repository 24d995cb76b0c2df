"""Benchmark: the runner's log tracker (runner/logparse.py) over a 200,000-line log, as a long run prints it.

Target: under 1 s of CPU for 200,000 lines on the project's 2-core machine, i.e. the tracker never
falls behind a run that prints thousands of lines a second. CPU time, min/median/max over repeated
runs; the machine's load is printed with them. Run:
    .venv/bin/python tests/bench/bench_logparse.py [--runs 5]
Not collected by pytest: under load a CPU-time figure still moves (was a unit test that failed at 1.4 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the log the unit tests use

from test_runner_logs import _long_log  # noqa: E402

from avatardoctor.runner.logparse import LogTracker  # noqa: E402

LINES = 200_000
TARGET_CPU_S = 1.0


def once(lines: list[str]) -> float:
    tracker = LogTracker(1)
    started = time.process_time()
    for i, line in enumerate(lines):
        tracker.feed(line, i * 0.01)
    assert tracker.clips_done == 1_250
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    lines = _long_log(LINES)
    load = os.getloadavg()[0]
    times = [once(lines) for _ in range(args.runs)]
    print(
        f"{LINES:,} lines: CPU {min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} s "
        f"(min/median/max of {args.runs}), target < {TARGET_CPU_S:.1f} s; "
        f"{LINES / statistics.median(times):,.0f} lines/s; load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
