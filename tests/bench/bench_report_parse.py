"""Benchmark: reading a long nvidia-smi memory log with reports.nvsmi.read_nvidia_smi_csv.

Target: median under 2 s (the whole report must render in under 5 s on the project's 2-core machine).
Run:
    .venv/bin/python tests/bench/bench_report_parse.py [--hours 2] [--gpus 5] [--hz 10] [--runs 3]
It writes the log of a HOURS-long run of GPUS GPUs sampled at HZ, as
`nvidia-smi --query-gpu=timestamp,index,memory.used,memory.total,utilization.gpu --format=csv -lms 100`
writes it, with a few nvidia-smi error lines and a repeated header mixed in, to a temporary folder,
then times the parse RUNS times. Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from avatardoctor.reports.nvsmi import read_nvidia_smi_csv

TARGET_S = 2.0
HEADER = "timestamp, index, memory.used [MiB], memory.total [MiB], utilization.gpu [%]"
JUNK = "Unable to determine the device handle for GPU0000:3B:00.0: Unknown Error"


def write_log(path: Path, hours: float, gpus: int, hz: float) -> int:
    """A realistic log: memory ramps up while the weights load, then wobbles per denoising step."""
    rng = np.random.default_rng(0)
    samples = int(hours * 3600 * hz)
    start = datetime(2026, 11, 20, 9, 14, 2, 123000)
    lines = [HEADER]
    for k in range(samples):
        stamp = (start + timedelta(seconds=k / hz)).strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]
        loaded = min(1.0, k / (120 * hz))
        for gpu in range(gpus):
            used = int(600 + loaded * 61000 + rng.integers(0, 2500))
            lines.append(f"{stamp}, {gpu}, {used} MiB, 81559 MiB, {int(rng.integers(0, 101))} %")
        if k in (samples // 3, 2 * samples // 3):
            lines.append(JUNK)
        if k == samples // 2:
            lines.append(HEADER)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--gpus", type=int, default=5)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gpu_log.csv"
        line_count = write_log(path, args.hours, args.gpus, args.hz)
        size_mb = path.stat().st_size / 1e6
        times, timeline = [], None
        for _ in range(args.runs):
            begin = time.perf_counter()
            timeline = read_nvidia_smi_csv(path)
            times.append(time.perf_counter() - begin)
    median = statistics.median(times)
    print(
        f"{line_count:,} lines, {size_mb:.1f} MB ({args.hours:g} h, {args.gpus} GPUs, {args.hz:g} Hz), {args.runs} runs on {os.cpu_count()} CPUs"
    )
    print(f"parsed {len(timeline.samples):,} samples; notes: {len(timeline.notes)}")
    for note in timeline.notes:
        print(f"  - {note}")
    print(
        f"median {median:.3f} s   min {min(times):.3f} s   max {max(times):.3f} s   "
        f"({len(timeline.samples) / median / 1e6:.2f} M rows/s)   target < {TARGET_S} s"
    )
    print("PASS" if median < TARGET_S else "OVER TARGET")


if __name__ == "__main__":
    main()
