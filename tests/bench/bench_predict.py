"""Benchmark: `predict` for every catalogue machine x every mode, in one process.

Target: under 0.5 s in total on the project's 2-core machine (the planner and `fit.peak` call the
predictor dozens of times per command). Run:
    .venv/bin/python tests/bench/bench_predict.py [--runs 7]
Prints the median, min and max of the whole sweep and the number of predictions in it. Not
collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

from avatardoctor.ckpt.components import reference_summary
from avatardoctor.config import MODES, resolve_config
from avatardoctor.estimates import DEFAULT_TERMS
from avatardoctor.machine.catalogue import CARDS, catalogue_machine
from avatardoctor.predict import _predict, predict

TARGET_S = 0.5


def sweep() -> int:
    summary, count = reference_summary(), 0
    for card in CARDS:
        for n in (1, 5) if card.max_count >= 5 else (1,):
            machine = catalogue_machine(f"{n}x{card.key}")
            for mode in MODES:
                config = resolve_config(len(machine.gpus), mode, audio_seconds=600.0)
                predict(config, machine.gpus, summary, DEFAULT_TERMS)
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    sweep()  # warm: the reference tensor lists are read once per process
    times = []
    for _ in range(runs):
        _predict.cache_clear()  # the arithmetic, not the memo: a command asks each question once
        start = time.perf_counter()
        count = sweep()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"{count} predictions (every catalogue machine, 1 and 5 GPUs, x {len(MODES)} modes), {runs} runs")
    print(
        f"median {median * 1000:.1f} ms, min {min(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
        f"(target < {TARGET_S * 1000:.0f} ms): {'met' if median < TARGET_S else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
