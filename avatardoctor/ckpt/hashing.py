"""Content hashing for `ckpt verify --deep`: the sha256 of every checkpoint file, in parallel.

The digests are the ones users already have to compare with: for a file the Hugging Face Hub stores
with Git LFS (every shard), the LFS object id IS the sha256 of the file's content. It is the
"SHA256" under "Git LFS Details" on the file's page, the `oid sha256:...` line of the pointer file,
`lfs.sha256` in `HfApi.model_info(..., files_metadata=True)`, and the blob's file name in a
Hugging Face cache (`blobs/<sha256>`). `sha256sum FILE` prints the same hex. Small files the Hub
keeps in plain git (config.json) only have a git blob id, which is a sha1 of a header plus the
content, not their sha256.

How it is fast: one file per thread on a pool as wide as the usable CPUs; each thread reads its file
sequentially with readinto into one reused buffer and feeds hashlib memoryviews. Both the read and
hashlib's update on large buffers release the GIL, so N cores hash about N times one core. Largest
files go first (longest-processing-time order) so the threads finish together instead of one shard
hashing alone at the end. Whatever else must be learnt from a file's bytes (a .pth archive's CRC-32s)
is a StreamCheck fed the same buffer: each byte is read once. Figures: docs/performance.md.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from avatardoctor.units import MIB, mib

# Measured on the project machine with the page cache warm: 512 KiB to 8 MiB reads hash within 2%
# of each other, 1 MiB marginally fastest. It also bounds how long a worker takes to notice the stop
# event (one chunk: ~0.5 ms at 1.8 GiB/s).
CHUNK_BYTES = 1 * MIB


@dataclass(frozen=True)
class HashResult:
    """Every path given ends in exactly one of the two: its digest, or why it could not be read."""

    digests: dict[Path, str]  # path -> lowercase sha256 hex
    errors: dict[Path, str]  # path -> one-line reason ("No such file or directory", "not a regular file")
    checked: dict[Path, str | None] = field(default_factory=dict)  # hashed path -> its StreamCheck's finding


class StreamCheck(Protocol):
    """Something learnt from a file's bytes while they are hashed, so that they are read once."""

    def update(self, chunk: memoryview) -> None:
        """The file's next bytes (valid only during the call)."""

    def finish(self) -> str | None:
        """After the last byte: what is wrong with the file, None when nothing is."""


CheckStarter = Callable[[Path, BinaryIO], StreamCheck | None]  # the StreamCheck for an open file, or None


class HashingInterrupted(Exception):
    """Hashing stopped before every file was read (the stop event, or Ctrl-C). str() is the user's line."""

    def __init__(self, done: dict[Path, str], total_files: int) -> None:
        super().__init__(f"interrupted: hashed {len(done)} of {total_files} files")
        self.done = done
        self.total_files = total_files


def usable_cpus() -> int:
    """CPUs this process may run on (taskset, cgroup cpusets), not the machine's count."""
    return len(os.sched_getaffinity(0))


