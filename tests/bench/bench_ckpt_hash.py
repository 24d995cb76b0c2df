"""Benchmark: `ckpt verify --deep`'s one read (sha256 of every file + CRC-32 of every .pth entry),
as a ratio to this machine's limit timed in the same run.

Target (issue 19): ours >= 0.9 x limit, cold and warm, where limit = min(disk read, hashlib on every
core): `cat FILES > /dev/null` for the disk, and one thread per usable CPU hashing an in-memory buffer
with hashlib's sha256 for the CPU (measured, not one core's rate times the cores: on a loaded machine
the cores are not all ours). Run:
    .venv/bin/python tests/bench/bench_ckpt_hash.py [--gib 4] [--dir DIR] [--runs 5] [--cold]
It writes GIB of real random data laid out like the real Wan2.2-S2V-14B checkpoint, scaled down: its
files' sizes in proportion (the full-size skeleton's), the two .pth files as stored zip archives whose
entries have the real archives' sizes in proportion. Then, RUNS times, interleaved so that a change in
the machine's load hits every measurement alike: ours (deep.hash_and_check_crc, what the CLI runs,
with its progress bar drawn to an unseen terminal: a child process hashing from memory maps), the
same reading done in this process (hashchild.hash_files, no child: what the child's start-up costs)
and again with read() instead of maps (the reader before: what the copy from the page cache costs),
`cat`, and the in-memory hashlib rate. Each run gives ratios; min / median / max over the runs are printed, with
the load average at the start and the end. --cold drops the page cache before each file read (root);
the default reads everything once first, so it all runs from memory. The CPU seconds each byte costs
are printed too: unlike wall-clock ratios they do not move with the machine's load, and where the CPU is
the limit (warm), hashlib's CPU per byte over ours is the ratio an unloaded machine would show. Once at
the end: sha256sum over the same files, whose digests must equal ours. The data is removed at the end, on Ctrl-C and errors too.
Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from benchstats import spread
from rich.console import Console

from avatardoctor.ckpt.deep import hash_and_check_crc
from avatardoctor.ckpt.hashchild import CHUNK_BYTES, FileJob, hash_files
from avatardoctor.ckpt.hashing import HashingInterrupted, sha256_files, usable_cpus
from avatardoctor.ckpt.skeleton import write_skeleton
from avatardoctor.units import GIB, MIB, gib

TARGET_RATIO = 0.9
BLOCK_BYTES = 64 * MIB
PAGE_BYTES = 4096
HASHLIB_BUFFER_BYTES = 128 * MIB  # per thread, hashed HASHLIB_PASSES times
HASHLIB_PASSES = 4


class RandomBytes:
    """Real random data at disk speed: os.urandom runs at ~420 MiB/s here, slower than the disk, so one
    random 64 MiB block is handed out over and over with a counter stamped into the first 8 bytes of
    every 4 KiB page. No page repeats, so neither dedup nor compression (btrfs, zfs) can shrink what is
    read back, and the bytes are still random to the hash."""

    def __init__(self) -> None:
        self.block = bytearray(os.urandom(BLOCK_BYTES))
        self.stamp = 0

    def write(self, f, size: int) -> None:
        view = memoryview(self.block)
        while size:
            for page in range(0, BLOCK_BYTES, PAGE_BYTES):
                struct.pack_into("<Q", self.block, page, self.stamp)
                self.stamp += 1
            size -= f.write(view[: min(size, BLOCK_BYTES)])


def real_layout() -> tuple[dict[str, int], dict[str, list[int]]]:
    """The real checkpoint's files of 1 MiB or more (name -> bytes) and each .pth archive's entry
    sizes, from the full-size skeleton (real lengths, sparse data: seconds, almost no disk)."""
    with tempfile.TemporaryDirectory() as folder:
        root = write_skeleton(Path(folder) / "full")
        files = {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file() and p.stat().st_size >= MIB}
        entries = {}
        for name in files:
            if name.endswith(".pth"):
                with zipfile.ZipFile(root / name) as z:
                    entries[name] = [i.file_size for i in z.infolist()]
    return files, entries


def write_checkpoint_like(folder: Path, total: int) -> list[Path]:
    """The real layout scaled to `total` bytes, fsynced so writeback does not run during the timing."""
    files, entries = real_layout()
    scale = total / sum(files.values())
    data = RandomBytes()
    paths = []
    for name, size in files.items():
        path = folder / name
        if name in entries:
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
                for i, entry_size in enumerate(entries[name]):
                    with archive.open(f"{path.stem}/data/{i}", "w", force_zip64=True) as entry:
                        data.write(entry, int(entry_size * scale))
        else:
            with open(path, "wb") as f:
                data.write(f, int(size * scale))
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        paths.append(path)
    return paths


def parallel_hashlib(buffers: list[memoryview]) -> None:
    """hashlib's sha256 with one thread per buffer, each hashing its own in-memory buffer HASHLIB_PASSES
    times in our chunk size: the CPU's limit for hashing, as this machine's load allows it now."""

    def hash_buffer(view: memoryview) -> None:
        digest = hashlib.sha256()
        for _ in range(HASHLIB_PASSES):
            for offset in range(0, len(view), CHUNK_BYTES):
                digest.update(view[offset : offset + CHUNK_BYTES])

    workers = [threading.Thread(target=hash_buffer, args=(b,)) for b in buffers]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def in_process(paths: list[Path], archives: set[Path], mapped: bool) -> None:
    """What the child does, in this process: from maps, or with read() (the reader before the child)."""
    jobs = [FileJob(p, p.stat().st_size, p in archives, mapped) for p in paths]
    hash_files(jobs, usable_cpus(), threading.Event(), lambda i, n: None, lambda i, r: None)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def cpu_seconds() -> float:
    """CPU time of this process's threads and of its finished children (cat)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(run: Callable[[], object], cold: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    if cold:
        drop_page_cache()
    wall, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def cat_to_null(files: list[str]) -> None:
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)


