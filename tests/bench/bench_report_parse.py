"""Benchmark: reading GPU memory logs for `report`, as a ratio to pandas.read_csv on the same file.

Target (issue 19): each reader's time within 1.5x `pandas.read_csv(path)` (defaults) on the same file, so
validating, streaming and typing the samples cost at most half a plain parse. Run:
    .venv/bin/python tests/bench/bench_report_parse.py [--hours 2 10] [--gpus 5] [--hz 10] [--runs 7]
For each HOURS (the default's 2 h is under the readers' streaming threshold, 10 h past it: kept as an
envelope), it writes the log of an HOURS-long run of GPUS GPUs sampled at HZ twice: as
`nvidia-smi --query-gpu=timestamp,index,memory.used,memory.total,utilization.gpu --format=csv -lms 100`
writes it (with a few nvidia-smi error lines and a repeated header mixed in), and as a run folder's
logs/gpu_memory.csv. Then RUNS times, interleaved so that a change in the machine's load falls on both
alike: each reader, and pandas.read_csv on its file, in wall-clock and CPU seconds (both single-threaded;
CPU time moves less with the load). Ratios are per run; min / median / max are printed, with the load
average at the start and the end; the verdict is on the CPU ratio's median. Not collected by pytest.
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
import pandas as pd
from benchstats import spread

from avatardoctor.reports.nvsmi import read_nvidia_smi_csv
from avatardoctor.reports.runfolder import read_memory_csv

TARGET_RATIO = 1.5
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


def write_run_folder_csv(path: Path, hours: float, gpus: int, hz: float) -> int:
    """logs/gpu_memory.csv as the runner's sampler writes it, for the same run."""
    samples = int(hours * 3600 * hz)
    t = np.repeat(np.arange(samples) / hz, gpus)
    gpu = np.tile(np.arange(gpus), samples)
    frame = pd.DataFrame(
        {
            "time": (pd.Timestamp("2026-11-20T09:14:02Z") + pd.to_timedelta(t, unit="s")).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            "elapsed_s": t.round(3),
            "gpu": gpu,
            "uuid": [f"GPU-{g:08d}-0000-0000-0000-000000000000" for g in gpu],
            "memory_used_mib": (600 + np.minimum(1, t / 120) * 61000).round(0),
            "memory_total_mib": 81559,
            "utilization_pct": 97,
        }
    )
    frame.to_csv(path, index=False)
    return len(frame) + 1


def timed(run) -> tuple[float, float]:
    """(wall, CPU) seconds of one call: CPU time moves less than wall time with the machine's load."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, nargs="+", default=[2.0, 10.0])
    parser.add_argument("--gpus", type=int, default=5)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    verdicts = [bench(hours, args) for hours in args.hours]
    print("PASS" if all(verdicts) else "OVER TARGET")


def bench(hours: float, args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory() as folder:
        nvsmi_log, memory_csv = Path(folder) / "gpu_log.csv", Path(folder) / "logs" / "gpu_memory.csv"
        memory_csv.parent.mkdir()
        lines = {"nvidia-smi log": write_log(nvsmi_log, hours, args.gpus, args.hz)}
        lines["run folder gpu_memory.csv"] = write_run_folder_csv(memory_csv, hours, args.gpus, args.hz)
        readers = {
            "nvidia-smi log": (nvsmi_log, lambda: read_nvidia_smi_csv(nvsmi_log)),
            "run folder gpu_memory.csv": (memory_csv, lambda: read_memory_csv(memory_csv)),
        }
        load_start = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}  # (wall, CPU) seconds
        anchors: dict[str, list[tuple[float, float]]] = {name: [] for name in readers}
        samples = {}

        def count(timeline) -> str:
            kept = len(timeline.samples)
            return (
                f"{sum(timeline.counts.values()):,} samples, {kept:,} kept" if timeline.counts else f"{kept:,} samples"
            )

        for _ in range(args.runs):
            for name, (path, read) in readers.items():
                times[name].append(timed(lambda: samples.__setitem__(name, count(read()))))
                anchors[name].append(timed(lambda: pd.read_csv(path)))
        load_end = os.getloadavg()
        sizes = {name: path.stat().st_size for name, (path, _) in readers.items()}
    print(f"{hours:g} h of {args.gpus} GPUs at {args.hz:g} Hz; {args.runs} runs on {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min): start {' '.join(f'{x:.2f}' for x in load_start)}, ", end="")
    print(f"end {' '.join(f'{x:.2f}' for x in load_end)}")
    verdicts = []
    for name in readers:
        print(f"{name}: {lines[name]:,} lines, {sizes[name] / 1e6:.1f} MB, {samples[name]}")
        for kind, i in (("wall", 0), ("CPU", 1)):
            ours, anchor = [t[i] for t in times[name]], [t[i] for t in anchors[name]]
            ratios = [o / a for o, a in zip(ours, anchor)]
            print(
                f"  {kind:<4} ours {spread(ours, '.3f')} s, pandas.read_csv {spread(anchor, '.3f')} s (min / median / max)"
            )
            print(f"       ours / pandas.read_csv, per run: {spread(ratios, '.2f')}   (target <= {TARGET_RATIO})")
        verdicts.append(statistics.median(ratios) <= TARGET_RATIO)
    return all(verdicts)


if __name__ == "__main__":
    main()
