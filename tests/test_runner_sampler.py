"""The memory sampler on a machine without a GPU: the psutil path for real (a real process tree, a
real SIGKILL), its schedule, its thread safety, a full disk, and the fallback from NVML. The NVML path
runs against a fake NVML in tests/test_nvml_fake.py. No assertion counts samples against the wall clock (a busy
machine delays any thread): the schedule is tested as a function of the clock, rates in
tests/bench/bench_sampler.py."""

from __future__ import annotations

import csv
import errno
import io
import itertools
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avatardoctor.machine.nvml import NvmlUnavailable
from avatardoctor.reports.runfolder import read_memory_csv
from avatardoctor.runner import sampler as sampler_module
from avatardoctor.runner.folder import RunFolder
from avatardoctor.runner.sampler import MEMORY_COLUMNS, PROCESS_COLUMNS, MemorySampler, next_slot

# A sampling thread that dies of an exception fails the test that started it.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

ALLOCATION_MIB = 200
# The sampled root starts a child, which starts a grandchild; the grandchild allocates (and touches)
# 200 MiB, says so on the inherited stdout, and sleeps.
GRANDCHILD = f"import time; time.sleep(0.3); b = bytearray(b'x') * ({ALLOCATION_MIB} * 2**20); print('ready', flush=True); time.sleep(60)"
CHILD = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {GRANDCHILD!r}])"
ROOT = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {CHILD!r}])"


def nvml_starts() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture
def folder(tmp_path) -> RunFolder:
    return RunFolder(tmp_path / "run")


@pytest.fixture
def new_sampler(folder):
    """MemorySampler(folder, ...), stopped after the test even when an assertion fails mid-run."""
    made: list[MemorySampler] = []

    def make(**options) -> MemorySampler:
        made.append(MemorySampler(folder, **options))
        return made[-1]

    yield make
    for sampler in made:
        sampler.stop()


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll until condition() holds; the timeout only guards against a hang, it measures nothing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


@pytest.fixture
def process_tree():
    root = subprocess.Popen([sys.executable, "-c", ROOT], stdout=subprocess.PIPE, text=True)
    yield root
    for member in psutil.Process(root.pid).children(recursive=True):
        member.kill()
    root.kill()
    root.wait()


def test_a_process_tree_sampled_at_20_hz(folder, new_sampler, process_tree):
    sampler = new_sampler(hz=20, root_pid=process_tree.pid, source="psutil")
    sampler.start()
    assert process_tree.stdout.readline().strip() == "ready"  # the grandchild holds its 200 MiB
    wait_for(lambda: sampler.peaks_mib().get("cpu", 0) >= ALLOCATION_MIB, "the grandchild's memory counted")
    during = sampler.last()["cpu"]
    # and in the per-process file, written at the first sample of each second
    wait_for(
        lambda: (
            max((float(p["used_mib"]) for p in read_rows(folder.gpu_processes_csv)[1]), default=0) >= ALLOCATION_MIB
        ),
        "a listing",
    )
    sampler.stop()
    duration = time.monotonic() - sampler.started_monotonic

    header, rows = read_rows(folder.gpu_memory_csv)
    assert (
        header
        == MEMORY_COLUMNS
        == ["time", "elapsed_s", "gpu", "uuid", "memory_used_mib", "memory_total_mib", "utilization_pct"]
    )
    assert 1 <= len(rows) <= duration * 20 + 1  # never more than the schedule's slots: no burst
    assert sampler.samples_taken == len(rows)
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert elapsed[0] >= 0 and all(b > a for a, b in itertools.pairwise(elapsed))
    assert {r["gpu"] for r in rows} == {"cpu"}
    assert all(r["time"].endswith("+00:00") and len(r["time"].split("T")[1]) == len("07:15:49.573+00:00") for r in rows)
    used = [float(r["memory_used_mib"]) for r in rows]
    assert max(used) >= ALLOCATION_MIB
    assert sampler.peaks_mib() == {"cpu": max(used)}
    assert during["memory_used_mib"] >= ALLOCATION_MIB and during["memory_total_mib"] > during["memory_used_mib"]
    assert 0 <= during["utilization_pct"] <= 100

    header, processes = read_rows(folder.gpu_processes_csv)
    assert header == PROCESS_COLUMNS
    assert {int(p["pid"]) for p in processes} >= {process_tree.pid}
    assert max(float(p["used_mib"]) for p in processes) >= ALLOCATION_MIB
    assert {p["name"] for p in processes} & {"python", "python3", Path(sys.executable).name}

    timeline = read_memory_csv(folder.gpu_memory_csv)
    assert timeline.notes == []
    assert timeline.gpus == ["cpu"] and len(timeline.samples) == len(rows)
    assert timeline.samples["used_mib"].max() == max(used)