def measure(paths: list[Path], runs: int, cold: bool) -> None:
    files = [str(p) for p in paths]
    total = sum(p.stat().st_size for p in paths)
    archives = {p for p in paths if p.suffix == ".pth"}
    cores = usable_cpus()
    load_start = os.getloadavg()
    if not cold:
        cat_to_null(files)  # the one warming read
    unseen = Console(file=open(os.devnull, "w"), force_terminal=True, width=100)  # the bar drawn, 10 times a second
    buffers = [memoryview(os.urandom(HASHLIB_BUFFER_BYTES)) for _ in range(cores)]
    hashlib_bytes = cores * HASHLIB_PASSES * HASHLIB_BUFFER_BYTES
    results = []
    runners = {
        "ours": (lambda: results.append(hash_and_check_crc(paths, archives, unseen)), total, cold),
        "maps, no child": (lambda: in_process(paths, archives, mapped=True), total, cold),
        "read(), no child": (lambda: in_process(paths, archives, mapped=False), total, cold),
        "cat": (lambda: cat_to_null(files), total, cold),
        "hashlib x cores": (lambda: parallel_hashlib(buffers), hashlib_bytes, False),
    }
    rates: dict[str, list[float]] = {name: [] for name in runners}
    cpu_per_gib: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(runs):  # interleaved: a change in load falls on all four alike
        for name, (run, size, drop) in runners.items():
            wall, cpu = timed(run, drop)
            rates[name].append(size / wall)
            cpu_per_gib[name].append(cpu / (size / GIB))
    found = results[-1]
    load_end = os.getloadavg()
    limits = [min(c, h) for c, h in zip(rates["cat"], rates["hashlib x cores"])]
    ratio = [o / lim for o, lim in zip(rates["ours"], limits)]
    ratios = {name: [r / lim for r, lim in zip(rates[name], limits)] for name in ("maps, no child", "read(), no child")}
    tiny = paths[0].parent / "one-byte"
    tiny.write_bytes(b"x")
    startup = statistics.median(timed(lambda: sha256_files([tiny]), False)[0] for _ in range(5))

    start = time.perf_counter()
    out = subprocess.run(["sha256sum", *files], stdout=subprocess.PIPE, check=True, text=True).stdout
    sha256sum_rate = total / (time.perf_counter() - start)
    agree = found.digests == {Path(line[66:]): line[:64] for line in out.splitlines()}
    crc_sound = found.checked == dict.fromkeys(archives)

    sizes = ", ".join(f"{gib(p.stat().st_size)}" for p in paths)
    print(
        f"data: {gib(total)} in {len(paths)} files laid out like the real checkpoint ({sizes}); .pth: {len(archives)}"
    )
    print(f"{cores} usable CPUs; {runs} runs, {'cold: page cache dropped before each read' if cold else 'warm'}")
    print(f"load average (1, 5, 15 min): start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, ", end="")
    print(f"end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print("GiB/s, min / median / max:")
    for name, values in rates.items():
        print(f"  {name:<18} {spread([v / GIB for v in values], '.2f')}")
    print(f"  sha256sum (once)   {sha256sum_rate / GIB:.2f}")
    bound = "read" if statistics.median(rates["cat"]) < statistics.median(rates["hashlib x cores"]) else "CPU"
    print(
        f"limit = min(cat, hashlib x cores), per run: {spread([v / GIB for v in limits], '.2f')} GiB/s ({bound}-bound)"
    )
    print(f"ours / limit              {spread(ratio, '.2f')}   (target >= {TARGET_RATIO})")
    for name, values in ratios.items():
        print(f"{name + ' / limit':<26}{spread(values, '.2f')}")
    ours_seconds = total / statistics.median(rates["ours"])
    print(
        f"child start-up (median of 5, 1-byte file): {startup:.3f} s = {startup / ours_seconds:.1%} of ours' median time"
    )
    print("CPU seconds per GiB, min / median / max (load-independent: what each byte costs, on all threads):")
    for name, values in cpu_per_gib.items():
        print(f"  {name:<18} {spread(values, '.3f')}")
    hashlib_cpu = statistics.median(cpu_per_gib["hashlib x cores"])
    print(f"hashlib / ours, CPU per byte (medians): {hashlib_cpu / statistics.median(cpu_per_gib['ours']):.2f}", end="")
    print(f"; hashlib / maps, no child: {hashlib_cpu / statistics.median(cpu_per_gib['maps, no child']):.2f}", end="")
    print(f"; hashlib / read(), no child: {hashlib_cpu / statistics.median(cpu_per_gib['read(), no child']):.2f}")
    print(f"ours / sha256sum      {statistics.median(rates['ours']) / sha256sum_rate:.1f}x (medians)")
    print(
        f"digests agree with sha256sum: {'yes' if agree else 'NO'}; every .pth CRC-32 sound: {'yes' if crc_sound else 'NO'}"
    )
    print("PASS" if agree and crc_sound and statistics.median(ratio) >= TARGET_RATIO else "BELOW TARGET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="data size in GiB (default 4)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to make the data folder")
    parser.add_argument("--runs", type=int, default=5, help="timed runs; min / median / max are shown")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each read (root)")
    args = parser.parse_args()
    total = int(args.gib * GIB)
    free = shutil.disk_usage(args.dir).free
    if free < 2 * total:
        sys.exit(f"refusing: {args.dir} has {gib(free)} free, the benchmark needs twice the data ({gib(2 * total)})")
    if args.cold and os.geteuid() != 0:
        sys.exit("--cold drops the page cache, which needs root")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` removes the data on kill too
    folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-hash-", dir=args.dir))
    try:
        start = time.perf_counter()
        paths = write_checkpoint_like(folder, total)
        print(f"wrote {gib(total)} of random data to {folder} in {time.perf_counter() - start:.1f} s")
        measure(paths, args.runs, args.cold)
    except (KeyboardInterrupt, HashingInterrupted):
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}")


if __name__ == "__main__":
    main()
