"""Benchmark: render a whole report of a 2-hour run of 5 GPUs sampled at 10 Hz (360,000 rows), from a
run folder and from a plain nvidia-smi CSV log. Target: under 5 s each on the 2-core machine; the
HTML under 2 MB. Run:
    .venv/bin/python tests/bench/bench_report.py [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the run-folder fixture

from runfixture import make_run  # noqa: E402

from avatardoctor.reports.render import render_report  # noqa: E402

TARGET_S, HTML_LIMIT = 5.0, 2 * 2**20


def nvidia_smi_log(path: Path, seconds: float, gpus: int, hz: float) -> None:
    """What `nvidia-smi --query-gpu=timestamp,index,memory.used,memory.total --format=csv -lms 100` writes."""
    t = np.arange(0, seconds, 1 / hz)
    stamps = (
        (pd.Timestamp("2026-11-20 09:00:00") + pd.to_timedelta(t, unit="s")).strftime("%Y/%m/%d %H:%M:%S.%f").str[:-3]
    )
    rows = [
        f"{s}, {g}, {int(30000 + 5000 * np.sin(i / 50 + g))} MiB, 81559 MiB"
        for i, s in enumerate(stamps)
        for g in range(gpus)
    ]
    path.write_text("timestamp, index, memory.used [MiB], memory.total [MiB]\n" + "\n".join(rows) + "\n")


def timed(fn, runs: int) -> tuple[float, Path]:
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", gpus=5, seconds=7200, hz=10)
        rows = sum(1 for _ in open(run / "logs" / "gpu_memory.csv")) - 1
        seconds, index = timed(lambda: render_report(run, force=True), args.runs)
        size = index.stat().st_size
        print(
            f"run folder: {rows:,} rows, report in {seconds:.2f} s (median of {args.runs}), HTML {size / 2**20:.2f} MiB"
        )
        log = Path(tmp) / "gpu_log.csv"
        nvidia_smi_log(log, 7200, 5, 10)
        seconds_csv, index_csv = timed(lambda: render_report(log, force=True), args.runs)
        print(
            f"nvidia-smi CSV: 360,000 rows, report in {seconds_csv:.2f} s (median of {args.runs}), "
            f"HTML {index_csv.stat().st_size / 2**20:.2f} MiB"
        )
        ok = max(seconds, seconds_csv) < TARGET_S and max(size, index_csv.stat().st_size) < HTML_LIMIT
        print("PASS" if ok else "OVER TARGET")


if __name__ == "__main__":
    main()
