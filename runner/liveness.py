"""When a job last showed life, for the hang detector.

A Live Avatar job can be silent and healthy for minutes: with ENABLE_COMPILE=true (the scripts' default)
the first torch.compile pass runs on the CPU inside a tqdm bar that has not ended its line, the GPUs idle
(docs/upstream.md, "Compile"). So life is any output byte (a bar redrawn with a carriage return counts),
a busy GPU, or the job's processes using the CPU. Only a job with none of these for the hang timeout is
hung. A rank that spins a core while it waits (a busy-polling collective) looks alive here: NCCL's own
watchdog ends such a job, and the classifier names it a hang from its "Watchdog caught" line.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

CPU_BUSY_CORES = 0.1  # the job's processes together: under a tenth of a core they wait, they do not work
GPU_BUSY_PCT = 5.0  # % utilisation of the busiest GPU


def _cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # gone: what it used is no longer life
            continue
        seconds[pid] = times.user + times.system
    return seconds


class Liveness:
    def __init__(self) -> None:
        self.last_s = 0.0  # seconds since launch when the job last showed life
        self.cpu_busy_s: float | None = None  # the last time the CPU alone showed it
        self._cpu: dict[int, float] = {}
        self._at: float | None = None

    def output(self, at_s: float) -> None:
        """Any bytes from the job, whole lines or not."""
        self.last_s = max(self.last_s, at_s)

    def observe(self, at_s: float, pids: Iterable[int], gpu_utilisation: Iterable[float] = ()) -> None:
        """The job's processes' CPU time since the last call, and the GPUs' utilisation now."""
        cpu = _cpu_seconds(pids)
        if self._at is not None and at_s > self._at:
            used = sum(max(0.0, t - self._cpu.get(pid, t)) for pid, t in cpu.items())  # a new process counts from now
            if used / (at_s - self._at) >= CPU_BUSY_CORES:
                self.last_s = self.cpu_busy_s = at_s
        if max(gpu_utilisation, default=0.0) >= GPU_BUSY_PCT:
            self.last_s = at_s
        self._cpu, self._at = cpu, at_s

    def silent_for(self, at_s: float) -> float:
        return at_s - self.last_s
