"""Benchmark: what the runner adds to a job's wall time (target: under 2 %), on the demo workload.

The same torchrun command (5 CPU ranks, 2 clips) run plain, then through the runner (log capture,
phase tracking, memory sampling at 10 Hz, classification, debug_info.json; the report is rendered
after the job and counted separately). Run:
    .venv/bin/python tests/bench/bench_runner_overhead.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from avatardoctor.ckpt.skeleton import write_skeleton
from avatardoctor.demo.checkpoints import cache_dir
from avatardoctor.runner.auto import demo_plan
from avatardoctor.runner.run import RunOptions, execute, torchrun_argv

ENTRY = ["-m", "avatardoctor.demo.workload"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    ckpt = cache_dir(os.environ) / "demo-tiny-v1"
    if not ckpt.is_dir():
        write_skeleton(ckpt, tiny=True)
    plan = demo_plan(ckpt)
    env = {**os.environ, **plan["env"], "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        plain, runner, report = [], [], []
        for i in range(args.runs):
            start = time.perf_counter()
            subprocess.run(
                torchrun_argv(plan, 29650 + i, ENTRY),
                cwd=tmp,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=True,
            )
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = execute(
                {**plan, "master_port": 29660 + i}, RunOptions(out_dir=Path(tmp) / "runs", cwd=Path(tmp), entry=ENTRY)
            )
            runner.append(time.perf_counter() - start)
            assert result.failure.cls == "success", result.failure
            start = time.perf_counter()
            from avatardoctor.reports.render import render_report

            render_report(result.folder.root, force=True)
            report.append(time.perf_counter() - start)
    p, r = statistics.median(plain), statistics.median(runner)
    rep = statistics.median(report)
    print(
        f"demo (5 ranks, 2 clips), median of {args.runs}: plain torchrun {p:.2f} s, through the runner {r:.2f} s "
        f"(of which the report {rep:.2f} s)"
    )
    print(f"runner overhead without the report: {(r - rep - p) / p:+.1%}   with it: {(r - p) / p:+.1%}   target < 2 %")


if __name__ == "__main__":
    main()
