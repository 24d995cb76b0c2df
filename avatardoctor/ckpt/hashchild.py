"""The process that reads the files for `ckpt verify --deep` (`python -m avatardoctor.ckpt.hashchild`).

It hashes each file from a memory map: hashlib and zlib-ng's crc32 take a memoryview of the map and
release the GIL, so a byte goes from the page cache to the hash without read()'s copy into a buffer
(a third of the hash's own CPU cost, measured: docs/performance.md). A file truncated (or a disk
failing) while it is mapped kills its reader with SIGBUS; that is why this runs in a child process,
whose death the parent (hashing.sha256_files) turns into a one-line error naming the file. Files that
cannot be mapped (empty or special files, a filesystem that refuses mmap) and files the parent asks
to read plainly are read with readinto into one reused buffer, as before. One thread per worker, the
largest file first.

Protocol, version 1: one JSON object per line.
  stdin:  {"version": 1, "workers": N, "files": [{"path": str, "size": int, "crc": bool, "map": bool}, ...]}
          then nothing: the end of stdin (the parent closed it, or died) means stop at the next chunk.
  stdout: {"done": {"<file index>": bytes hashed so far, ...}}, at most every PROGRESS_SECONDS;
          {"file": i, "sha256": hex, "check": str | null} or {"file": i, "error": str}, as each file ends;
          {"io": {"read": bytes read with read() since start-up, "mapped": bytes hashed from maps}}, last.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import resource
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from avatardoctor.ckpt.pth import CrcCheck
from avatardoctor.units import MIB

PROTOCOL_VERSION = 1
# Measured on the project machine with the page cache warm: 512 KiB to 8 MiB chunks hash within 2% of
# each other. It also bounds how long a worker takes to notice a stop (one chunk: ~0.5 ms).
CHUNK_BYTES = 1 * MIB
# How far ahead of the hash the kernel is asked to read a mapped file (MADV_WILLNEED), renewed every
# half window, so that a cold file's reads overlap its hashing. Measured cold on one 768 MiB file: the
# 64 MiB window kept the kernel filling the cache in large folios (cheap to fill and to map) and cost
# 0.66-0.72 CPU s/GiB in 4 of 5 rounds; an 8 MiB window gave small folios and 1.08-1.11, no advice at all
# 1.07-1.55, MADV_SEQUENTIAL 0.67-1.03 (so it is not used), readinto 1.68-1.84.
READ_AHEAD_BYTES = 64 * MIB
PROGRESS_SECONDS = 0.1  # the bar redraws at 10 Hz; more lines would only cost the parent CPU


class StreamCheck(Protocol):
    """Something learnt from a file's bytes while they are hashed, so that they are read once."""

    def update(self, chunk: memoryview) -> None:
        """The file's next bytes (valid only during the call)."""

    def finish(self) -> str | None:
        """After the last byte: what is wrong with the file, None when nothing is."""


CheckStarter = Callable[[BinaryIO], StreamCheck | None]  # the StreamCheck for an open file, or None


@dataclass(frozen=True)
class FileJob:
    path: Path
    size: int  # as the parent saw it: the largest file is read first
    crc: bool  # a .pth archive: check its entries' CRC-32s from the same bytes
    map: bool = True  # False: read it with read() (the parent's choice after an unexplained SIGBUS)


@dataclass(frozen=True)
class FileRead:
    digest: str | None  # sha256 hex; None when stopped before the end
    finding: str | None  # the StreamCheck's verdict
    mapped: int  # bytes hashed from the memory map (the rest came through read())


