"""Benchmark: `avatardoctor check --demo` as a whole process (start-up, imports, every check, output).

Target: median under 0.5 s on the project's 2-core machine. Run:
    .venv/bin/python tests/bench/bench_check_startup.py [--runs 30]
Prints the median, min and max wall time, and the slowest imports of one run (python -X importtime).
Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_S = 0.5


def time_once(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    return time.perf_counter() - start


def slowest_imports(env: dict, count: int = 8) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the top-level imports that cost the most."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "avatardoctor", "check", "--demo"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        depth = len(name) - len(name.lstrip())  # one space at the top level, two more per nesting level
        if cumulative.strip().isdigit() and depth == 1:
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    env = {**os.environ, "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "avatardoctor", "check", "--demo"]
    time_once(cmd, env)  # warm the page cache and .pyc files
    times = [time_once(cmd, env) for _ in range(args.runs)]
    median = statistics.median(times)
    print(f"avatardoctor check --demo, {args.runs} runs on {os.cpu_count()} CPUs")
    print(f"median {median:.3f} s   min {min(times):.3f} s   max {max(times):.3f} s   target < {TARGET_S} s")
    print("slowest top-level imports (cumulative):")
    for us, name in slowest_imports(env):
        print(f"  {us / 1000:7.1f} ms  {name}")
    print("PASS" if median < TARGET_S else "OVER TARGET")


if __name__ == "__main__":
    main()
