"""jobs.ProcessTree: a job's descendants from /proc's listing and each new PID's parent, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from avatardoctor.jobs import ProcessTree

# A parent that starts a child which starts a grandchild, prints their PIDs, and exits on a line from stdin
# (leaving the grandchild orphaned when told "orphan").
TREE = """
import subprocess, sys
grandchild = "import time; time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {grandchild!r}]); print(p.pid, flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
if sys.stdin.readline().strip() == "orphan":
    child.kill()
    child.wait()
    print("done", flush=True)
sys.stdin.readline()
"""


def start_tree() -> tuple[subprocess.Popen, int, int]:
    root = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert root.stdout is not None
    child, grandchild = map(int, root.stdout.readline().split())
    return root, child, grandchild


def end(root: subprocess.Popen, *pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    root.kill()
    root.wait()


def test_the_descendants_are_found_and_no_other_process():
    root, child, grandchild = start_tree()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        tree = ProcessTree([root.pid])
        assert tree.descendants() == sorted([child, grandchild])
        # the same answer from psutil's full walk of /proc, which this replaces
        assert tree.descendants() == sorted(p.pid for p in psutil.Process(root.pid).children(recursive=True))
        assert bystander.pid not in tree.descendants()
    finally:
        bystander.kill()
        bystander.wait()
        end(root, child, grandchild)


def test_processes_started_after_the_first_listing_join_and_ended_ones_leave():
    tree = ProcessTree([os.getpid()])
    before = set(tree.descendants())
    root, child, grandchild = start_tree()  # a new child of ours, with its own descendants: all new PIDs
    try:
        assert {root.pid, child, grandchild} <= set(tree.descendants()) - before
        root.kill()
        root.wait()  # reaped: its PID is gone from /proc
        listed = tree.descendants()
        assert root.pid not in listed
        assert {child, grandchild} <= set(listed)  # orphaned, still running: still listed
    finally:
        end(root, child, grandchild)


def test_an_orphan_keeps_its_place_once_listed():
    """A rank whose torchrun died is still the job's: its parent at birth placed it."""
    root, child, grandchild = start_tree()
    try:
        tree = ProcessTree([root.pid])
        assert grandchild in tree.descendants()
        assert root.stdin is not None and root.stdout is not None
        root.stdin.write("orphan\n")
        root.stdin.flush()
        assert root.stdout.readline().strip() == "done"  # the child is killed and reaped: the grandchild is orphaned
        assert psutil.Process(grandchild).ppid() != child
        assert grandchild in tree.descendants()
    finally:
        end(root, child, grandchild)


def test_a_jobs_wait_gives_none_while_it_runs_and_its_code_once_it_exits():
    """Job.wait(timeout) waits on a pidfd where there is one: the same answers as Popen.wait's."""
    from avatardoctor.jobs import Job

    job = Job([sys.executable, "-c", "import time; time.sleep(600)"], stdout=None)
    try:
        assert job.wait(0.05) is None and job.running()
        os.kill(job.pid, 9)
        assert job.wait(60) == -9 and not job.running()
        assert job.wait(0) == -9  # already reaped: answered again
    finally:
        job.close()
    assert job.reaper.returncode == 0
