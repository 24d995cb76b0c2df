"""Benchmark: what the runner costs a job, measured against the same job launched bare in the same run.

The demo workload (5 CPU ranks with gloo, 2 clips) is launched plain (`python -m torch.distributed.run`,
output to /dev/null: the anchor) and through `execute` (log capture, phase tracking, memory sampling at
10 Hz, the job's process tracking, classification, debug_info.json and the report, which a child process
draws), alternately, run after run. Per pair it prints:
- the fixed overhead: the runner's wall time minus the bare launch's (target: under 0.2 s), and as a ratio;
- the runner process's own CPU time (all its threads) over the job's wall time: its share of one core.
Min/median/max over the pairs, with the load average at the start and the end: on a shared machine the
spread is the figure's honesty. Run:
    .venv/bin/python tests/bench/bench_runner_overhead.py [--runs 5] [--sample-hz 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from avatardoctor.demo.checkpoints import tiny_demo_checkpoint
from avatardoctor.machine.ports import usable_port
from avatardoctor.runner.auto import demo_plan
from avatardoctor.runner.run import RunOptions, execute, torchrun_argv

ENTRY = ["-m", "avatardoctor.demo.workload"]
TARGET_FIXED_S = 0.2


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))} / {fmt.format(max(values))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--sample-hz", type=float, default=10.0, help="the memory sampler's rate (0.1: the runner alone)"
    )
    args = parser.parse_args()
    plan = demo_plan(tiny_demo_checkpoint(os.environ))
    env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1"}
    load_at_start = os.getloadavg()[0]
    plain, through, fixed, cpu_share = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            port = usable_port(29650) or 29650
            start = time.perf_counter()
            subprocess.run(
                torchrun_argv(plan, port, ENTRY),
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            plain.append(time.perf_counter() - start)
            cpu = time.process_time()
            start = time.perf_counter()
            result = execute(
                plan, RunOptions(out_dir=Path(tmp) / "runs", cwd=Path(tmp), entry=ENTRY, sample_hz=args.sample_hz)
            )
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu
            assert result.failure.cls == "success" and result.report is not None, result.failure
            through.append(wall)
            fixed.append(wall - plain[-1])
            cpu_share.append(cpu / wall)
    print(f"demo (5 CPU ranks, 2 clips), sampling at {args.sample_hz:g} Hz, {args.runs} pairs, min / median / max:")
    print(f"  bare torchrun      {spread(plain, '{:.2f}')} s")
    print(f"  through the runner {spread(through, '{:.2f}')} s (the report included)")
    print(
        f"  fixed overhead     {spread(fixed, '{:+.2f}')} s (target < {TARGET_FIXED_S} s); "
        f"ratio {spread([t / p for t, p in zip(through, plain)], '{:.3f}')}"
    )
    print(f"  runner CPU         {spread(cpu_share, '{:.2%}')} of one core over the job's wall time")
    print(f"  load average       {load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
