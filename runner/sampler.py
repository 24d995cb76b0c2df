"""Records memory while a run goes: logs/gpu_memory.csv, one row per GPU per sample, and
logs/gpu_processes.csv, per-PID memory once a second; and on NVML, logs/gpu_health.csv, each GPU's health
once a second with the process listing (temperature, power, throttling, ECC, pending repairs, Xid events)
(docs/run-folder.md).

NVML where there are GPUs, read through avatardoctor.machine.nvml (the one module that imports the
binding; tests/fake_pynvml plays NVML for its tests). Where there are none (the demo on a laptop, CI),
"auto" records the RSS of a process tree from psutil in the same format with gpu `cpu`, so every later
stage works the same; and each torchrun rank's share (the RSS of the processes whose environment says
RANK=r) as device `cpu<r>`: the demo's ranks are its "devices", each beside its own prediction.

Sampling runs on its own thread against a monotonic clock (sample k at start + k/hz, so it never
drifts); a sample that overruns skips the slots it missed instead of bursting to catch up. Each
sample's rows reach the kernel in one unbuffered write, so whatever kills the runner, each CSV is
whole up to its last line. When the disk fills, a row written in part is cut back, writing stops
(`write_error` says why; the runner then stops the job) and the peaks are still kept in memory.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import threading
import time
from datetime import datetime, timezone
from typing import IO

import psutil

from avatardoctor.jobs import ProcessTree
from avatardoctor.runner.folder import RunFolder
from avatardoctor.units import MIB

MEMORY_COLUMNS = ["time", "elapsed_s", "gpu", "uuid", "memory_used_mib", "memory_total_mib", "utilization_pct"]
PROCESS_COLUMNS = ["time", "elapsed_s", "gpu", "pid", "name", "used_mib"]
HEALTH_COLUMNS = [
    "time",
    "elapsed_s",
    "gpu",
    "temperature_c",
    "power_w",
    "throttle",
    "ecc_volatile_uncorrected",
    "repair_pending",
    "xid_watched",
    "xid",
]
MIN_HZ, MAX_HZ = 0.1, 100.0
PROCESS_INTERVAL_S = 1.0  # listing processes costs far more than reading memory: at most once a second
JOIN_TIMEOUT_S = 5.0
TREE_LABEL = "process tree RSS"  # the uuid of the `cpu` rows; the report shows it as the device's name
MAX_RANK_DEVICE = 99  # ranks on the CPU are devices cpu0, cpu1, ... (two digits: reports' device ids)

Reading = tuple[str, str, float | None, float | None, float | None]  # gpu, uuid, used MiB, total MiB, utilisation %
ProcessReading = tuple[str, int, str | None, float | None]  # gpu, pid, name, used MiB


def _process_name(proc: psutil.Process) -> str | None:
    try:
        return proc.name()
    except (psutil.Error, OSError):  # gone, or a host PID not visible inside this container
        return None


PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    """Resident bytes from /proc/PID/statm (its 2nd field, in pages): psutil's memory_info() reads the same
    file through a Python file object and builds a tuple, 3x the cost of a sample's one number. OSError: ended."""
    fd = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 256).split(None, 2)[1]) * PAGE_BYTES
    finally:
        os.close(fd)


def _cpu_percent(proc: psutil.Process) -> float:
    try:
        return proc.cpu_percent()
    except psutil.Error:  # exited since its memory was read
        return 0.0


def _csv_bytes(rows) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def _number(value: float | None) -> str:
    """A number as csv.writer writes it (repr; None as an empty field)."""
    return "" if value is None else repr(value)


def _mib(value: int | None) -> float | None:
    return None if value is None else value / MIB


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def next_slot(previous: int, elapsed_s: float, hz: float) -> int:
    """The slot of the next sample, slot k being due k/hz seconds after the start: the one after `previous`
    or, when a slow sample ran past later slots, the first still ahead (missed slots are skipped, not made up)."""
    return max(previous + 1, math.floor(elapsed_s * hz) + 1)


