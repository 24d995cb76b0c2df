"""Content hashing for `ckpt verify --deep`: the sha256 of every checkpoint file, in parallel.

The digests are the ones users already have to compare with: for a file the Hugging Face Hub stores
with Git LFS (every shard), the LFS object id IS the sha256 of the file's content. It is the
"SHA256" under "Git LFS Details" on the file's page, the `oid sha256:...` line of the pointer file,
`lfs.sha256` in `HfApi.model_info(..., files_metadata=True)`, and the blob's file name in a
Hugging Face cache (`blobs/<sha256>`). `sha256sum FILE` prints the same hex. Small files the Hub
keeps in plain git (config.json) only have a git blob id, which is a sha1 of a header plus the
content, not their sha256.

How it is fast: a child process (hashchild) maps each file and hashes it without copying it, one
thread per usable CPU, largest file first; both hashlib and zlib-ng's crc32 release the GIL, so N cores
hash about N times one core. Whatever else must be learnt from a file's bytes (a .pth archive's
CRC-32s) is computed from the same bytes: each byte is read once. A file truncated while it is mapped
kills only the child (SIGBUS); this side then names the file that shrank, and hashes the rest in a new
child. Figures: docs/performance.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

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

from avatardoctor.ckpt.hashchild import PROTOCOL_VERSION, FileJob
from avatardoctor.units import mib

MAX_LINE_BYTES = 64 * 1024  # the child's longest line is a progress line for every file at once
STOP_GRACE_SECONDS = 10  # a stopped child ends within a chunk (ms); past this it is killed
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HashResult:
    """Every path given ends in exactly one of the two: its digest, or why it could not be read."""

    digests: dict[Path, str]  # path -> lowercase sha256 hex
    errors: dict[Path, str]  # path -> one-line reason ("No such file or directory", "not a regular file")
    checked: dict[Path, str | None] = field(default_factory=dict)  # crc path -> its CRC check's finding
    read_bytes: int = 0  # what the hashing processes read with read(), by the kernel's count (rchar)
    mapped_bytes: int = 0  # what they hashed straight from memory maps (no read() call: not in rchar)


class HashingInterrupted(Exception):
    """Hashing stopped before every file was read (the stop event, or Ctrl-C). str() is the user's line."""

    def __init__(self, done: dict[Path, str], total_files: int) -> None:
        super().__init__(f"interrupted: hashed {len(done)} of {total_files} files")
        self.done = done
        self.total_files = total_files


class _ChildFailed(Exception):
    """The hashing process broke the protocol; str() says how, for the files it left unhashed."""


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
    crc: Collection[Path] = (),
) -> HashResult:
    """The sha256 of each file, hashed in parallel by a child process (workers defaults to usable_cpus()).

    on_total(n) is called once, before hashing starts, with the total size of the readable files.
    on_bytes(n) is called in this thread as the child reports progress (about 10 times a second);
    the calls add up to at most that total (to it when every file is hashed). A file that cannot be
    read (vanished, a directory, permission denied, truncated while it was read) lands in
    HashResult.errors and the others go on. Setting `stop`, or Ctrl-C in the calling thread, stops
    the child at its next chunk; once it is gone, HashingInterrupted is raised carrying the digests
    finished so far. The files in `crc` are zip archives whose entries' CRC-32s are checked from the
    same bytes as the hash (pth.CrcCheck); the findings land in HashResult.checked.
    """
    paths = list(dict.fromkeys(paths))
    stop = stop if stop is not None else threading.Event()
    try:
        sizes, errors = regular_file_sizes(paths)
    except KeyboardInterrupt:
        raise HashingInterrupted({}, len(paths)) from None
    if on_total is not None:
        on_total(sum(sizes.values()))
    crc = set(crc)
    jobs = [FileJob(path, size, path in crc) for path, size in sizes.items()]
    reported = [0] * len(jobs)  # bytes of each job passed to on_bytes: a re-read after a SIGBUS adds none

    def advance(index: int, done: int) -> None:
        done = min(done, jobs[index].size)
        if done > reported[index] and not stop.is_set():
            if on_bytes is not None:
                on_bytes(done - reported[index])
            reported[index] = done

    digests: dict[Path, str] = {}
    checked: dict[Path, str | None] = {}
    read_bytes = mapped_bytes = 0
    waiting = list(range(len(jobs)))
    while waiting and not stop.is_set():
        run = _ChildRun([jobs[i] for i in waiting], workers or usable_cpus(), stop, lambda k, n: advance(waiting[k], n))
        for k, outcome in run.results.items():
            path = jobs[waiting[k]].path
            if isinstance(outcome, str):
                errors[path] = outcome
                continue
            digests[path], finding = outcome
            advance(waiting[k], jobs[waiting[k]].size)
            if jobs[waiting[k]].crc:
                checked[path] = finding
        read_bytes += run.read_bytes
        mapped_bytes += run.mapped_bytes
        waiting = [i for k, i in enumerate(waiting) if k not in run.results]
        if not waiting or stop.is_set():
            break
        if run.returncode != -signal.SIGBUS:
            why = run.failure or f"ended with code {run.returncode} before it had hashed them"
            errors |= {jobs[i].path: f"not hashed: the hashing process {why}" for i in waiting}
            break
        # A mapped file was truncated (or its disk failed): the files that shrank are named, the rest
        # hashed again. If none shrank, they are read plainly, which reports a disk error as EIO.
        shrunk = {i: now for i in waiting if (now := _size_now(jobs[i].path)) is not None and now < jobs[i].size}
        for i, now in shrunk.items():
            errors[jobs[i].path] = f"changed while it was verified: it shrank from {jobs[i].size:,} to {now:,} bytes"
        waiting = [i for i in waiting if i not in shrunk]
        if not shrunk:
            for i in waiting:
                jobs[i] = replace(jobs[i], map=False)
    if stop.is_set() and len(digests) + len(errors) < len(paths):
        raise HashingInterrupted(digests, len(paths))
    return HashResult(digests, errors, checked, read_bytes, mapped_bytes)


