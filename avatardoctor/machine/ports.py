"""TCP ports on this host, tested the way torchrun's store and Gradio will use them.

A port is free when a socket can bind it on every address (torchrun's TCPStore listens on all
interfaces). Who holds a busy port comes from psutil; other users' processes are only named to root.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

import psutil

SEARCH_SPAN = 200  # how far above a busy port to look for a free one


@dataclass(frozen=True)
class PortHolder:
    pid: int | None  # None where the listener is not ours to see
    name: str | None


@dataclass(frozen=True)
class PortProbe:
    """One port, probed: free, or its errno, who holds it and the next free port above it."""

    port: int
    bind_errno: int | None  # None: bindable on every address
    next_free: int | None = None
    holders: tuple[PortHolder, ...] = ()

    @property
    def free(self) -> bool:
        return self.bind_errno is None

    @property
    def usable(self) -> int | None:
        """This port, or the next free one above it."""
        return self.port if self.free else self.next_free

    @property
    def privileged(self) -> bool:
        return self.bind_errno == errno.EACCES


def bind_error(port: int) -> int | None:
    """None when the port can be bound on all IPv4 and IPv6 addresses, else the errno."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TCPStore does: TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address, port))
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:  # IPv6 present but unconfigured
                    return e.errno
    return None


def port_holders(port: int) -> tuple[PortHolder, ...]:
    """Every listener on the port."""
    holders: list[PortHolder] = []
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return ()
    for c in connections:
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN:
            name = None
            if c.pid:
                try:
                    name = " ".join(psutil.Process(c.pid).cmdline()[:3]) or psutil.Process(c.pid).name()
                except psutil.Error:
                    pass
            if PortHolder(c.pid, name) not in holders:
                holders.append(PortHolder(c.pid, name))
    return tuple(holders)


def holders_text(holders: tuple[PortHolder, ...]) -> str:
    """ "PID 12 (python -m gradio), ..." for the holders we may see, else "another process"."""
    return ", ".join(f"PID {h.pid} ({h.name or 'name not readable'})" for h in holders if h.pid) or "another process"


def next_free_port(port: int) -> int | None:
    for candidate in range(port + 1, min(port + SEARCH_SPAN, 65535) + 1):
        if bind_error(candidate) is None:
            return candidate
    return None


def probe_port(port: int) -> PortProbe:
    """The port's state now; for a busy one, also who holds it and the next free one."""
    err = bind_error(port)
    if err is None:
        return PortProbe(port, None)
    return PortProbe(port, err, next_free_port(port), () if err == errno.EACCES else port_holders(port))


def usable_port(port: int) -> int | None:
    """This port when it is free now, else the next free one above it (None: none within SEARCH_SPAN)."""
    return port if bind_error(port) is None else next_free_port(port)