def read_file(
    path: Path, mapped: bool, stop: threading.Event, on_bytes: Callable[[int], None], start_check: CheckStarter
) -> FileRead:
    """Hash one file (and feed its StreamCheck) from a map of it when `mapped` and possible, then with
    readinto from where the map ended: the whole file, a file that grew since it was mapped, or one
    that cannot be mapped. Raises OSError when it cannot be opened or read."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:  # unbuffered: readinto goes straight into our buffer
        check = start_check(f)
        from_map = 0
        for chunk in _mapped_chunks(f) if mapped else ():
            if stop.is_set():
                return FileRead(None, None, from_map)
            digest.update(chunk)
            if check is not None:
                check.update(chunk)
            from_map += len(chunk)
            on_bytes(len(chunk))
        f.seek(from_map)
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        while not stop.is_set():
            n = f.readinto(buffer)
            if not n:
                return FileRead(digest.hexdigest(), check.finish() if check is not None else None, from_map)
            digest.update(view[:n])
            if check is not None:
                check.update(view[:n])
            on_bytes(n)
    return FileRead(None, None, from_map)


def _mapped_chunks(f: BinaryIO) -> Iterator[memoryview]:
    """The open file's bytes as CHUNK_BYTES views of a read-only map; nothing when it cannot be mapped."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:  # /proc files say 0 bytes; an empty map is refused
        return
    try:
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # a filesystem without mmap: read() it
        return
    try:
        with memoryview(mapping) as whole:
            for offset in range(0, len(mapping), CHUNK_BYTES):
                if offset % (READ_AHEAD_BYTES // 2) == 0:
                    mapping.madvise(mmap.MADV_WILLNEED, offset, min(READ_AHEAD_BYTES, len(mapping) - offset))
                with whole[offset : offset + CHUNK_BYTES] as chunk:  # released at once: the map can close
                    yield chunk
    finally:
        mapping.close()


def hash_files(
    jobs: list[FileJob],
    workers: int,
    stop: threading.Event,
    on_bytes: Callable[[int, int], None],
    on_result: Callable[[int, FileRead | OSError], None],
) -> None:
    """Read every job on `workers` threads, largest first (so they finish together rather than one
    big file hashing alone at the end). on_bytes(index, n) after each chunk; on_result(index, ...)
    once per file, when it ends, with what was read or why it could not be."""

    def work(index: int) -> None:
        job = jobs[index]
        try:
            result: FileRead | OSError = read_file(
                job.path,
                job.map,
                stop,
                lambda n: on_bytes(index, n),
                lambda f: CrcCheck(job.path, f) if job.crc else None,
            )
        except OSError as err:
            result = err
        on_result(index, result)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256") as pool:
        # The pool starts tasks in submission order, so submitting largest first is the whole schedule.
        for index in sorted(range(len(jobs)), key=lambda i: jobs[i].size, reverse=True):
            pool.submit(work, index)


class _Reporter:
    """Writes the protocol's lines to the parent, whole lines under one lock."""

    def __init__(self, fd: int) -> None:
        self.fd, self.lock = fd, threading.Lock()
        self.done: dict[int, int] = {}
        self.changed: set[int] = set()
        self.last = 0.0
        self.mapped = 0

    def send(self, message: object) -> None:
        os.write(self.fd, json.dumps(message).encode() + b"\n")  # a pipe takes the whole line or blocks

    def on_bytes(self, index: int, n: int) -> None:
        with self.lock:
            self.done[index] = self.done.get(index, 0) + n
            self.changed.add(index)
            if time.monotonic() - self.last >= PROGRESS_SECONDS:
                self._progress()

    def _progress(self) -> None:
        if self.changed:
            self.send({"done": {str(i): self.done[i] for i in self.changed}})
        self.changed.clear()
        self.last = time.monotonic()

    def on_result(self, index: int, result: FileRead | OSError) -> None:
        with self.lock:
            self._progress()
            if isinstance(result, OSError):
                self.send({"file": index, "error": result.strerror or str(result)})
            else:
                self.mapped += result.mapped
                if result.digest is not None:
                    self.send({"file": index, "sha256": result.digest, "check": result.finding})


def bytes_read() -> int:
    """What this process has read with read() and its kind, by the kernel's count (rchar)."""
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])


def main() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a SIGBUS must not leave a core file in the user's folder
    protocol_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the protocol
    request = json.loads(sys.stdin.buffer.readline())
    read_at_start = bytes_read()
    if request.get("version") != PROTOCOL_VERSION:
        sys.exit(f"hashchild: protocol version {request.get('version')!r}, expected {PROTOCOL_VERSION}")
    jobs = [FileJob(Path(f["path"]), f["size"], f["crc"], f["map"]) for f in request["files"]]
    stop = threading.Event()

    def stop_at_end_of_stdin() -> None:
        while os.read(0, 4096):  # the raw fd: a thread blocked in sys.stdin would hold up the exit for its lock
            pass
        stop.set()

    threading.Thread(target=stop_at_end_of_stdin, daemon=True).start()
    reporter = _Reporter(protocol_fd)
    hash_files(jobs, request["workers"], stop, reporter.on_bytes, reporter.on_result)
    reporter.send({"io": {"read": bytes_read() - read_at_start, "mapped": reporter.mapped}})


if __name__ == "__main__":
    main()