def test_a_rank_killed_with_sigkill_does_not_stop_the_sampler(folder, new_sampler, process_tree):
    sampler = new_sampler(hz=20, root_pid=process_tree.pid, source="psutil")
    sampler.start()
    assert process_tree.stdout.readline().strip() == "ready"
    # the grandchild joins the tree at the next listing
    wait_for(lambda: sampler.peaks_mib().get("cpu", 0) >= ALLOCATION_MIB, "the grandchild's memory counted")
    grandchild = max(psutil.Process(process_tree.pid).children(recursive=True), key=lambda p: p.memory_info().rss)
    grandchild.send_signal(signal.SIGKILL)
    wait_for(
        lambda: sampler.last()["cpu"]["memory_used_mib"] < sampler.peaks_mib()["cpu"] - 150, "a sample after the kill"
    )
    after = sampler.last()["cpu"]
    sampler.stop()
    _, rows = read_rows(folder.gpu_memory_csv)
    assert float(rows[-1]["elapsed_s"]) >= after["elapsed_s"]  # sampling went on past the kill, into the file


def test_utilisation_is_the_trees_share_of_the_cores_over_each_second(folder, new_sampler):
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"]
    )
    try:
        sampler = new_sampler(hz=10, root_pid=busy.pid, source="psutil")
        sampler.start()
        wait_for(lambda: sampler.last().get("cpu", {}).get("elapsed_s", 0) > 1.05, "a sample in the second second")
        sampler.stop()
    finally:
        busy.kill()
        busy.wait()
    rows = read_rows(folder.gpu_memory_csv)[1]
    first_second = [float(r["utilization_pct"]) for r in rows if float(r["elapsed_s"]) < 0.95]
    after = [float(r["utilization_pct"]) for r in rows if float(r["elapsed_s"]) > 1.05]
    assert set(first_second) == {0.0}  # the first cpu_percent() call only primes the counter
    one_core = 100 / psutil.cpu_count()
    # One process spinning: some of one core, never more (how much a busy machine gives it is not the sampler's).
    assert after and all(0 < u <= 1.05 * one_core for u in after), after


def run_until_killed(folder: RunFolder, tmp_path: Path) -> None:
    script = tmp_path / "sample_forever.py"
    script.write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path
        from avatardoctor.runner.folder import RunFolder
        from avatardoctor.runner.sampler import MemorySampler
        sampler = MemorySampler(RunFolder(Path({str(folder.root)!r})), hz=100, source="psutil")
        sampler.start()
        print("started", flush=True)
        time.sleep(60)
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        # rows reach the file as they are taken, while the process lives (not at exit, which SIGKILL skips)
        wait_for(lambda: folder.gpu_memory_csv.read_bytes().count(b"\n") > 3, "rows in the file")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_the_csv_is_whole_when_the_sampler_process_is_killed(folder, tmp_path):
    run_until_killed(folder, tmp_path)
    text = folder.gpu_memory_csv.read_text()
    assert text.endswith("\n")  # a last line without its end would be a line cut off
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == MEMORY_COLUMNS
    assert len(lines) - 1 >= 3
    for line in lines[1:]:
        assert len(line) == len(MEMORY_COLUMNS) and line[2] == "cpu"
        assert float(line[1]) >= 0 and float(line[4]) > 0 and float(line[5]) > 0
    processes = folder.gpu_processes_csv.read_text()
    assert processes.endswith("\n") and len(processes.splitlines()) >= 2
    assert read_memory_csv(folder.gpu_memory_csv).notes == []


def schedule(hz: float, sample_s: float, samples: int, late_s: float = 0.0) -> list[int]:
    """The slots a sampler takes on an ideal clock: each sample costs sample_s, each wake-up comes late_s late."""
    slots, slot, now = [0], 0, 0.0
    for _ in range(samples - 1):
        slot = next_slot(slot, now + sample_s, hz)
        now = slot / hz + late_s
        slots.append(slot)
    return slots


def test_the_schedule_does_not_drift_with_the_cost_of_a_sample():
    # 30 ms of a 50 ms period: sleeping a period after each sample would drift to 80 ms
    assert schedule(hz=20, sample_s=0.03, samples=20) == list(range(20))
    assert schedule(hz=20, sample_s=0.03, samples=5, late_s=0.015) == [0, 1, 2, 3, 4]  # late wake-ups do not add up


