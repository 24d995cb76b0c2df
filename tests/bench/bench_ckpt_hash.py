"""Benchmark: content hashing for `ckpt verify --deep`, against this machine's limit and sha256sum.

Target: our throughput at least 0.8 of the machine's limit, which is the slower of reading the
files (`cat FILES > /dev/null`) and hashing on every core (cores x one core's hashlib sha256 rate on
an in-memory buffer). Run:
    .venv/bin/python tests/bench/bench_ckpt_hash.py [--gib 4] [--files 6] [--dir DIR] [--runs 3] [--cold]
It writes GIB of real random data in FILES shards of unequal sizes under a new folder in DIR, then
measures, all under the same page-cache conditions: sha256_files, `cat`, one core's hashlib rate,
and `sha256sum FILES`. By default one `cat` warms the cache first (on a machine with more free
memory than the data, everything then runs from memory); --cold drops the page cache before each
timed run instead (root only). The data is removed at the end, on Ctrl-C and on errors too.
Not collected by pytest: timings belong here, not in unit tests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from rich.console import Console

from avatardoctor.ckpt.hashing import (
    CHUNK_BYTES,
    HashingInterrupted,
    hash_with_progress,
    sha256_files,
    usable_cpus,
)
from avatardoctor.units import GIB, MIB, gib

TARGET_RATIO = 0.8
BLOCK_BYTES = 64 * MIB
PAGE_BYTES = 4096


def shard_sizes(total: int, count: int) -> list[int]:
    """Unequal sizes, largest first, like a checkpoint's shards: weights count, count-1, ..., 1."""
    weights = range(count, 0, -1)
    sizes = [total * w // sum(weights) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def write_random_shards(folder: Path, sizes: list[int]) -> list[Path]:
    """Real, non-sparse random data, fsynced so writeback does not run during the measurements.

    os.urandom runs at ~420 MiB/s here, slower than the disk, so one random 64 MiB block is written
    over and over with a counter stamped into the first 8 bytes of every 4 KiB page: every page of
    the data set differs from every other, so neither block-level dedup nor compression (btrfs, zfs)
    can shrink what is read back, and the bytes are still random to the hash.
    """
    block = bytearray(os.urandom(BLOCK_BYTES))
    view = memoryview(block)
    stamp = 0
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"shard-{i + 1:05}-of-{len(sizes):05}.safetensors"
        with open(path, "wb") as f:
            left = size
            while left:
                for page in range(0, BLOCK_BYTES, PAGE_BYTES):
                    struct.pack_into("<Q", block, page, stamp)
                    stamp += 1
                left -= f.write(view[: min(left, BLOCK_BYTES)])
            f.flush()
            os.fsync(f.fileno())
        paths.append(path)
    return paths


def one_core_sha256_rate() -> float:
    """Bytes per second hashlib's sha256 reaches on one core, from memory, in our chunk size."""
    view = memoryview(os.urandom(256 * MIB))
    digest = hashlib.sha256(view[:CHUNK_BYTES])  # warm up
    start = time.perf_counter()
    for _ in range(4):
        for offset in range(0, len(view), CHUNK_BYTES):
            digest.update(view[offset : offset + CHUNK_BYTES])
    return 4 * len(view) / (time.perf_counter() - start)


def whole_file_efficiency(sizes: list[int], workers: int) -> float:
    """How close one-file-per-thread can come to perfect balance on this file set: total / workers
    over the makespan of our largest-first schedule, at equal speed per thread. A file is hashed
    start to end on one thread (sha256 is sequential), so the last files set the tail."""
    loads = [0] * workers
    for size in sorted(sizes, reverse=True):
        loads[loads.index(min(loads))] += size
    return sum(sizes) / workers / max(loads)


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def median_seconds(run: Callable[[], object], runs: int, cold: bool) -> float:
    times = []
    for _ in range(runs):
        if cold:
            drop_page_cache()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def output_of(cmd: list[str]) -> str:
    return subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout


def cat_to_null(files: list[str]) -> None:
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)


def measure(paths: list[Path], runs: int, cold: bool) -> None:
    files = [str(p) for p in paths]
    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    cores = usable_cpus()
    if not cold:
        cat_to_null(files)  # the one warming read
    ours_s = median_seconds(lambda: sha256_files(paths), runs, cold)
    with open(os.devnull, "w") as devnull:  # a terminal that draws the bar 10 times a second, unseen
        console = Console(file=devnull, force_terminal=True, width=100)
        with_bar_s = median_seconds(lambda: hash_with_progress(paths, console), runs, cold)
    cat_s = median_seconds(lambda: cat_to_null(files), runs, cold)
    core_rate = one_core_sha256_rate()
    sha256sum_s = median_seconds(lambda: output_of(["sha256sum", *files]), runs, cold)

    # Same answers as the reference tool, or the speed means nothing.
    sums = {Path(line[66:]): line[:64] for line in output_of(["sha256sum", *files]).splitlines()}
    agree = sha256_files(paths).digests == sums

    ours, with_bar = total / ours_s, total / with_bar_s
    cat, cpu, sha256sum = total / cat_s, cores * core_rate, total / sha256sum_s
    limit = min(cat, cpu)
    available = psutil.virtual_memory().available
    if cold:
        cache = "no: page cache dropped before each timed run"
    elif total < available:
        cache = f"likely: {gib(total)} of data, {gib(available)} memory available, read once before timing"
    else:
        cache = f"partly at best: {gib(total)} of data, only {gib(available)} memory available"

    print(f"data: {gib(total)} in {len(paths)} files; {cores} usable CPUs; median of {runs} runs each")
    print(f"files cached: {cache}")
    print(f"  ours (sha256_files)      {ours_s:7.2f} s   {gib(ours)}/s")
    print(f"  ours with progress bar   {with_bar_s:7.2f} s   {gib(with_bar)}/s")
    print(f"  cat FILES > /dev/null    {cat_s:7.2f} s   {gib(cat)}/s")
    print(f"  hashlib sha256, 1 core             {gib(core_rate)}/s   x {cores} cores = {gib(cpu)}/s")
    print(f"  sha256sum FILES          {sha256sum_s:7.2f} s   {gib(sha256sum)}/s")
    print(f"machine limit = min(cat, cores x hashlib) = {gib(limit)}/s ({'read' if cat < cpu else 'CPU'}-bound)")
    print(f"ours / limit     = {ours / limit:.2f}   (target >= {TARGET_RATIO})")
    print(f"  of which whole files per thread allow at most {whole_file_efficiency(sizes, cores):.2f} on these sizes")
    print(f"ours / sha256sum = {ours / sha256sum:.1f}x faster")
    print(f"digests agree with sha256sum: {'yes' if agree else 'NO'}")
    print("PASS" if agree and ours / limit >= TARGET_RATIO else "BELOW TARGET")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="data size in GiB (default 4)")
    parser.add_argument("--files", type=int, default=6, help="number of shards (default 6)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where to make the data folder")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement; the median is shown")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each timed run (root)")
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
        paths = write_random_shards(folder, shard_sizes(total, args.files))
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
