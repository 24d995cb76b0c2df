"""A torchrun job that leaves nothing behind: the one supervisor of `run` and of the live NCCL test.

The job starts in a session of its own, every process of it carries a cookie in its environment,
and a reaper process holds a pipe from us: if we die without stopping the job (even by SIGKILL),
the reaper kills torchrun's group, every PID we reported and every process with the cookie. The
normal stop is SIGINT, a grace period, SIGTERM, then SIGKILL, to the group and to every job
process seen: torchrun's descendants (ranks may sit in sessions of their own), every process in a
session the job started, and every process carrying the cookie (a daemon that double-forked out of
the tree). This module does not import torch; the ranks do.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

from avatardoctor.errors import InputError

JOB_COOKIE = "AVATARDOCTOR_JOB"  # in every job process's environment, so that one that left the tree is still the job's
REAPER_DONE = "done"  # the supervisor's last line once it has stopped the job itself: nothing is left to kill
# Kills the job when its supervisor dies (the reaper's stdin closes): torchrun's group, every PID it was
# told about, and every process carrying the job's cookie, which covers a rank started after the last report.
REAPER = (
    "import os, signal, sys\n"
    "pgid, mark, pids = int(sys.argv[1]), sys.argv[2].encode(), set()\n"
    "for line in sys.stdin:\n"
    f"    if line.strip() == {REAPER_DONE!r}:\n        sys.exit(0)\n"
    "    pids.update(int(p) for p in line.split())\n"
    "for entry in os.listdir('/proc'):\n"
    "    try:\n"
    "        with open(f'/proc/{entry}/environ', 'rb') as f:\n"
    "            if mark in f.read().split(b'\\0'):\n                pids.add(int(entry))\n"
    "    except (OSError, ValueError):\n        pass\n"
    "for kill, target in [(os.killpg, pgid)] + [(os.kill, p) for p in pids - {os.getpid()}]:\n"
    "    try:\n        kill(target, signal.SIGKILL)\n    except (ProcessLookupError, PermissionError):\n        pass\n"
)


def torchrun_argv(
    nproc: int, master_port: int, *args: str, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None
) -> list[str]:
    """`python -m torch.distributed.run` with this interpreter, as a list (never a shell string: a prompt
    full of $(...), quotes and ; is one item)."""
    multi_node = ["--nnodes", str(nnodes), "--node_rank", str(node_rank)] if nnodes > 1 or node_rank else []
    addr = ["--master_addr", master_addr] if master_addr else []
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        *multi_node,
        *addr,
        "--master_port",
        str(master_port),
        *args,
    ]


def _parent_pid(pid: int) -> int | None:
    """The parent in /proc/PID/stat (its 4th field, after the name in parentheses, which may hold spaces and ')')."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        return int(stat[stat.rindex(b")") + 2 :].split(b" ", 2)[1])
    except (OSError, ValueError):  # ended, or not readable
        return None


