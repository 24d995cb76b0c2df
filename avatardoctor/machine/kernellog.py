"""The Xids the NVIDIA driver wrote to the kernel log since boot (`NVRM: Xid (PCI:0000:18:00): 79, pid=..., ...`).

Read where permitted: /dev/kmsg (what it holds now, never waiting for more), else `dmesg`; both are refused to an
unprivileged user where kernel.dmesg_restrict is 1, and then the facts say so instead of failing. Each Xid is
matched to a GPU of the snapshot by its PCI bus id. AVATARDOCTOR_KERNEL_LOG names a file to read instead (kmsg's
or dmesg's format): a saved `dmesg` output, or a test's.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from avatardoctor.files import read_buffered
from avatardoctor.machine.model import MAX_XID_MESSAGE, Gpu, KernelXids, XidEvent

KMSG = Path("/dev/kmsg")
ENV_PATH = "AVATARDOCTOR_KERNEL_LOG"
MAX_BYTES = 16 * 2**20  # the kernel's ring buffer is at most a few MiB
DMESG_TIMEOUT_S = 5.0
# kmsg: "6,1234,5678901234,-;NVRM: ..." (microseconds since boot); dmesg: "[ 5678.901234] NVRM: ..."
_KMSG_RECORD = re.compile(r"^\d+,\d+,(\d{1,20}),[^;]*;(.*)$")  # bounded digit runs: int() refuses 4,300+
_DMESG_LINE = re.compile(r"^\[\s*(\d{1,12}\.\d{1,9})\]\s?(.*)$")
_XID = re.compile(
    r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.\d)?)\): (\d{1,6})(?!\d)(?:,\s*(.*))?"
)


def bus_key(bus_id: str) -> str:
    """bus:device of a PCI bus id, as both NVML ("00000000:18:00.0") and the driver's Xid ("0000:18:00") write it."""
    return ":".join(bus_id.lower().split(".")[0].split(":")[-2:])


def parse_xids(text: str, gpus: Sequence[Gpu]) -> tuple[XidEvent, ...]:
    by_bus = {bus_key(g.pci_bus_id): g.index for g in gpus}
    events = []
    for line in text.splitlines():
        at: float | None = None
        if record := _KMSG_RECORD.match(line):
            at, line = int(record[1]) / 1e6, record[2]
        elif stamped := _DMESG_LINE.match(line):
            at, line = float(stamped[1]), stamped[2]
        if xid := _XID.search(line):
            message = (xid[3] or "").strip()[:MAX_XID_MESSAGE]
            events.append(XidEvent(int(xid[2]), xid[1], by_bus.get(bus_key(xid[1])), at, message))
    return tuple(events)


def _dmesg() -> tuple[str | None, str | None]:
    """(dmesg's output, None) or (None, why it gave none)."""
    try:
        done = subprocess.run(
            ["dmesg"], capture_output=True, timeout=DMESG_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"dmesg did not run ({err})"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return None, f"dmesg refused: {said[-1] if said else f'exit code {done.returncode}'}"
    return done.stdout[-MAX_BYTES:].decode(errors="replace"), None


def read_kernel_xids(gpus: Sequence[Gpu], env: Mapping[str, str] | None = None) -> KernelXids:
    """The Xids since boot, or why they cannot be read (never an exception)."""
    env = os.environ if env is None else env
    named = env.get(ENV_PATH)
    path = Path(named) if named else KMSG
    try:
        return KernelXids(str(path), parse_xids(read_buffered(path, MAX_BYTES).decode(errors="replace"), gpus))
    except OSError as err:
        refused = f"{path}: {err.strerror or err}"
    if named:  # the file the user named, and nothing else
        return KernelXids(str(path), unreadable=refused)
    text, why = _dmesg()
    if text is None:
        hint = " (kernel.dmesg_restrict: run as root, or `sudo dmesg | grep Xid`)"
        return KernelXids("dmesg", unreadable=f"{refused}; {why}{hint}")
    return KernelXids("dmesg", parse_xids(text, gpus))
