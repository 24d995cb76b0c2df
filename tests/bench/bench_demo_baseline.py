"""Benchmark: a demo rank's fixed RSS (the Python interpreter, torch and the demo's imports, gloo up), the
baseline avatardoctor.demo.memory.RANK_BASELINE_BYTES predicts each demo rank from. Run:
    .venv/bin/python tests/bench/bench_demo_baseline.py [--runs 3]
Prints each fresh process's RSS in MiB and their median. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

MEASURE = """
import psutil
import avatardoctor.demo.workload  # the rank's imports: torch, numpy, the demo's modules
import torch.distributed as dist
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
print(psutil.Process().memory_info().rss / 2**20)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    rss = [
        float(subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, check=True).stdout)
        for _ in range(runs)
    ]
    print(" ".join(f"{r:.0f}" for r in rss), f"MiB; median {statistics.median(rss):.0f} MiB")


if __name__ == "__main__":
    main()