def sha256_files(
    paths: Iterable[Path],
    *,
    workers: int | None = None,
    on_total: Callable[[int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    check: CheckStarter | None = None,
) -> HashResult:
    """The sha256 of each file, hashed in parallel (workers defaults to usable_cpus()).

    on_total(n) is called once, before hashing starts, with the total size of the readable files.
    on_bytes(n) is called from the worker threads after each chunk with the bytes just hashed; the
    calls add up to that total. A file that cannot be read (vanished, a directory, permission
    denied) lands in HashResult.errors and the others go on. Setting `stop`, or Ctrl-C in the
    calling thread, makes the workers give up at their next chunk; once they have,
    HashingInterrupted is raised carrying the digests finished so far. check(path, f), called with
    each file open before it is read (it may read f, and leaves it at its start), gives the StreamCheck
    fed the same bytes as the hash; its findings land in HashResult.checked.
    """
    paths = list(dict.fromkeys(paths))
    stop = stop if stop is not None else threading.Event()
    try:
        sizes, errors = regular_file_sizes(paths)
    except KeyboardInterrupt:
        raise HashingInterrupted({}, len(paths)) from None
    if on_total is not None:
        on_total(sum(sizes.values()))
    futures: dict[Path, Future[str | None]] = {}
    checked: dict[Path, str | None] = {}  # filled by the workers (one key each: dict assignment is atomic)
    # The stopper sits inside the pool so Ctrl-C sets `stop` before the pool's exit waits for the
    # workers; otherwise that wait would last until every file had been hashed.
    pool = ThreadPoolExecutor(max_workers=workers or usable_cpus(), thread_name_prefix="sha256")
    with pool, _stop_on_ctrl_c(stop):
        # The pool starts tasks in submission order, so submitting largest first is the whole schedule.
        for path in sorted(sizes, key=sizes.__getitem__, reverse=True):
            futures[path] = pool.submit(_read_file, path, on_bytes, stop, check, checked)
        wait(futures.values())
    digests: dict[Path, str] = {}
    for path, future in futures.items():
        try:
            digest = future.result()
        except OSError as err:
            errors[path] = err.strerror or str(err)
            continue
        if digest is not None:
            digests[path] = digest
    if len(digests) + len(errors) < len(paths):
        raise HashingInterrupted(digests, len(paths))
    return HashResult(digests, errors, checked)


@contextmanager
def _stop_on_ctrl_c(stop: threading.Event) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        stop.set()


def regular_file_sizes(paths: Iterable[Path]) -> tuple[dict[Path, int], dict[Path, str]]:
    """(size of each regular file, reason for each path that is not one). Follows symlinks, as the
    snapshots of a Hugging Face cache are symlinks to blobs. Anything else is refused before it is
    opened: opening a FIFO would block forever."""
    sizes: dict[Path, int] = {}
    errors: dict[Path, str] = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError as err:
            errors[path] = err.strerror or str(err)
            continue
        if stat.S_ISREG(st.st_mode):
            sizes[path] = st.st_size
        else:
            errors[path] = "not a regular file"
    return sizes, errors


def _read_file(
    path: Path,
    on_bytes: Callable[[int], None] | None,
    stop: threading.Event,
    check: CheckStarter | None,
    checked: dict[Path, str | None],
) -> str | None:
    """The file's sha256 hex (its check's finding into `checked`), or None if `stop` was set before
    it was finished."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:  # unbuffered: readinto goes straight into our buffer
        watcher = check(path, f) if check is not None else None
        while not stop.is_set():
            n = f.readinto(buffer)
            if not n:
                if watcher is not None:
                    checked[path] = watcher.finish()
                return digest.hexdigest()
            digest.update(view[:n])
            if watcher is not None:
                watcher.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return None


class _MiBPerSecond(ProgressColumn):
    """Speed in MiB/s (rich's TransferSpeedColumn speaks decimal MB/s; we label binary units)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? MiB/s" if speed is None else f"{mib(speed)}/s", style="progress.data.speed")


def hash_with_progress(paths: Iterable[Path], console: Console, check: CheckStarter | None = None) -> HashResult:
    """sha256_files behind one progress bar over the total bytes: done/total, MiB/s, time left.

    Pass a stderr console (Console(stderr=True)) so the bar never mixes into data on stdout. Rich
    draws nothing live when the console is not a terminal (one final line instead) and drops colour
    under NO_COLOR. Ctrl-C raises HashingInterrupted once the workers have stopped; the CLI prints
    it and exits 130.
    """
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        _MiBPerSecond(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("hashing", total=None)
        return sha256_files(
            paths,
            on_total=lambda n: progress.update(task, total=n),
            on_bytes=lambda n: progress.advance(task, n),  # rich's Progress takes a lock: thread-safe
            check=check,
        )
