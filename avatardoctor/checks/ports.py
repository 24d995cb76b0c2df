"""The torchrun master port, tested on this host the way torchrun's store will use it.

A port is free when a socket can bind it on every address (torchrun's TCPStore listens on all
interfaces). Who holds a busy port comes from psutil; other users' processes are only named to root.
"""

from __future__ import annotations

import errno
import socket

import psutil

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, passed

UPSTREAM_PORTS = {
    29101: "infinite_inference_single_gpu.sh",
    29102: "infinite_inference_multi_gpu.sh",
    29501: "gradio_single_gpu.sh",
    29502: "gradio_multi_gpu.sh",
}
SEARCH_SPAN = 200  # how far above a busy port to look for a free one


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


def port_holders(port: int) -> list[tuple[int | None, str | None]]:
    """(pid, process name) of every listener on the port; pid None where it is not ours to see."""
    holders = []
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return holders
    for c in connections:
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN:
            name = None
            if c.pid:
                try:
                    name = " ".join(psutil.Process(c.pid).cmdline()[:3]) or psutil.Process(c.pid).name()
                except psutil.Error:
                    pass
            if (c.pid, name) not in holders:
                holders.append((c.pid, name))
    return holders


def free_port_near(port: int) -> int | None:
    for candidate in range(port + 1, min(port + SEARCH_SPAN, 65535) + 1):
        if bind_error(candidate) is None:
            return candidate
    return None


@check("net.master_port", "Network")
def check_master_port(ctx: CheckContext) -> Outcome:
    port = ctx.config.master_port
    origin = f"the port {UPSTREAM_PORTS[port]} uses" if port in UPSTREAM_PORTS else "your --master-port"
    details = [f"torchrun --master_port {port} ({origin})"]
    if not 1 <= port <= 65535:
        return failed(f"master port {port} is not a TCP port (1-65535)", details, remedy="--master-port 29500")
    err = bind_error(port)
    data = {"port": port, "free": err is None}
    if err is None:
        return passed(f"master port {port} is free", details, data=data)
    suggestion = free_port_near(port)
    remedy = f"--master-port {suggestion}" if suggestion else "free the port or choose another with --master-port"
    data["suggested_port"] = suggestion
    if err == errno.EACCES:
        return failed(f"master port {port} needs root (ports below 1024 are privileged)", details, remedy, data)
    holders = port_holders(port)
    data["holders"] = [{"pid": pid, "name": name} for pid, name in holders]
    named = [f"PID {pid} ({name or 'name not readable'})" for pid, name in holders if pid]
    if named:
        who = ", ".join(named)
    else:
        who = "a process avatardoctor cannot see (another user's; run as root to name it)"
    details.append("torchrun would fail with 'address already in use' after the ranks start")
    return failed(f"master port {port} is held by {who}", details, remedy, data)


CHECKS = (check_master_port,)
