"""The torchrun master port, as this host's probe found it (avatardoctor.machine.ports)."""

from __future__ import annotations

from typing import Any

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, passed
from avatardoctor.machine.ports import holders_text
from avatardoctor.upstream import GRADIO_PORT, SCRIPT_PORT

# the upstream script each port comes from
UPSTREAM_PORTS = {
    SCRIPT_PORT["single"]: "infinite_inference_single_gpu.sh",
    SCRIPT_PORT["tpp"]: "infinite_inference_multi_gpu.sh",
    GRADIO_PORT["single"]: "gradio_single_gpu.sh",
    GRADIO_PORT["tpp"]: "gradio_multi_gpu.sh",
}


@check("net.master_port", "Network")
def check_master_port(ctx: CheckContext) -> Outcome:
    port = ctx.config.master_port
    origin = f"the port {UPSTREAM_PORTS[port]} uses" if port in UPSTREAM_PORTS else "your --master-port"
    details = [f"torchrun --master_port {port} ({origin})"]
    if not 1 <= port <= 65535:
        return failed(f"master port {port} is not a TCP port (1-65535)", details, remedy="--master-port 29500")
    probe = ctx.probes.port(port)
    data: dict[str, Any] = {"port": port, "free": probe.free}
    if probe.free:
        return passed(f"master port {port} is free", details, data=data)
    suggestion = probe.next_free
    remedy = f"--master-port {suggestion}" if suggestion else "free the port or choose another with --master-port"
    data["suggested_port"] = suggestion
    if probe.privileged:
        return failed(f"master port {port} needs root (ports below 1024 are privileged)", details, remedy, data)
    data["holders"] = [{"pid": h.pid, "name": h.name} for h in probe.holders]
    if any(h.pid for h in probe.holders):
        who = holders_text(probe.holders)
    else:
        who = "a process avatardoctor cannot see (another user's; run as root to name it)"
    details.append("torchrun would fail with 'address already in use' after the ranks start")
    return failed(f"master port {port} is held by {who}", details, remedy, data)


CHECKS = (check_master_port,)
