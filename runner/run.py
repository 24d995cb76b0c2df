"""Executing a plan: torchrun supervised (avatardoctor.jobs: no rank outlives the runner, even a
SIGKILLed one), every line logged with its time, memory sampled, hangs and signals handled, and a run
folder that explains itself (docs/run-folder.md), its report drawn by a child process
(reports/__main__.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

import psutil

from avatardoctor import __version__, jobs
from avatardoctor.calibration import IMPORT_SCHEMA, Measurement
from avatardoctor.errors import InputError
from avatardoctor.files import UnreadableJson, read_json
from avatardoctor.machine.ports import usable_port
from avatardoctor.planfile import MAX_NPROC, PlanFile, is_number, plan_json
from avatardoctor.runner.classify import Failure, classify, read_health_xids
from avatardoctor.runner.folder import RunFolder, new_run_folder
from avatardoctor.runner.lines import LINE_CAP, BoundedLines
from avatardoctor.runner.liveness import Liveness
from avatardoctor.runner.logparse import MAX_RANK_CLIPS, LogTracker, write_rank_clips_csv
from avatardoctor.runner.sampler import MemorySampler
from avatardoctor.units import MIB

GRACE_S = 10.0
RANK_RECORD_LIMIT = 16 * MIB  # a rank's shim record: events and peaks, kilobytes
REPORT_TIMEOUT_S = 300.0  # a report of a week-long run's CSV takes seconds; a stuck one must not hold the run
TAIL_LINES = 4000  # the classifier sees the last lines; the whole log is on disk
TAIL_LINE_CHARS = 4096  # of each, its head: errors are short lines, and 4000 capped lines stay under 16 MiB
LOOP_PERIOD_S = 0.2  # how often the log, the disk and the live view are looked at; the job's exit ends the wait
LIVENESS_PERIOD_S = 1.0  # how often the job's processes are listed and their CPU and GPU use read (hangs)
STRAY_SEARCH_PERIOD_S = 2.0  # how often every process on the host is looked at for the job's strays
FOLLOW_PERIOD_S = 0.2  # how often an attached job's log file is read again once its end is reached


@dataclass
class RunOptions:
    out_dir: Path = Path("runs")
    sample_hz: float = 10.0
    hang_timeout_s: float = 300.0
    force: bool = False
    cwd: Path = field(default_factory=Path.cwd)  # the Live Avatar checkout
    entry: list[str] = field(default_factory=lambda: ["minimal_inference/s2v_streaming_interact.py"])
    not_ready: list[str] = field(default_factory=list)  # failing check ids, when launched with --force
    # called about 5 times a second with (tracker, sampler, plan): the live view
    on_progress: Callable[[LogTracker, MemorySampler, PlanFile], None] | None = None
    shim: bool = True  # run each rank through avatardoctor.runner.shim (torch's own memory view per rank)
    memory_history: bool = False  # also a PyTorch memory snapshot per rank (CUDA only)
    # called once the outcome is on disk, before the report is drawn (a second or two): say it at once
    on_outcome: Callable[[Failure], None] | None = None


@dataclass(frozen=True)
class Watch:
    """What `record` watches instead of the plan's own launch (the plan then only describes it): a command run
    as given (no torchrun around it, no shim, no port swap), or processes already running, watched and never
    stopped, with their output file followed from its end when there is one."""

    command: tuple[str, ...] = ()
    attach: tuple[int, ...] = ()
    log: Path | None = None
    gpus: tuple[int, ...] = ()  # --attach-gpus: the GPUs the attached processes were found on


@dataclass
class RunResult:
    folder: RunFolder
    failure: Failure
    exit_code: int | None
    peaks_mib: dict[str, float]
    report: Path | None


SHIM = ["-m", "avatardoctor.runner.shim"]


def torchrun_argv(plan: PlanFile, port: int, entry: list[str], shim: bool = False) -> list[str]:
    """The launch, as a list (never a shell string): a prompt full of $(...), quotes and ; is one item."""
    return jobs.torchrun_argv(plan.nproc, port, *(SHIM if shim else []), *entry, *plan.argv)


class _Log:
    """inference.log, a line per write; when the disk fills it stops writing and says so (`full`)."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")
        self.full = threading.Event()

    def write(self, text: str) -> None:
        if self.full.is_set():
            return
        try:
            self.file.write(text)
            self.file.flush()
        except OSError:
            self.full.set()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk fails the last flush once more
            self.file.close()


