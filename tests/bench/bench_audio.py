"""Benchmark: audio.silence on a 20-minute 16 kHz WAV, read whole (as any talk of that length is).

Target: under 2 s wall on the project's 2-core machine (the check runs inside `check`, which should
answer in seconds). Min/median/max over repeated runs, with the load average. Run:
    .venv/bin/python tests/bench/bench_audio.py [--runs 5]
Not collected by pytest: this was a unit test's wall-clock assert, which a busy machine can break.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the WAV writer the unit tests use

from test_checks_audio import TONE_AMPLITUDE, run, write_long  # noqa: E402

from avatardoctor.checks import audio  # noqa: E402

TARGET_S = 2.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_long(folder / "talk.wav", 16000, 20 * 60, lambda minute: TONE_AMPLITUDE)
        load = os.getloadavg()[0]
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            result = run(audio.check_silence, folder, "talk.wav")
            times.append(time.perf_counter() - started)
            assert not result.data["windowed"]
    print(
        f"20-minute WAV: {min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} s "
        f"(min/median/max of {args.runs}), target < {TARGET_S:.1f} s; load average {load:.2f} -> {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
