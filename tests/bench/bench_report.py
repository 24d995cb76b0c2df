"""Benchmark: render a whole report of a 2-hour run of 5 GPUs sampled at 10 Hz (360,000 rows), from a
run folder and from a plain nvidia-smi CSV log, against an anchor timed in the same rounds: the least any
report of that log does (`pandas.read_csv` of it, and matplotlib drawing as many 1,500-point PNGs as the
report has images). Prints min / median / max of the per-round ratio and the load at the start and end.
Target: under 5 s each on the 2-core machine; the HTML under 2 MB. Run:
    .venv/bin/python tests/bench/bench_report.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
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


def anchor(log: Path, figures: int) -> None:
    """The floor of any report of this log: read it, draw `figures` PNGs of 1,500 points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pd.read_csv(log)
    for n in range(figures):
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.plot(np.arange(1500), np.sin(np.arange(1500) / (50 + n)))
        ax.set_xlabel("elapsed (s)")
        ax.set_ylabel("memory used (GiB)")
        fig.savefig(log.parent / f"anchor-{n}.png", dpi=100)
        plt.close(fig)


def rounds(name: str, render, log: Path, runs: int) -> tuple[float, Path]:
    """Report and anchor in alternation; prints the ratio's min / median / max and the report's median."""
    ratios, seconds, index = [], [], None
    for _ in range(runs):
        start = time.perf_counter()
        index = render()
        took = time.perf_counter() - start
        images = len(list(index.parent.glob("*.png")))
        start = time.perf_counter()
        anchor(log, images)
        ratios.append(took / (time.perf_counter() - start))
        seconds.append(took)
    print(
        f"{name}: report in {statistics.median(seconds):.2f} s (median of {runs}), "
        f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} x the anchor "
        f"({images} images), HTML {index.stat().st_size / 2**20:.2f} MiB"
    )
    return statistics.median(seconds), index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", gpus=5, seconds=7200, hz=10)
        memory_csv = run / "logs" / "gpu_memory.csv"
        rows = sum(1 for _ in open(memory_csv)) - 1
        seconds, index = rounds(
            f"run folder ({rows:,} rows)", lambda: render_report(run, force=True), memory_csv, args.runs
        )
        log = Path(tmp) / "gpu_log.csv"
        nvidia_smi_log(log, 7200, 5, 10)
        seconds_csv, index_csv = rounds(
            "nvidia-smi CSV (360,000 rows)", lambda: render_report(log, force=True), log, args.runs
        )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        size = index.stat().st_size
        ok = max(seconds, seconds_csv) < TARGET_S and max(size, index_csv.stat().st_size) < HTML_LIMIT
        print("PASS" if ok else "OVER TARGET")


if __name__ == "__main__":
    main()