def test_a_sample_that_overruns_skips_the_missed_slots():
    # each sample takes 2.4 periods: slots 0, 3, 6, ..., no burst to catch up and no drift either
    assert schedule(hz=20, sample_s=0.12, samples=6) == [0, 3, 6, 9, 12, 15]
    assert next_slot(4, elapsed_s=10.0, hz=10) == 101  # a sampler stalled for seconds resumes at the next slot ahead


@settings(deadline=None)
@given(previous=st.integers(0, 10**6), hz=st.floats(0.1, 100), behind=st.floats(0, 1e4))
def test_the_next_slot_is_the_first_after_both_the_last_and_the_clock(previous, hz, behind):
    elapsed = previous / hz + behind
    slot = next_slot(previous, elapsed, hz)
    assert slot > previous and slot > math.floor(elapsed * hz)
    assert slot - 1 <= max(previous, math.floor(elapsed * hz))  # the first such: none skipped that was still ahead


def test_samples_land_in_the_file_in_order_while_the_clock_runs(new_sampler):
    sampler = new_sampler(hz=100, source="psutil")
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 3, "three samples")
    sampler.stop()
    elapsed = [float(r["elapsed_s"]) for r in read_rows(sampler.folder.gpu_memory_csv)[1]]
    assert len(elapsed) == sampler.samples_taken >= 3 and all(b > a for a, b in itertools.pairwise(elapsed))


def test_stop_is_idempotent_and_ends_the_files(folder, new_sampler):
    sampler = new_sampler(hz=100, source="psutil")
    sampler.stop()  # before start: closes what it holds, raises nothing
    with pytest.raises(RuntimeError):
        sampler.start()

    sampler = new_sampler(hz=100, source="psutil")
    sampler.start()
    wait_for(lambda: sampler.samples_taken >= 2, "two samples")
    sampler.stop()
    assert not any(t.name == "avatardoctor-memory-sampler" for t in threading.enumerate())  # joined, not left running
    size = folder.gpu_memory_csv.stat().st_size
    sampler.stop()
    time.sleep(0.1)
    assert folder.gpu_memory_csv.stat().st_size == size
    assert sampler.samples_taken >= 2 and sampler.mean_sample_seconds > 0 and sampler.thread_cpu_seconds > 0


class FullDiskFolder(RunFolder):
    """The memory CSV on /dev/full: a real device on which every write fails with ENOSPC."""

    @property
    def gpu_memory_csv(self) -> Path:
        return Path("/dev/full")


def test_a_full_disk_stops_the_writing_not_the_sampling(tmp_path, new_sampler):
    sampler = MemorySampler(FullDiskFolder(tmp_path / "run"), hz=100, source="psutil")
    try:
        sampler.start()
        wait_for(lambda: sampler.samples_taken >= 2, "two samples")
    finally:
        sampler.stop()
    assert sampler.write_error is not None and sampler.write_error.errno == errno.ENOSPC
    assert sampler.peaks_mib()["cpu"] > 0  # still measured: the runner records the peaks in debug_info.json


