"""The hang detector's idea of life, on real processes: output of any kind, the CPU, a busy GPU."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from avatardoctor.runner.liveness import CPU_BUSY_CORES, Liveness


@pytest.fixture
def process():
    started = []

    def start(code: str) -> subprocess.Popen:
        started.append(subprocess.Popen([sys.executable, "-c", code]))
        return started[-1]

    yield start
    for p in started:
        p.kill()
        p.wait()


def observed_until_busy(liveness: Liveness, pid: int, rounds: int = 40) -> None:
    """Observe the process every half second until one round shows it busy, or `rounds` have passed: a
    loaded machine may starve it for a round, never for twenty seconds."""
    start = time.monotonic()
    liveness.observe(0.0, [pid])
    for _ in range(rounds):
        time.sleep(0.5)
        liveness.observe(time.monotonic() - start, [pid])
        if liveness.cpu_busy_s is not None:
            return


def test_a_process_computing_on_the_cpu_is_alive(process):
    busy = process("while True: pass")
    liveness = Liveness()
    observed_until_busy(liveness, busy.pid)
    assert liveness.cpu_busy_s is not None and liveness.silent_for(liveness.cpu_busy_s) == 0


def test_a_sleeping_process_is_not(process):
    asleep = process("import time; time.sleep(60)")
    liveness = Liveness()
    time.sleep(0.5)  # past its start-up, which is work
    liveness.observe(0.0, [asleep.pid])
    time.sleep(1.0)
    liveness.observe(100.0, [asleep.pid])  # 100 pretend seconds: far under a tenth of a core
    assert liveness.cpu_busy_s is None and liveness.silent_for(100.0) == 100.0


def test_output_of_any_kind_and_a_busy_gpu_are_life():
    liveness = Liveness()
    liveness.output(7.5)
    assert liveness.silent_for(10.0) == 2.5
    liveness.observe(20.0, [], gpu_utilisation=[0.0, 97.0])
    assert liveness.silent_for(20.0) == 0
    liveness.observe(30.0, [], gpu_utilisation=[1.0])
    assert liveness.silent_for(30.0) == 10.0


def test_a_process_that_ended_is_no_life():
    liveness = Liveness()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    liveness.observe(0.0, [gone.pid])
    liveness.observe(1.0, [gone.pid])
    assert liveness.cpu_busy_s is None and CPU_BUSY_CORES > 0
