"""The per-rank shim: runs the entry unchanged (runpy) and records the rank's memory as torch sees it.

    torchrun ... -m avatardoctor.runner.shim ENTRY.py ARGS...      (or: -m avatardoctor.runner.shim -m MODULE ARGS...)

At every phase change (read from the rank's own log lines) and at exit it notes torch's
max_memory_allocated / max_memory_reserved on CUDA and the process's peak RSS; on a CUDA
out-of-memory it records what the allocator held (the OOM observer); with --memory-history it
also saves a PyTorch memory snapshot that pytorch.org/memory_viz opens. It writes
$AVATARDOCTOR_RANK_DIR/rank<N>.json in a `finally`, so the file exists even when the entry raises, with
the rank's own clip times (its own output's progress bars: each rank's speed, docs/running.md "Speed").
torch is only touched once the entry has imported it (no start-up cost), unless the history is asked for.
"""

from __future__ import annotations

import io
import json
import os
import resource
import runpy
import sys
import time
from pathlib import Path

from avatardoctor.runner.lines import BoundedLines
from avatardoctor.runner.logparse import MAX_RANK_CLIPS, LogTracker
from avatardoctor.units import MIB


class Recorder:
    def __init__(self, rank: int, out: Path):
        self.rank, self.out = rank, out
        self.doc: dict = {"schema": "avatardoctor.rank/1", "rank": rank, "events": [], "oom": None, "exit": None}
        self.started = time.monotonic()
        self.observer_attached = False

    def _torch(self):
        """torch, if the entry imported it and CUDA is up; never imported from here."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return None
        if not self.observer_attached:
            self.observer_attached = True
            attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
            if attach:
                attach(self.on_oom)
        return torch

    def snapshot(self, event: str) -> None:
        item = {
            "event": event,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        torch = self._torch()
        if torch is not None:
            item.update(
                max_allocated_mib=round(torch.cuda.max_memory_allocated() / MIB, 1),
                max_reserved_mib=round(torch.cuda.max_memory_reserved() / MIB, 1),
                allocated_mib=round(torch.cuda.memory_allocated() / MIB, 1),
            )
        self.doc["events"].append(item)

    def on_oom(self, device: int, alloc: int, device_allocated: int, device_free: int) -> None:
        torch = sys.modules["torch"]
        stats = torch.cuda.memory_stats(device)
        self.doc["oom"] = {
            "device": device,
            "tried_to_allocate_mib": round(alloc / MIB, 1),
            "allocated_mib": round(device_allocated / MIB, 1),
            "free_mib": round(device_free / MIB, 1),
            "reserved_mib": round(stats.get("reserved_bytes.all.current", 0) / MIB, 1),
            "segments": stats.get("segment.all.current"),
            "elapsed_s": round(time.monotonic() - self.started, 3),
        }
        self.write()

    def write(self) -> None:
        """The record, atomically; a full disk loses the record, never changes how the rank ends."""
        tmp = self.out / f".rank{self.rank}.json.tmp"
        try:
            tmp.write_text(json.dumps(self.doc, indent=1))
            os.replace(tmp, self.out / f"rank{self.rank}.json")
        except OSError:
            tmp.unlink(missing_ok=True)


class Phases:
    """One tracker for both streams: INFO lines go to stderr (logging's default), prints to stdout."""

    def __init__(self, recorder: Recorder):
        self.recorder, self.tracker = recorder, LogTracker(1)
        self.phase: str | None = None

    def line(self, text: str) -> None:
        self.tracker.feed(text, time.monotonic() - self.recorder.started)
        if self.tracker.current_phase != self.phase:
            self.phase = self.tracker.current_phase
            self.recorder.snapshot(f"phase: {self.phase}")


class PhaseWatcher(io.TextIOBase):
    """Passes a stream through unchanged and hands each complete line, capped, to the phase tracker."""

    def __init__(self, stream, phases: Phases):
        self.stream, self.phases, self.lines = stream, phases, BoundedLines("")

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        for line in self.lines.feed(text):
            self.phases.line(line)
        return n

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):  # type: ignore[override]  # typeshed: a writable attribute; io's is a read-only property
        return self.stream.encoding


def main() -> None:
    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m avatardoctor.runner.shim ENTRY.py ARGS... | -m MODULE ARGS...")
    out = Path(os.environ.get("AVATARDOCTOR_RANK_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(int(os.environ.get("RANK", "0")), out)
    history = os.environ.get("AVATARDOCTOR_MEMORY_HISTORY") == "1"
    if history:
        import torch  # asked for: the history must start before the first allocation

        if torch.cuda.is_available():
            torch.cuda.memory._record_memory_history(max_entries=100_000)
    phases = Phases(recorder)
    sys.stdout, sys.stderr = PhaseWatcher(sys.stdout, phases), PhaseWatcher(sys.stderr, phases)
    try:
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
        recorder.doc["exit"] = "ok"
    except SystemExit as e:
        recorder.doc["exit"] = "ok" if e.code in (None, 0) else f"exit {e.code}"
        raise
    except BaseException as e:
        recorder.doc["exit"] = f"{type(e).__name__}: {str(e)[:500]}"
        raise
    finally:
        recorder.snapshot("exit")
        # this rank's own clips (its output alone, whatever torchrun mixes), on the system-wide monotonic
        # clock the runner reads too: each rank's speed without rank prefixes in the log
        recorder.doc["started_monotonic"] = recorder.started
        recorder.doc["clips"] = [[round(s, 3), round(e, 3)] for s, e in phases.tracker.clip_spans()[:MAX_RANK_CLIPS]]
        torch = recorder._torch()
        if history and torch is not None:
            torch.cuda.memory._dump_snapshot(str(out / f"rank{recorder.rank}-memory.pickle"))
        recorder.write()


if __name__ == "__main__":
    main()