def test_a_row_written_in_part_is_cut_back(tmp_path):
    class HalfWrites(io.FileIO):  # what write(2) does when the disk fills in mid-row
        def write(self, data):
            return super().write(bytes(data)[: len(data) // 2])

    path = tmp_path / "gpu_memory.csv"
    path.write_bytes(b"time,elapsed_s\n")
    with HalfWrites(path, "a") as f, pytest.raises(OSError) as err:
        sampler_module._append_whole(f, b"2026-12-02T04:00:00.000+00:00,0.1\n")
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"time,elapsed_s\n"  # whole to its last line


@pytest.mark.parametrize("hz", [0.09, 100.5, 0, -1, math.nan, math.inf])
def test_rates_outside_the_bounds_are_refused(folder, hz):
    with pytest.raises(ValueError, match="Hz"):
        MemorySampler(folder, hz=hz, source="psutil")


@pytest.mark.parametrize("hz", [0.1, 100])
def test_the_bounds_themselves_are_accepted(folder, hz):
    assert MemorySampler(folder, hz=hz, source="psutil").hz == hz


def test_peaks_and_last_are_safe_to_read_while_sampling(new_sampler):
    sampler = new_sampler(hz=100, source="psutil")
    seen: list[tuple[dict, dict]] = []
    errors: list[Exception] = []

    def read_constantly():
        try:  # until ten samples were written while two readers ask all the time
            while sampler.samples_taken < 10 and time.monotonic() < deadline:
                last, peaks = sampler.last(), sampler.peaks_mib()
                seen.append((last, peaks))
        except Exception as err:  # any failure of a reader is the finding
            errors.append(err)

    sampler.start()
    deadline = time.monotonic() + 60  # only against a hang
    readers = [threading.Thread(target=read_constantly) for _ in range(2)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    sampler.stop()
    assert errors == []
    seen = [(last, peaks) for last, peaks in seen if last]
    assert sampler.samples_taken >= 10
    assert len({last["cpu"]["elapsed_s"] for last, _ in seen}) >= 2  # the readers saw the samples change under them
    for last, peaks in seen:
        assert set(last["cpu"]) == {"memory_used_mib", "memory_total_mib", "utilization_pct", "elapsed_s"}
        assert peaks["cpu"] >= last["cpu"]["memory_used_mib"]  # the peak, read later, is never below a sample
    copy = sampler.last()
    copy["cpu"]["memory_used_mib"] = -1.0
    assert sampler.last()["cpu"]["memory_used_mib"] != -1.0  # callers get copies, not the sampler's own


@pytest.mark.skipif(nvml_starts(), reason="NVML works on this machine: nothing to fall back from")
def test_auto_falls_back_to_psutil_without_a_driver_and_says_so(folder):
    sampler = MemorySampler(folder, source="auto")
    assert sampler.source_used == "psutil"
    assert "NVML" in sampler.fallback_reason
    with pytest.raises(NvmlUnavailable):
        MemorySampler(folder, source="nvml")
    assert MemorySampler(folder, source="psutil").fallback_reason is None


def test_an_unknown_source_is_refused(folder):
    with pytest.raises(ValueError, match="source"):
        MemorySampler(folder, source="smi")


# torchrun's shape: an agent without RANK and one worker per rank with it; rank 1's memory is in a child it started
RANKED_ROOT = textwrap.dedent(f"""
    import os, subprocess, sys
    workers = [
        subprocess.Popen([sys.executable, "-c", {CHILD!r} if rank == 1 else "import time; time.sleep(60)"],
                         env={{**os.environ, "RANK": str(rank)}})
        for rank in (0, 1)
    ]
    workers[0].wait()
""")


def test_each_ranks_processes_are_a_device_of_their_own(new_sampler):
    root = subprocess.Popen([sys.executable, "-c", RANKED_ROOT], stdout=subprocess.PIPE, text=True)
    try:
        sampler = new_sampler(hz=20, root_pid=root.pid, source="psutil")
        sampler.start()
        assert root.stdout.readline().strip() == "ready"  # rank 1's grandchild holds its 200 MiB
        wait_for(lambda: sampler.peaks_mib().get("cpu1", 0) >= ALLOCATION_MIB, "rank 1's child counted as rank 1")
        wait_for(lambda: "cpu0" in sampler.peaks_mib(), "rank 0 sampled")
        sampler.stop()
        peaks = sampler.peaks_mib()
        assert set(peaks) == {"cpu", "cpu0", "cpu1"} and peaks["cpu0"] < ALLOCATION_MIB  # the agent is no rank
        assert peaks["cpu"] >= peaks["cpu1"] + peaks["cpu0"] - 1  # the tree holds both ranks and the agent
    finally:
        for member in psutil.Process(root.pid).children(recursive=True):
            member.kill()
        root.kill()
        root.wait()


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(max_size=8),
            st.text(max_size=12),
            st.none() | st.floats(allow_nan=False),
            st.none() | st.floats(allow_nan=False),
            st.none() | st.integers(0, 100) | st.floats(0, 100),
        ),
        max_size=4,
    ),
    elapsed=st.floats(0, 1e6),
)
def test_the_preformatted_memory_rows_are_what_the_csv_module_writes(tmp_path_factory, rows, elapsed):
    """A sample's rows are formatted without a csv.writer (its cost per sample), quoting included."""
    sampler = MemorySampler(RunFolder(tmp_path_factory.mktemp("run")), source="psutil")
    stamp = "2026-12-02T15:00:00.123+00:00"
    expected = io.StringIO()
    csv.writer(expected, lineterminator="\n").writerows([stamp, elapsed, *row] for row in rows)
    assert sampler._memory_lines(stamp, elapsed, rows) == expected.getvalue().encode()