def _append_whole(file: IO[bytes], data: bytes) -> None:
    """All of data or none of it: a short write (the disk filled in mid-row) is cut back and raises."""
    at = file.tell()
    try:
        written = file.write(data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"{file.name}: wrote {written} of {len(data)} bytes")
    except OSError:
        with contextlib.suppress(OSError):  # a device (not a file) cannot be cut back: nothing to keep whole
            file.truncate(at)
        raise


class _NvmlSource:
    """avatardoctor.machine.nvml's reader (the one module that speaks NVML), in the sampler's MiB rows."""

    name = "nvml"

    def __init__(self, reader):
        self._reader = reader

    def read(self, with_processes: bool) -> tuple[list[Reading], list[ProcessReading]]:
        readings = [
            (str(r.index), r.uuid, _mib(r.used_bytes), _mib(r.total_bytes), r.utilization_pct)
            for r in self._reader.memory()
        ]
        if not with_processes:  # listing processes costs far more than reading memory
            return readings, []
        return readings, [(str(p.index), p.pid, p.name, _mib(p.used_bytes)) for p in self._reader.processes()]

    def health(self) -> list[list]:
        """HEALTH_COLUMNS' cells after time and elapsed_s, one row per GPU; an empty cell: NVML cannot say."""
        return [
            [
                h.index,
                h.temperature_c,
                h.power_w,
                None if h.throttle is None else ";".join(h.throttle) or "none",
                h.ecc_volatile_uncorrected,
                None if h.repair_pending is None else int(h.repair_pending),
                int(h.xid_watched),
                ";".join(map(str, h.xids)),
            ]
            for h in self._reader.health()
        ]

    def close(self) -> None:
        self._reader.close()


class _PsutilSource:
    """The RSS of the root processes and all their descendants, summed, as device `cpu`."""

    name = "psutil"

    def __init__(self, root_pids: list[int]):
        self._roots = list(dict.fromkeys(root_pids))
        self._descendants = ProcessTree(self._roots)
        self._total_mib = psutil.virtual_memory().total / MIB
        self._cores = psutil.cpu_count() or 1
        self._tree: list[psutil.Process] = []
        self._ranks: dict[int, int | None] = {}  # pid -> the rank it serves (None: torchrun, the runner)
        self._utilisation = 0.0

    def _relist(self) -> None:
        # The tree is re-listed once a second (jobs.ProcessTree reads /proc's listing and each new PID's
        # parent) and the known members' RSS read every sample. The same Process objects are kept,
        # because cpu_percent() compares with that object's previous call.
        found = [*self._roots, *self._descendants.descendants()]
        known = {p.pid: p for p in self._tree}
        tree = []
        for pid in found:
            if pid in known:
                tree.append(known[pid])
                continue
            try:
                tree.append(psutil.Process(pid))
            except psutil.Error:  # ended since the listing
                continue
        self._tree = tree

    def _rank_of(self, proc: psutil.Process) -> int | None:
        """The torchrun rank a process serves (its RANK, which its own children inherit), read once per process."""
        if proc.pid not in self._ranks:
            try:
                rank = proc.environ().get("RANK", "")
            except (psutil.Error, OSError):  # gone, or another user's
                rank = ""
            self._ranks[proc.pid] = int(rank) if rank.isdigit() and int(rank) <= MAX_RANK_DEVICE else None
        return self._ranks[proc.pid]

    def read(self, with_processes: bool) -> tuple[list[Reading], list[ProcessReading]]:
        if with_processes:  # true for the first sample, then once a second
            self._relist()
        rss: dict[psutil.Process, int] = {}
        names: dict[psutil.Process, str | None] = {}
        cpu = 0.0
        for proc in self._tree:
            try:
                rss[proc] = _rss(proc.pid)
            except OSError:  # exited since the last listing
                continue
            if with_processes:
                with proc.oneshot():  # one read of /proc/PID/stat for the name and the CPU time
                    names[proc] = _process_name(proc)
                    cpu += _cpu_percent(proc)
        per_rank: dict[int, int] = {}
        for proc, used in rss.items():
            rank = self._rank_of(proc)
            if rank is not None:
                per_rank[rank] = per_rank.get(rank, 0) + used
        processes: list[ProcessReading] = []
        if with_processes:
            # /proc counts CPU time in 10 ms ticks, so at 100 Hz a per-sample reading would be 0 or
            # 100%: utilisation is measured over each second and repeated in between, as a share of
            # all the host's cores (0-100 like a GPU's). An object's first cpu_percent() primes it: 0.0.
            self._utilisation = cpu / self._cores
            processes = [("cpu", proc.pid, names.get(proc), used / MIB) for proc, used in rss.items()]
        ranks: list[Reading] = [
            (f"cpu{rank}", f"rank {rank} RSS", used / MIB, self._total_mib, None)
            for rank, used in sorted(per_rank.items())
        ]
        return [("cpu", TREE_LABEL, sum(rss.values()) / MIB, self._total_mib, self._utilisation), *ranks], processes

    def close(self) -> None:
        pass