class ProcessTree:
    """Some root processes and all their descendants, found by listing /proc and reading the parent of each
    PID only when it first appears. psutil's children() reads every process's stat each time (~1.3 ms for
    100 processes here, more on a busy server); this reads the listing and the new PIDs (~0.1 ms). A process
    keeps its place in the tree from its first listing until it ends, as its parent at birth is what
    places it (a rank whose torchrun died is still the job's). A PID ended and reused between two listings
    would keep its predecessor's place; with PIDs handed out in turn up to pid_max that takes a full cycle."""

    def __init__(self, roots: Iterable[int]):
        self.roots = list(dict.fromkeys(roots))
        self._parents: dict[int, int | None] = {}  # every PID listed, and its parent when it first appeared
        self._members: set[int] = set()  # the roots' descendants among them

    def descendants(self) -> list[int]:
        """The roots' living descendants (not the roots), by PID."""
        try:
            listed = {int(entry) for entry in os.listdir("/proc") if entry.isdigit()}
        except OSError:  # no /proc: psutil's way, which has its own
            return [c.pid for root in self.roots for c in _children(root)]
        for pid in self._parents.keys() - listed:  # ended: its PID may be handed out again
            del self._parents[pid]
        self._members &= listed
        new = listed - self._parents.keys()
        for pid in new:
            self._parents[pid] = _parent_pid(pid)
        inside = self._members | set(self.roots)
        found = True
        while found:  # a new child of a new child: until no more join
            joined = {pid for pid in new if self._parents[pid] in inside and pid not in inside}
            found = bool(joined)
            inside |= joined
            self._members |= joined
        self._members -= set(self.roots)
        return sorted(self._members)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _exit_fd(pid: int) -> int | None:
    """A pidfd of our child, readable once it has exited; None where the kernel has none (before Linux 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Job:
    """One supervised job. `track()` notes its processes (call it as often as new ranks may appear);
    `stop()` ends it, once, from any thread; `close()` lets the reaper go once the job is over."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdout: int | IO | None = subprocess.PIPE,
        grace_s: float = 10.0,
    ):
        self.cookie = uuid.uuid4().hex
        self.grace_s = grace_s
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**(os.environ if env is None else env), JOB_COOKIE: self.cookie},
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, str(self.proc.pid), f"{JOB_COOKIE}={self.cookie}"],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        self.descendants: set[int] = set()
        self._tree = ProcessTree([self.proc.pid])
        self._not_job: set[int] = set()  # PIDs whose environment was read and lacks the cookie: read each once
        self._sessions: set[int] = set()
        self._looked_at: set[int] = set()  # job PIDs whose session was read
        self._lock, self._stopped = threading.Lock(), False
        self._stop_done = threading.Event()  # stop() ran to its end: every job process seen was killed
        self._exit_fd = _exit_fd(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pids(self) -> set[int]:
        return self.descendants | {self.proc.pid}

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc.poll() is None

    def track(self, everywhere: bool = True) -> set[int]:
        """Note the job's processes and tell the reaper; returns the ones not seen before. The tree is
        cheap to list; `everywhere` also looks at every other process on the host (sessions, cookies)."""
        found = set(self._tree.descendants())
        if everywhere:
            found |= self._strays(found)
        new = found - self.descendants
        self.descendants |= found
        if new:
            try:
                assert self.reaper.stdin is not None
                self.reaper.stdin.write((" ".join(map(str, sorted(new))) + "\n").encode())
                self.reaper.stdin.flush()
            except (OSError, ValueError):  # the reaper is gone: stop() still reaches them
                pass
        return new

    def _strays(self, tree: set[int]) -> set[int]:
        """Processes out of the tree that are still the job's: in a session it started, or with its cookie."""
        known = tree | self.descendants | {self.proc.pid}
        # Sessions a job process leads, remembered: a daemon stays in its session after the leader (a rank) ends.
        self._sessions |= {sid for sid in map(_session, known - self._looked_at) if sid in known}
        self._looked_at |= known
        sessions = self._sessions
        current = set(psutil.pids()) - {os.getpid()}
        self._not_job &= current  # forget PIDs that ended: a reused one is read again
        strays = set()
        for pid in current - known - self._not_job:
            if _session(pid) in sessions or self._has_cookie(pid):
                strays.add(pid)
            else:
                self._not_job.add(pid)
        return strays

    def _has_cookie(self, pid: int) -> bool:
        try:
            return psutil.Process(pid).environ().get(JOB_COOKIE) == self.cookie
        except psutil.Error:  # gone, or another user's process: not ours to stop
            return False

    def _signal(self, sig: int) -> None:
        for kill, target in [(os.killpg, self.proc.pid)] + [(os.kill, p) for p in self.descendants]:
            try:
                kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when the job is still running after `timeout` seconds. With a pidfd it
        returns the moment the job exits (Popen.wait(timeout) polls, up to 50 ms late each time)."""
        if timeout is not None and self._exit_fd is not None:
            if not select.select([self._exit_fd], [], [], max(timeout, 0.0))[0]:
                return None
            timeout = None  # it has exited: reap it
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _stop_all(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            self.track()  # again each round: a process may fork while the job winds down
            self._signal(sig)
            if self.wait(self.grace_s) is None:
                continue
            if not any(map(_alive, self.descendants)):
                return
        self.track()
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop_all()
        self._stop_done.set()

    def close(self) -> None:
        """Stop the job if it still runs, then let the reaper go: at once when the stop has finished (its own
        search of every process would repeat ours), else after one more kill of everything the job's."""
        self.stop()
        if self.reaper.stdin:
            try:
                if self._stop_done.is_set():
                    self.reaper.stdin.write(f"{REAPER_DONE}\n".encode())
                self.reaper.stdin.close()
            except OSError:
                pass
        if self._exit_fd is not None and self._stop_done.is_set():  # else a stop still waits on it: left open
            os.close(self._exit_fd)
            self._exit_fd = None
        try:
            self.reaper.wait(5)
        except subprocess.TimeoutExpired:
            self.reaper.kill()


class Attached:
    """Processes someone else started (`record --attach`), watched with Job's interface. They are not ours:
    `stop()` stops watching and leaves them running, and their exit code cannot be read (only a parent can)."""

    def __init__(self, pids: Sequence[int]):
        self.roots = [psutil.Process(pid) for pid in pids]  # psutil.NoSuchProcess for a PID that is not running
        self.descendants: set[int] = set()
        self._detached = threading.Event()

    @property
    def pid(self) -> int:
        return self.roots[0].pid

    @property
    def pids(self) -> set[int]:
        return self.descendants | {p.pid for p in self.roots}

    @property
    def returncode(self) -> int | None:
        return None

    def running(self) -> bool:
        return not self._detached.is_set() and any(p.is_running() and _alive(p.pid) for p in self.roots)

    def track(self, everywhere: bool = True) -> set[int]:
        found = set()
        for root in self.roots:
            try:
                found |= {c.pid for c in root.children(recursive=True)}
            except psutil.Error:
                continue
        new = found - self.descendants
        self.descendants |= found
        return new

    def stop(self) -> None:
        self._detached.set()

    def close(self) -> None:
        self.stop()


def attach(pids: Sequence[int]) -> Attached:
    """The processes to watch, or one line naming the PID that is not there to watch."""
    try:
        return Attached(pids)
    except psutil.NoSuchProcess as err:
        raise InputError(
            f"--attach {err.pid}: no such process is running; pass the PID of torchrun or a rank"
        ) from None
    except psutil.AccessDenied as err:
        raise InputError(f"--attach {err.pid}: not allowed to watch that process; run as its user") from None