CHILD_COMMAND = (sys.executable, "-m", "avatardoctor.ckpt.hashchild")


class _ChildRun:
    """One run of the hashing process (hashchild) over `jobs`, to its end, a stop, or its death.

    results: job index -> (sha256, CRC finding) or an error line; returncode: the child's (-SIGBUS
    when a mapped file was truncated under it); failure: how it broke the protocol, if it did."""

    def __init__(
        self, jobs: list[FileJob], workers: int, stop: threading.Event, advance: Callable[[int, int], None]
    ) -> None:
        self.jobs, self.advance = jobs, advance
        self.results: dict[int, tuple[str, str | None] | str] = {}
        self.read_bytes = self.mapped_bytes = 0
        self.failure: str | None = None
        request = {
            "version": PROTOCOL_VERSION,
            "workers": workers,
            "files": [{"path": str(j.path), "size": j.size, "crc": j.crc, "map": j.map} for j in jobs],
        }
        with tempfile.TemporaryFile() as stderr:
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop the child in order.
            child = subprocess.Popen(
                list(CHILD_COMMAND),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
            assert child.stdin is not None and child.stdout is not None
            try:
                with _stop_on_ctrl_c(stop):
                    child.stdin.write(json.dumps(request).encode() + b"\n")
                    child.stdin.flush()
                    self._follow(child.stdout, stop)
            except (_ChildFailed, BrokenPipeError) as err:
                self.failure = str(err) or "ended before it read the list of files"
                child.kill()
            finally:
                self.returncode = _stop(child)
            if self.returncode not in (0, -signal.SIGBUS) and self.failure is None:
                stderr.seek(0)
                lines = stderr.read()[-4096:].decode(errors="replace").strip().splitlines()
                if lines:
                    self.failure = f"failed ({lines[-1][:200]})"

    def _follow(self, out: IO[bytes], stop: threading.Event) -> None:
        """Read the child's lines until it ends or `stop` is set."""
        while not stop.is_set():
            line = out.readline(MAX_LINE_BYTES)
            if not line:
                return
            if not line.endswith(b"\n"):
                raise _ChildFailed(f"sent a line over {MAX_LINE_BYTES:,} bytes")
            try:
                message = json.loads(line)
            except ValueError:
                raise _ChildFailed(f"sent a line that is not JSON: {line[:80]!r}") from None
            self._take(message)

    def _take(self, message: object) -> None:
        """Validate one line of the protocol and act on it."""
        if not isinstance(message, dict):
            raise _ChildFailed(f"sent {str(message)[:80]}, not an object")
        if isinstance(message.get("done"), dict):
            for key, done in message["done"].items():
                if not (isinstance(done, int) and done >= 0):
                    raise _ChildFailed(f"sent a progress count that is not a byte count: {done!r}")
                self.advance(self._index(key), done)
        elif "file" in message:
            index = self._index(message["file"])
            digest, finding, error = message.get("sha256"), message.get("check"), message.get("error")
            if isinstance(error, str):
                self.results[index] = " ".join(error.split())[:200] or "unreadable"
            elif isinstance(digest, str) and SHA256_HEX.fullmatch(digest) and isinstance(finding, (str, type(None))):
                self.results[index] = (digest, finding)
            else:
                raise _ChildFailed(f"sent a malformed result: {str(message)[:120]}")
        elif isinstance(message.get("io"), dict):
            counts = message["io"]
            if not all(isinstance(counts.get(k), int) for k in ("read", "mapped")):
                raise _ChildFailed(f"sent malformed read counts: {str(counts)[:120]}")
            self.read_bytes, self.mapped_bytes = counts["read"], counts["mapped"]
        else:
            raise _ChildFailed(f"sent an unknown message: {str(message)[:120]}")

    def _index(self, key: object) -> int:
        """A job index from the child ("3" in progress lines, 3 in results), checked."""
        index = int(key) if isinstance(key, str) and key.isdigit() and len(key) < 10 else key
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.jobs):
            raise _ChildFailed(f"named file {key!r}, which it was not given")
        return index


def _stop(child: subprocess.Popen[bytes]) -> int:
    """Close the child's stdin (its signal to stop at the next chunk) and wait for it to end, reading
    what it still writes so that it cannot block; kill it if it does not end within
    STOP_GRACE_SECONDS or on a second Ctrl-C. Its exit status."""
    try:
        child.communicate(timeout=STOP_GRACE_SECONDS)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        child.kill()
        child.wait()
    return child.returncode


def _size_now(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


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


class _MiBPerSecond(ProgressColumn):
    """Speed in MiB/s (rich's TransferSpeedColumn speaks decimal MB/s; we label binary units)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("? MiB/s" if speed is None else f"{mib(speed)}/s", style="progress.data.speed")


def hash_with_progress(paths: Iterable[Path], console: Console, crc: Collection[Path] = ()) -> HashResult:
    """sha256_files behind one progress bar over the total bytes: done/total, MiB/s, time left.

    Pass a stderr console (Console(stderr=True)) so the bar never mixes into data on stdout. Rich
    draws nothing live when the console is not a terminal (one final line instead) and drops colour
    under NO_COLOR. Ctrl-C raises HashingInterrupted once the hashing process has ended; the CLI prints
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
            on_bytes=lambda n: progress.advance(task, n),
            crc=crc,
        )
