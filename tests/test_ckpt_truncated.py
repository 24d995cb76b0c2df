"""`ckpt verify --deep` on a file truncated while it is hashed: the real CLI, a real memory map, a real
SIGBUS in the hashing process, and one line naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from avatardoctor.ckpt.skeleton import write_skeleton

SPARSE_BYTES = 16 * 2**30  # sparse: no disk, and seconds to hash, so the truncation lands mid-way


def wait_until_mapped(cli: subprocess.Popen[str], path: Path, timeout: float = 60) -> None:
    """Until the CLI's hashing process has `path` mapped (its /proc/PID/maps names it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert cli.poll() is None, cli.communicate()
        for child in psutil.Process(cli.pid).children():
            try:
                if str(path) in Path(f"/proc/{child.pid}/maps").read_text():
                    return
            except OSError:  # it ended between the listing and the read
                pass
        time.sleep(0.02)
    raise AssertionError(f"{path} was never mapped")


def test_a_file_truncated_while_it_is_verified_is_one_line_naming_it(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    shrinking = root / "extra-shard.safetensors"
    with open(shrinking, "wb") as f:
        f.truncate(SPARSE_BYTES)
    cli = subprocess.Popen(
        [sys.executable, "-m", "avatardoctor", "ckpt", "verify", str(root), "--deep", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        wait_until_mapped(cli, shrinking)
        os.truncate(shrinking, 0)
        stdout, stderr = cli.communicate(timeout=120)
    finally:
        cli.kill()

    assert cli.returncode == 1 and "Traceback" not in stderr, stderr
    sha = {c["id"]: c for c in json.loads(stdout)["checks"]}["ckpt.sha256"]
    assert sha["status"] == "fail"
    assert sha["summary"] == "1 file could not be read to the end"
    assert (
        f"extra-shard.safetensors: changed while it was verified: it shrank from {SPARSE_BYTES:,} to 0 bytes"
        in (sha["details"])
    )
    assert len(sha["data"]["sha256"]) == sum(1 for p in root.rglob("*") if p.is_file()) - 1  # the rest hashed
    assert not list(tmp_path.rglob("core*"))  # the SIGBUS left no core file