def execute(plan: PlanFile, options: RunOptions, watch: Watch | None = None) -> RunResult:
    """Run one attempt of a plan, or watch a command or running processes the plan describes (`record`); never
    raises for what the job does (that is the result)."""
    watch = watch or Watch()
    if not options.cwd.is_dir():  # checked before anything is created: a missing checkout leaves no folder
        raise InputError(
            f"the Live Avatar checkout {options.cwd} is not a folder: pass --liveavatar DIR "
            "(run --plan starts in the plan's checkout without it)"
        )
    attached = jobs.attach(watch.attach) if watch.attach else None  # a PID not running: InputError, no folder
    folder = new_run_folder(options.out_dir, plan.mode)  # unwritable: InputError, nothing launched
    if attached:
        port, argv = plan.master_port, attached_command(attached)
    elif watch.command:
        port, argv = plan.master_port, list(watch.command)
    else:
        port = usable_port(plan.master_port) or plan.master_port
        argv = torchrun_argv(plan, port, options.entry, options.shim)
    env = {
        **os.environ,
        **({} if watch.command else plan.env),  # a command sets its own
        "PYTHONUNBUFFERED": "1",
        "AVATARDOCTOR_RANK_DIR": str(folder.ranks.resolve()),  # the ranks run elsewhere
        "AVATARDOCTOR_MEMORY_HISTORY": "1" if options.memory_history else "0",
    }
    started_wall, started = datetime.now(timezone.utc), time.monotonic()
    tracker = LogTracker(plan.nproc, plan.num_clip)
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    interrupted = threading.Event()
    try:
        folder.plan_json.write_text(plan_json(plan.with_(master_port=port)))  # the plan as launched
        log = _Log(folder.inference_log)
    except OSError as e:  # the disk filled since the folder was made: still nothing launched
        shutil.rmtree(folder.root, ignore_errors=True)
        raise InputError(
            f"--out-dir {options.out_dir}: cannot write the run folder ({e.strerror}); "
            "free space or choose another folder"
        ) from None
    try:
        if options.not_ready:
            log.write(f"[avatardoctor] LAUNCHED WITH --force although checks failed: {', '.join(options.not_ready)}\n")
        job: jobs.Job | jobs.Attached = attached or jobs.Job(argv, cwd=options.cwd, env=env, grace_s=GRACE_S)
        reporter = _ReportChild()  # after the launch: the job's start does not wait for its fork
        sampler = MemorySampler(folder, options.sample_hz, root_pid=sorted(job.pids), gpu_indices=plan.visible_gpus)
        sampler.start()

        def on_signal(*_: object) -> None:
            interrupted.set()
            threading.Thread(target=job.stop, daemon=True).start()

        previous = (
            {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        if attached:  # after the handlers: from this line on, Ctrl-C is recorded
            log.write(f"[avatardoctor] attached to {_attached_to(watch)}: {' '.join(argv)}\n")

        def read_output() -> None:
            """Lines capped at LINE_CAP bytes as they come (a rank may print a gigabyte without a newline)."""
            lines = BoundedLines(b"")
            for chunk in _output(job, watch.log):
                liveness.output(time.monotonic() - started)  # a tqdm bar redrawn with \r ends no line
                for raw in lines.feed(chunk):
                    record(raw)
            if (last := lines.finish()) is not None:
                record(last)

        def record(raw: bytes) -> None:
            line = raw.decode("utf-8", errors="replace")
            at = time.monotonic() - started
            tracker.feed(line, at)
            tail.append((at, line[:TAIL_LINE_CHARS]))
            log.write(f"[+{at:9.3f}s] {line}\n")

        liveness = Liveness()
        reader = threading.Thread(target=read_output, daemon=True)
        reader.start()
        hung, observed_s, searched_s = False, 0.0, 0.0
        # Watched without its output, a job only shows life by working: its silence says nothing.
        hang_timeout_s = float("inf") if attached and watch.log is None else options.hang_timeout_s
        try:
            while job.running():
                _pause(job)
                if _disk_full(log, sampler):  # stop rather than run on unrecorded
                    job.stop()
                if options.on_progress:
                    options.on_progress(tracker, sampler, plan)
                now = time.monotonic() - started
                if now - observed_s >= LIVENESS_PERIOD_S:
                    everywhere = now - searched_s >= STRAY_SEARCH_PERIOD_S  # the tree each second, the host rarely
                    job.track(everywhere)
                    if everywhere:
                        searched_s = now
                    liveness.observe(now, job.pids, _gpu_utilisation(sampler))
                    observed_s = now
                if liveness.silent_for(now) >= hang_timeout_s:
                    hung = True
                    log.write(
                        f"[avatardoctor] no output, no CPU work and ~0% GPU use for {hang_timeout_s:.0f} s: "
                        "stopping the job\n"
                    )
                    _dump_stacks(folder, job.descendants, log)
                    job.stop()
            reader.join(5)
        finally:
            job.close()  # stopped if still running; then the reaper may go
            sampler.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        log.close()
    seconds = time.monotonic() - started
    disk_full = _disk_full(log, sampler)
    exit_code = job.returncode
    if attached and tracker.current_phase == "done":
        exit_code = 0  # not our child, so no exit code; its log says the video was written
    with contextlib.suppress(OSError):  # on a full disk, what was written stays; debug_info.json has the reserve
        tracker.write_phases_csv(folder.phases_csv)
        tracker.write_requests_csv(folder.requests_csv)
        write_rank_clips_csv(folder.rank_clips_csv, tracker.rank_clips() or shim_rank_clips(folder, started))
    failure = classify(
        list(tail),
        exit_code,
        hung=hung,
        interrupted=interrupted.is_set(),
        phases=tracker.phases(),
        nproc=plan.nproc,
        visible_gpus=plan.visible_gpus or (),
        xids=read_health_xids(folder.gpu_health_csv),
    )
    if attached and failure.cls in ("crashed", "interrupted") and exit_code is None:
        failure = _attached_end(failure, watch)
    if disk_full:
        failure = Failure(
            "disk-full",
            f"the disk under {folder.root} filled while recording: the job was stopped",
            "free space there, or pass --out-dir on a larger disk; `avatardoctor report` draws the report later",
        )
    peaks = sampler.peaks_mib()
    _write_debug_info(
        folder,
        plan,
        argv,
        failure,
        exit_code,
        peaks,
        tracker,
        started_wall,
        seconds,
        options,
        sampler.source_used,
    )
    if sampler.source_used == "nvml" and not disk_full:
        _write_measurements(folder, plan, peaks, sampler.peak_times(), tracker.phases(), started_wall)
    if options.on_outcome:
        options.on_outcome(failure)
    report = reporter.render(None if disk_full else folder)
    return RunResult(folder, failure, exit_code, peaks, report)


def attached_command(job: jobs.Attached) -> list[str]:
    """The first attached process's command line, as the run folder records a launch."""
    try:
        return job.roots[0].cmdline()
    except psutil.Error:
        return [f"pid {job.pid}"]


def _output(job: jobs.Job | jobs.Attached, log: Path | None) -> Iterator[bytes]:
    """The job's output as it comes: our child's pipe, or an attached job's log file followed from its end (the
    lines written before are another time's: their phases cannot be timed), or nothing."""
    if isinstance(job, jobs.Job):
        stdout = cast(io.BufferedReader, job.proc.stdout)  # stdout=PIPE, buffered: a BufferedReader
        yield from iter(lambda: stdout.read1(LINE_CAP), b"")
        return
    if log is None:
        return
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(LINE_CAP)
            if chunk:
                yield chunk
            elif job.running():
                time.sleep(FOLLOW_PERIOD_S)
            else:
                return


def _attached_to(watch: Watch) -> str:
    on = f" (on GPU {','.join(map(str, watch.gpus))})" if watch.gpus else ""
    return f"PID {', '.join(map(str, watch.attach))}{on}"


def _attached_end(failure: Failure, watch: Watch) -> Failure:
    """How an attached job ended, said as much as a watcher can know it."""
    pids = ", ".join(map(str, watch.attach))
    if failure.cls == "interrupted":
        return dataclasses.replace(failure, message=f"stopped watching; PID {pids} still runs (it is not ours to stop)")
    return Failure(
        "ended",
        f"PID {pids} ended: a watcher cannot read its exit code, and "
        + ("its log did not say the video was written" if watch.log else "there was no log to say how"),
        None if watch.log else "pass --log FILE (the job's output) to record its phases and how it ended",
        phase=failure.phase,
        at_elapsed_s=failure.at_elapsed_s,
    )


def _pause(job: jobs.Job | jobs.Attached) -> None:
    """LOOP_PERIOD_S, or less when our job exits in between (the runner's exit waits on nothing)."""
    if isinstance(job, jobs.Job):
        job.wait(LOOP_PERIOD_S)
    else:
        time.sleep(LOOP_PERIOD_S)


def _disk_full(log: _Log, sampler: MemorySampler) -> bool:
    return log.full.is_set() or sampler.write_error is not None


def _dump_stacks(folder: RunFolder, pids: set[int], log) -> None:
    """Where each hung rank is stuck, with py-spy when it is installed (it is not a dependency)."""
    import shutil

    py_spy = shutil.which("py-spy")
    if py_spy is None:
        log.write("[avatardoctor] py-spy is not installed: no stacks captured (pip install py-spy)\n")
        return
    stacks = folder.logs / "stacks"
    stacks.mkdir(exist_ok=True)
    for pid in sorted(pids):
        try:
            dump = subprocess.run([py_spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20)
            (stacks / f"pid{pid}.txt").write_text(dump.stdout + dump.stderr)
        except (OSError, subprocess.TimeoutExpired) as e:
            (stacks / f"pid{pid}.txt").write_text(f"py-spy failed: {e}\n")
    log.write(f"[avatardoctor] stacks of {len(pids)} processes in {stacks}\n")


def _gpu_utilisation(sampler: MemorySampler) -> list[float]:
    if sampler.source_used != "nvml":
        return []
    return [s.get("utilization_pct") or 0.0 for s in sampler.last().values()]


def _write_debug_info(
    folder, plan, argv, failure, code, peaks, tracker, started_wall, seconds, options, source
) -> None:
    predicted = {str(g["index"]): g for g in ((plan.prediction or {}).get("gpus") or [])}
    gpus = [
        {
            "gpu": gpu,
            "measured_peak_gib": round(mib / 1024, 3),
            "predicted_peak_gib": (predicted.get(gpu) or {}).get("peak_gib"),
        }
        for gpu, mib in sorted(peaks.items())
    ]
    outcome = {
        "schema": "avatardoctor.debug/1",
        "avatardoctor_version": __version__,
        "outcome": failure.cls,
        "failure": None if failure.cls == "success" else failure.to_dict(),
        "exit_code": code,
    }
    doc = {
        **outcome,
        "forced": bool(options.not_ready),
        "not_ready_checks": options.not_ready,
        "started": started_wall.isoformat(timespec="seconds"),
        "durations": {"total_s": round(seconds, 1), **{p: round(e - s, 1) for p, s, e in tracker.phases()}},
        "clips_done": tracker.clips_done,
        "gpus": gpus,
        "gpu_names": _gpu_names(plan),
        "memory_source": source,
        "ranks": _rank_summaries(folder),
        "command": argv,
        "cwd": str(options.cwd),
        "python": sys.version.split()[0],
    }
    # Into the reserve's blocks; the outcome alone when the whole document does not fit on a full disk.
    for version in (doc, outcome):
        try:
            folder.write_reserved(folder.debug_json, (json.dumps(version, indent=2) + "\n").encode())
            return
        except OSError:
            continue


# The runner's phases (from the log) as the predictor names them; a clip's denoising is "denoise".
PREDICTED_PHASE = {
    "load": "load",
    "lora merge": "lora",
    "fp8": "fp8",
    "text encoding": "text",
    "decode": "decode",
    "save": "decode",
}


def measurements(
    plan: PlanFile,
    peaks_mib: dict[str, float],
    peak_at: dict[str, float],
    phases: list,
    run_id: str,
    recorded_at: str,
    allocated_mib: dict[str, float] | None = None,
) -> list[Measurement]:
    """Each GPU's measured peak (NVML: what the allocator reserved) beside the plan's prediction of the phase
    it peaked in, and PyTorch's own allocated peak where the shim saw it: what calibration fits."""
    predicted = {str(g.get("index")): g for g in ((plan.prediction or {}).get("gpus") or []) if isinstance(g, dict)}
    nproc = plan.nproc
    found = []
    for gpu, mib in sorted(peaks_mib.items()):
        g = predicted.get(gpu)
        if not g:  # no prediction for this GPU: nothing to calibrate against
            continue
        inputs = g.get("calibration")
        if not isinstance(inputs, dict):
            continue
        at = peak_at.get(gpu)
        ran = next((name for name, start, end in phases if at is not None and start <= at <= end), None)
        phase = "denoise" if ran and ran.startswith("clip") else PREDICTED_PHASE.get(ran or "")
        if phase == "denoise" and phase not in inputs:
            phase = "decode"  # the TPP VAE rank decodes while the DiT ranks denoise
        phase = phase if phase in inputs else g.get("phase")  # a phase this role does not have: its predicted peak's
        terms = inputs.get(phase) or {}
        role = "single" if nproc == 1 else "vae" if str(g.get("role", "")).startswith("VAE") else "dit"
        found.append(
            Measurement(
                run_id,
                str(g.get("name")),
                role,
                str(phase),
                int(mib * 2**20),
                int(terms.get("exact_bytes", 0)),
                nproc,
                nproc - 1,
                float(terms.get("token_dims", 0.0)),
                float(terms.get("decode_pixels", 0.0)),
                recorded_at,
                int((allocated_mib or {}).get(gpu, 0) * 2**20),
            )
        )
    return found


def _write_measurements(folder: RunFolder, plan: PlanFile, peaks, peak_at, phases, started_wall) -> None:
    """logs/measurements.json in calibration's import format: `avatardoctor calibrate RUN_FOLDER` learns from it."""
    visible = plan.visible_gpus
    allocated = {
        str(visible[r["rank"]] if visible and r["rank"] < len(visible) else r["rank"]): r["max_allocated_mib"]
        for r in _rank_summaries(folder)
        if isinstance(r.get("rank"), int) and isinstance(r.get("max_allocated_mib"), (int, float))
    }
    found = measurements(
        plan, peaks, peak_at, phases, folder.root.name, started_wall.isoformat(timespec="seconds"), allocated
    )
    if found:
        doc = {
            "schema": IMPORT_SCHEMA,
            "avatardoctor_version": __version__,
            "measurements": [dataclasses.asdict(m) for m in found],
        }
        with contextlib.suppress(OSError):  # a full disk: the run's own outcome matters more
            folder.measurements_json.write_text(json.dumps(doc, indent=2) + "\n")


def _gpu_names(plan: PlanFile) -> dict[str, str]:
    """{NVML index: name} of the GPUs the plan was made for, as the report labels them."""
    return {str(g.index): g.name for g in plan.machine.gpus} if plan.machine else {}


def _rank_records(folder: RunFolder) -> Iterator[dict]:
    """Each rank's shim record (runner/shim.py) that reads as a JSON object; a damaged one is passed over."""
    for path in sorted(folder.ranks.glob("rank*.json")):
        try:
            doc = read_json(path, RANK_RECORD_LIMIT, "a rank record")
        except UnreadableJson:
            continue
        if isinstance(doc, dict):
            yield doc


def _number(value: object) -> float | None:
    return float(cast(float, value)) if is_number(value) else None


def shim_rank_clips(folder: RunFolder, launched_monotonic: float) -> list[tuple[int, int, float, float]]:
    """(rank, clip, start_s, end_s) from each rank's own record of its clips, on the run's clock (the ranks'
    time.monotonic() is the runner's: one system-wide clock); rows that do not read are passed over."""
    rows = []
    for doc in _rank_records(folder):
        rank, started = doc.get("rank"), _number(doc.get("started_monotonic"))
        clips = doc.get("clips")
        if not (isinstance(rank, int) and 0 <= rank < MAX_NPROC and started is not None and isinstance(clips, list)):
            continue
        offset = started - launched_monotonic
        for clip, span in enumerate(clips[:MAX_RANK_CLIPS], 1):
            start, end = (_number(x) for x in span) if isinstance(span, list) and len(span) == 2 else (None, None)
            if start is None or end is None or not 0 <= start <= end:
                break
            rows.append((rank, clip, round(offset + start, 3), round(offset + end, 3)))
    return rows


def _rank_summaries(folder: RunFolder) -> list[dict]:
    """What the shim saw in each rank: torch's peaks, the process's peak RSS, an OOM, how it ended."""
    ranks = []
    for doc in _rank_records(folder):
        events = doc.get("events") or []
        peak = lambda key: max((e[key] for e in events if isinstance(e.get(key), (int, float))), default=None)  # noqa: E731
        ranks.append(
            {
                "rank": doc.get("rank"),
                "exit": doc.get("exit"),
                "max_allocated_mib": peak("max_allocated_mib"),
                "max_reserved_mib": peak("max_reserved_mib"),
                "max_rss_mib": peak("max_rss_mib"),
                "oom": doc.get("oom"),
            }
        )
    return ranks


class _ReportChild:
    """The run's report, drawn by `python -m avatardoctor.reports` (reports/__main__.py): started with the
    job so that its imports overlap the job, told the folder when the job is over. Its own session: the
    Ctrl-C that stops the job must not stop the report of that job."""

    def __init__(self) -> None:
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "avatardoctor.reports"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        except OSError:
            self.proc = None

    def render(self, folder: RunFolder | None) -> Path | None:
        """The report's path once drawn; None when it was not wanted (folder None) or could not be drawn."""
        if self.proc is None:
            return None
        try:
            out, _ = self.proc.communicate(f"{folder.root}\n" if folder else "", timeout=REPORT_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
            return None
        path = Path(out.strip()) if out.strip() else None
        return path if path and path.is_file() else None
