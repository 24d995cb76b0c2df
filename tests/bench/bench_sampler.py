"""Benchmark: what the memory sampler (runner/sampler.py) costs per sample, and the share of a core it takes.

Target: the runner's overhead under 2% of the demo's wall time.
Run:
    .venv/bin/python tests/bench/bench_sampler.py [--seconds 10] [--rates 10,100] [--children 4] [--source psutil]
It starts a small process tree (CHILDREN sleeping Python processes, one of them with a child of its
own), samples it at each rate for SECONDS into a temporary run folder, and prints, per rate: the
samples taken, the mean wall time of one sample, the sampling thread's CPU time per sample
(time.thread_time, which includes waking up between samples) and that CPU time as a share of one
core, and how well the schedule held: samples against the slots the clock allowed, and the share taken
within 30% of a period of their slot (the figures tests/test_runner_sampler.py no longer asserts: a
busy machine moves them). The psutil path re-lists the tree once a second by walking /proc, so its cost grows with the
number of processes on the machine, which is printed too. `--source nvml` measures the GPU path
(it needs a GPU). Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from avatardoctor.runner.folder import RunFolder
from avatardoctor.runner.sampler import MemorySampler

SLEEPER = "import time; time.sleep(3600)"
PARENT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SLEEPER!r}])"


def start_tree(children: int) -> subprocess.Popen:
    """A parent (this benchmark's child) holding CHILDREN sleepers, the first with a child of its own."""
    script = "import subprocess, sys, time\n"
    script += f"ps = [subprocess.Popen([sys.executable, '-c', {PARENT!r}])]\n"
    script += f"ps += [subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]) for _ in range({children - 1})]\n"
    script += "time.sleep(3600)\n"
    return subprocess.Popen([sys.executable, "-c", script])


def measure(root_pid: int, hz: float, seconds: float, source: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        sampler = MemorySampler(RunFolder(Path(tmp)), hz=hz, root_pid=root_pid, source=source)
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        with open(sampler.folder.gpu_memory_csv) as f:
            elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(f)]
    return {
        "slots": int(seconds * hz) + 1,
        "on_slot_pct": 100 * sum(abs(e * hz - round(e * hz)) < 0.3 for e in elapsed) / max(len(elapsed), 1),
        "hz": hz,
        "samples": sampler.samples_taken,
        "wall_ms": sampler.mean_sample_seconds * 1e3,
        "cpu_ms": sampler.thread_cpu_seconds / sampler.samples_taken * 1e3,
        "core_pct": sampler.thread_cpu_seconds / seconds * 100,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rates", default="10,100", help="sampling rates in Hz, comma-separated")
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--source", choices=["psutil", "nvml"], default="psutil")
    args = parser.parse_args()
    tree = start_tree(args.children)
    try:
        time.sleep(1.0)  # let the tree start
        members = len(psutil.Process(tree.pid).children(recursive=True)) + 1
        print(
            f"source {args.source}; tree of {members} processes; {len(psutil.pids())} processes on the machine; "
            f"{os.cpu_count()} cores; {args.seconds:g} s per rate"
        )
        for hz in (float(r) for r in args.rates.split(",")):
            r = measure(tree.pid, hz, args.seconds, args.source)
            print(
                f"{r['hz']:6g} Hz: {r['samples']:5d} samples, {r['wall_ms']:.3f} ms wall and {r['cpu_ms']:.3f} ms CPU "
                f"per sample, {r['core_pct']:.2f}% of one core; {r['slots']} slots, {r['on_slot_pct']:.0f}% of samples on theirs"
            )
    finally:
        for member in psutil.Process(tree.pid).children(recursive=True):
            member.kill()
        tree.kill()
        tree.wait()


if __name__ == "__main__":
    main()
