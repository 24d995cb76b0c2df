"""Benchmark: what the runner costs a job, against the same job launched bare, timed in the same run.

Target (issue 19): a fixed overhead under 0.2 s. On a loaded 2-core machine a torchrun launch varies by
seconds from one run to the next, which hides a fixed cost of tenths; so the default workload is cheap
and steady (WORKLOAD: a Python process that prints its clock at its first and last line and sleeps
between), launched bare (subprocess, output to a pipe) and through `execute` (as `record -- CMD` runs it:
log capture, phase tracking, memory sampling, the job's process tracking, classification,
debug_info.json and the report, which a child process draws), alternately, pair after pair. The
workload's own clock (CLOCK_REALTIME, as every process here reads it) splits each launch into where the
runner's time goes, each the runner's figure minus the bare launch's in the same pair:
- start: from the call to the workload's first line (the run folder, the launch, the reaper);
- exit: from the workload's last line to the run's outcome on disk (debug_info.json's mtime: the exit
  noticed, the job's processes searched for and stopped, the sampler stopped, the classification);
- report: from there to `execute` returning (the report child's join: it loaded pandas and matplotlib
  while the job ran, then draws);
- fixed overhead: the whole call minus the bare launch (the target's figure), and without the report.
Min / median / max over the pairs, with the load average at the start and the end. `--workload demo`
times the demo instead (5 CPU ranks with gloo, 2 clips, through torchrun), pair by pair, whose bare
launch varies too much on a loaded machine for the fixed overhead; it shows the runner's own CPU over
the job's wall time (its share of one core: tracking, sampling at --sample-hz, the loop). Run:
    .venv/bin/python tests/bench/bench_runner_overhead.py [--runs 15] [--seconds 2] [--sample-hz 10]
    .venv/bin/python tests/bench/bench_runner_overhead.py --workload demo --runs 3
Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import spread

from avatardoctor.demo.checkpoints import tiny_demo_checkpoint
from avatardoctor.machine.ports import usable_port
from avatardoctor.runner.auto import demo_plan
from avatardoctor.runner.run import RunOptions, Watch, execute, torchrun_argv

DEMO_ENTRY = ["-m", "avatardoctor.demo.workload"]
WORKLOAD = "import sys, time; print('first', time.time(), flush=True); time.sleep(float(sys.argv[1])); print('last', time.time())"
TARGET_FIXED_S = 0.2


def clock_lines(text: str) -> tuple[float, float]:
    """The workload's (first, last) clock readings from its output (the run's log prefixes each line)."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[-2] in ("first", "last"):
            found[words[-2]] = float(words[-1])
    return found["first"], found["last"]


def cheap_pairs(runs: int, seconds: float, sample_hz: float) -> None:
    plan = demo_plan(tiny_demo_checkpoint(os.environ))
    command = (sys.executable, "-c", WORKLOAD, str(seconds))
    parts: dict[str, list[float]] = {"start": [], "exit": [], "report": [], "fixed": [], "fixed, no report": []}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            called = time.time()
            out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout
            bare_end = time.time()
            first, last = clock_lines(out)
            bare_start, bare_exit, bare_wall = first - called, bare_end - last, bare_end - called

            options = RunOptions(out_dir=Path(tmp) / "runs", cwd=Path(tmp), sample_hz=sample_hz)
            called = time.time()
            result = execute(plan, options, Watch(command=command))
            returned = time.time()
            assert result.failure.cls == "success" and result.report is not None, result.failure
            first, last = clock_lines(result.folder.inference_log.read_text())
            outcome = result.folder.debug_json.stat().st_mtime
            parts["start"].append((first - called) - bare_start)
            parts["exit"].append((outcome - last) - bare_exit)
            parts["report"].append(returned - outcome)
            parts["fixed"].append((returned - called) - bare_wall)
            parts["fixed, no report"].append((outcome - called) - bare_wall)
    load_end = os.getloadavg()
    print(f"workload: a Python process sleeping {seconds:g} s; sampling at {sample_hz:g} Hz; {runs} pairs")
    print(
        f"load average (1 min): {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end; {os.cpu_count()} cores"
    )
    print("the runner minus the bare launch, per pair, seconds (min / median / max):")
    for name, values in parts.items():
        print(f"  {name:<17} {spread(values, '+.3f')}")
    median = statistics.median(parts["fixed"])
    print(
        f"fixed overhead, median {median:+.3f} s: {'MET' if median < TARGET_FIXED_S else 'NOT MET'} (< {TARGET_FIXED_S} s)"
    )


def demo_pairs(runs: int, sample_hz: float) -> None:
    plan = demo_plan(tiny_demo_checkpoint(os.environ))
    env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
    load_start = os.getloadavg()
    plain, through, cpu_share = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            port = usable_port(29650) or 29650
            start = time.perf_counter()
            argv = torchrun_argv(plan, port, DEMO_ENTRY)
            subprocess.run(argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            plain.append(time.perf_counter() - start)
            cpu = time.process_time()
            start = time.perf_counter()
            options = RunOptions(out_dir=Path(tmp) / "runs", cwd=Path(tmp), entry=DEMO_ENTRY, sample_hz=sample_hz)
            result = execute(plan, options)
            wall = time.perf_counter() - start
            assert result.failure.cls == "success" and result.report is not None, result.failure
            through.append(wall)
            cpu_share.append((time.process_time() - cpu) / wall)
    print(f"demo (5 CPU ranks, 2 clips), sampling at {sample_hz:g} Hz, {runs} pairs, min / median / max:")
    print(f"  bare torchrun      {spread(plain, '.2f')} s")
    print(f"  through the runner {spread(through, '.2f')} s (the report included)")
    print(f"  difference         {spread([t - p for t, p in zip(through, plain)], '+.2f')} s")
    print(f"  runner CPU         {spread(cpu_share, '.2%')} of one core over the job's wall time")
    print(f"  load average       {load_start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workload", choices=["cheap", "demo"], default="cheap")
    parser.add_argument("--runs", type=int, default=15, help="pairs (bare, through the runner)")
    parser.add_argument("--seconds", type=float, default=2.0, help="the cheap workload's sleep")
    parser.add_argument("--sample-hz", type=float, default=10.0, help="the memory sampler's rate")
    args = parser.parse_args()
    if args.workload == "demo":
        demo_pairs(args.runs, args.sample_hz)
    else:
        cheap_pairs(args.runs, args.seconds, args.sample_hz)


if __name__ == "__main__":
    main()
