"""What `check` learns by probing this host when it runs: ports, free disk, network interfaces.

These are facts like the NVML snapshot, but they depend on the configuration (which port, which
folder), so the context carries a HostProbes that probes each one at most once per command and
keeps the answer: checks, the planner and the runner read the same answer, and a test or a replay
can hand in its own.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from avatardoctor.machine.ports import PortProbe, probe_port


@dataclass(frozen=True)
class DiskUsage:
    path: Path  # the folder asked about
    measured_at: Path  # its nearest existing ancestor, where the free space was read
    total_bytes: int
    free_bytes: int


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass
class HostProbes:
    ports: dict[int, PortProbe] = field(default_factory=dict)
    disks: dict[Path, DiskUsage] = field(default_factory=dict)
    net_interfaces: tuple[str, ...] | None = None

    def port(self, port: int) -> PortProbe:
        if port not in self.ports:
            self.ports[port] = probe_port(port)
        return self.ports[port]

    def disk(self, path: Path) -> DiskUsage:
        if path not in self.disks:
            at = _existing(path)
            usage = shutil.disk_usage(at)
            self.disks[path] = DiskUsage(path, at, usage.total, usage.free)
        return self.disks[path]

    def interfaces(self) -> tuple[str, ...]:
        if self.net_interfaces is None:
            self.net_interfaces = tuple(sorted(psutil.net_if_addrs()))
        return self.net_interfaces