class MemorySampler:
    def __init__(
        self,
        folder: RunFolder,
        hz: float = 10.0,
        root_pid: int | list[int] | None = None,
        gpu_indices: list[int] | None = None,
        source: str = "auto",
    ):
        if not MIN_HZ <= hz <= MAX_HZ:  # also refuses NaN
            raise ValueError(f"sampling rate {hz} Hz is outside {MIN_HZ:g} to {MAX_HZ:g} Hz")
        if source not in ("auto", "nvml", "psutil"):
            raise ValueError(f"unknown memory source {source!r}: auto, nvml or psutil")
        self.folder = folder
        self.hz = hz
        self.fallback_reason: str | None = None  # why "auto" recorded the process tree instead of GPUs
        self._source = self._open_source(source, root_pid, gpu_indices)
        self.started_monotonic: float | None = None  # time.monotonic() at elapsed_s == 0, to align phases
        self.samples_taken = 0
        self.write_error: OSError | None = None  # the disk filled (or the folder went away): nothing more is written
        self.thread_cpu_seconds = 0.0  # CPU time of the sampling thread (time.thread_time), for overhead
        self._sample_seconds = 0.0
        self._lock = threading.Lock()  # guards _peaks and _last, read by the live view and hang detector
        self._peaks: dict[str, float] = {}
        self._peak_at: dict[str, float] = {}  # elapsed_s of each peak: the phase it belongs to
        self._last: dict[str, dict] = {}
        self._stopping = threading.Event()
        self._stop_lock = threading.RLock()  # re-entrant: a signal handler may call stop() inside stop()
        self._thread: threading.Thread | None = None
        self._files: list[IO[bytes]] = []
        self._health_file: IO[bytes] | None = None  # NVML only: the process tree has no GPU health
        self._row_heads: dict[tuple[str, str], str] = {}  # (gpu, uuid) -> "gpu,uuid," as the csv module quotes them

    def _open_source(self, source: str, root_pid: int | list[int] | None, gpu_indices: list[int] | None):
        if source != "psutil":
            # Only here: a run that records the process tree never loads the NVML binding.
            from avatardoctor.machine.nvml import NvmlMemoryReader, NvmlUnavailable

            try:
                return _NvmlSource(NvmlMemoryReader(gpu_indices))
            except NvmlUnavailable as err:
                if source == "nvml":
                    raise
                self.fallback_reason = f"{err}: recording the process tree's RSS instead"
        roots = [os.getpid()] if root_pid is None else [root_pid] if isinstance(root_pid, int) else root_pid
        return _PsutilSource(roots)

    @property
    def source_used(self) -> str:
        return self._source.name

    @property
    def mean_sample_seconds(self) -> float:
        """Mean wall time of one sample (read and write), for the overhead benchmark."""
        return self._sample_seconds / self.samples_taken if self.samples_taken else 0.0

    def peaks_mib(self) -> dict[str, float]:
        with self._lock:
            return dict(self._peaks)

    def peak_times(self) -> dict[str, float]:
        with self._lock:
            return dict(self._peak_at)

    def last(self) -> dict[str, dict]:
        with self._lock:
            return {gpu: dict(sample) for gpu, sample in self._last.items()}

    def start(self) -> None:
        if self._thread is not None or self._stopping.is_set():
            raise RuntimeError("a MemorySampler starts once")
        try:
            self.folder.logs.mkdir(parents=True, exist_ok=True)
            for path, columns in (
                (self.folder.gpu_memory_csv, MEMORY_COLUMNS),
                (self.folder.gpu_processes_csv, PROCESS_COLUMNS),
            ):
                self._files.append(
                    open(path, "wb", buffering=0)
                )  # unbuffered: each write() goes straight to the kernel
                _append_whole(self._files[-1], _csv_bytes([columns]))
            if isinstance(self._source, _NvmlSource):
                self._health_file = open(self.folder.gpu_health_csv, "wb", buffering=0)
                _append_whole(self._health_file, _csv_bytes([HEALTH_COLUMNS]))
        except OSError as err:  # still sampled: the peaks are kept in memory
            self.write_error = err
        self.started_monotonic = time.monotonic()
        # A daemon, so that a driver call that never returns cannot keep the runner from exiting.
        self._thread = threading.Thread(target=self._run, name="avatardoctor-memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._stop_lock:
            self._stopping.set()
            if self._thread is not None:
                self._thread.join(JOIN_TIMEOUT_S)
                if self._thread.is_alive():
                    return  # stuck in a driver call: leave its files open rather than close them under it
            files, self._files = self._files, []  # each closed once, however often stop() runs
            if self._health_file is not None:
                files.append(self._health_file)
                self._health_file = None
            for file in files:
                file.close()
            self._source.close()

    def _run(self) -> None:
        started = self.started_monotonic
        assert started is not None  # start() sets it before the thread starts
        cpu_at_start = time.thread_time()
        slot = 0
        listed_interval = -1
        while not self._stopping.is_set():
            began = time.monotonic()
            elapsed = began - started
            interval = math.floor(elapsed / PROCESS_INTERVAL_S)  # processes: the first sample of each second
            self._sample(elapsed, with_processes=interval > listed_interval)
            listed_interval = interval
            self._sample_seconds += time.monotonic() - began
            self.samples_taken += 1
            self.thread_cpu_seconds = time.thread_time() - cpu_at_start
            slot = next_slot(slot, time.monotonic() - started, self.hz)
            self._stopping.wait(started + slot / self.hz - time.monotonic())

    def _memory_lines(self, stamp: str, elapsed: float, rows) -> bytes:
        """The sample's gpu_memory.csv rows, as csv.writer writes them; the text fields (gpu, uuid), the only
        ones it might quote, formatted once per device: a csv.writer per sample was a tenth of its cost."""
        lines = []
        for gpu, uuid, used, total, utilisation in rows:
            head = self._row_heads.get((gpu, uuid))
            if head is None:
                head = self._row_heads[gpu, uuid] = _csv_bytes([[gpu, uuid, ""]]).decode()[:-1]
            lines.append(f"{stamp},{elapsed!r},{head}{_number(used)},{_number(total)},{_number(utilisation)}\n")
        return "".join(lines).encode()

    def _sample(self, elapsed: float, with_processes: bool) -> None:
        readings, processes = self._source.read(with_processes)
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        elapsed = round(elapsed, 3)
        rows = [
            (gpu, uuid, _round(used), _round(total), _round(utilisation))
            for gpu, uuid, used, total, utilisation in readings
        ]
        if self.write_error is None:
            memory_file, process_file = self._files
            try:
                _append_whole(memory_file, self._memory_lines(stamp, elapsed, rows))
                if processes:
                    _append_whole(
                        process_file,
                        _csv_bytes(
                            [stamp, elapsed, gpu, pid, name, _round(used)] for gpu, pid, name, used in processes
                        ),
                    )
                if with_processes and self._health_file is not None and isinstance(self._source, _NvmlSource):
                    # health on the processes' 1 s cadence: a few NVML calls per GPU, not worth 10 a second
                    _append_whole(
                        self._health_file, _csv_bytes([stamp, elapsed, *row] for row in self._source.health())
                    )
            except OSError as err:
                self.write_error = err
        with self._lock:
            for gpu, _, used, total, utilisation in rows:
                self._last[gpu] = {
                    "memory_used_mib": used,
                    "memory_total_mib": total,
                    "utilization_pct": utilisation,
                    "elapsed_s": elapsed,
                }
                if used is not None and used > self._peaks.get(gpu, -math.inf):
                    self._peaks[gpu] = used
                    self._peak_at[gpu] = elapsed
