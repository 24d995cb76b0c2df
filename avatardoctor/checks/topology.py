"""Topology checks: how the ranks' GPUs are connected, and whether their PCIe links run at full width.

In TPP each DiT rank runs one denoising step and hands the latents to the next rank
(CheckContext.handoffs), so what matters is the link between consecutive ranks.
"""

from __future__ import annotations

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    needs_gpu_facts,
    passed,
    skipped,
    warned,
)
from avatardoctor.machine.model import Gpu, GpuPair, Machine, p2p_ok
from avatardoctor.units import plural

LEGEND = (
    "X = self, NV# = # NVLinks, PIX = one PCIe bridge, PXB = several PCIe bridges, "
    "PHB = a PCIe host bridge (CPU), NODE = across host bridges in one NUMA node, SYS = across NUMA nodes"
)
P2P_HANG_DRIVER_NOTE = (
    "NVIDIA's drivers disable peer-to-peer on GeForce cards; a driver that reports it anyway (an old "
    "one, or a P2P-patched kernel module) has hung NCCL on such boxes"
)


def link_label(pair: GpuPair | None) -> str:
    if pair is None:
        return "?"
    return f"NV{pair.nvlinks}" if pair.nvlinks else (pair.level or "?")


def topology_matrix(machine: Machine, gpus: tuple[Gpu, ...]) -> list[str]:
    """The rows `nvidia-smi topo -m` prints, for these GPUs."""
    width = 6
    rows = [" " * width + "".join(f"GPU{g.index}".ljust(width) for g in gpus)]
    for a in gpus:
        cells = ("X" if a is b else link_label(machine.pair(a.index, b.index)) for b in gpus)
        rows.append(f"GPU{a.index}".ljust(width) + "".join(c.ljust(width) for c in cells))
    return [r.rstrip() for r in rows]


@check("topo.p2p", "Topology")
def check_p2p(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    if ctx.config.nproc < 2 or len(ctx.rank_gpus) < 2:
        return skipped("one process: no GPU-to-GPU traffic")
    m = ctx.machine
    details = topology_matrix(m, ctx.visible.gpus) + [LEGEND]
    without, geforce_ok = [], []
    for rank, a, b, pair in ctx.handoffs:
        status = "ok" if p2p_ok(pair) else (pair.p2p_read if pair else "unknown")
        details.append(
            f"rank {rank} -> {rank + 1}: GPU {a.index} -> GPU {b.index} over {link_label(pair)}, P2P {status}"
        )
        if not p2p_ok(pair):
            without.append((a.index, b.index, status))
        elif "GeForce" in a.name and not (pair and pair.nvlinks):
            geforce_ok.append((a.index, b.index))
    data = {"without_p2p": [[a, b] for a, b, _ in without], "geforce_p2p": [list(p) for p in geforce_ok]}
    if geforce_ok:
        return warned(
            f"P2P reported between GeForce GPUs {', '.join(f'{a}-{b}' for a, b in geforce_ok)}",
            details + [P2P_HANG_DRIVER_NOTE],
            remedy="if a NCCL test or the launch hangs at the first send/recv: export NCCL_P2P_DISABLE=1",
            data=data,
        )
    if without:
        reasons = sorted({why.replace("_", " ") for _, _, why in without})
        return warned(
            f"no P2P on {len(without)} of {len(ctx.handoffs)} rank-to-rank links ({'; '.join(reasons)}): "
            "NCCL routes the hand-off through host memory",
            details + ["slower hand-offs, and NCCL then needs /dev/shm space (see host.shm)"],
            remedy="nothing to set: NCCL falls back to shared memory by itself, so NCCL_P2P_DISABLE=1 "
            "is not needed; for fast hand-offs use GPUs joined by NVLink or P2P-capable PCIe",
            data=data,
        )
    links = sorted({link_label(pair) for *_, pair in ctx.handoffs})
    return passed(
        f"P2P between all {len(ctx.handoffs)} consecutive rank pairs ({', '.join(links)})", details, data=data
    )


@check("topo.pcie", "Topology")
def check_pcie(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    known = [g for g in ctx.rank_gpus if g.pcie.width_current and g.pcie.width_max]
    if not known:
        return skipped("NVML did not report PCIe link widths for the ranks' GPUs")
    details, narrow = [], []
    for g in known:
        p = g.pcie
        details.append(f"GPU {g.index}: PCIe Gen{p.gen_current} x{p.width_current} (max Gen{p.gen_max} x{p.width_max})")
        if p.width_current and p.width_max and p.width_current < p.width_max:  # both known (above)
            narrow.append(g)
    if any(g.pcie.gen_current and g.pcie.gen_max and g.pcie.gen_current < g.pcie.gen_max for g in known):
        details.append("a generation below max is normal while a GPU idles (power saving); it rises under load")
    data = {"narrow": [g.index for g in narrow]}
    if narrow:
        worst = narrow[0]
        return warned(
            f"GPU {', '.join(str(g.index) for g in narrow)} link{'s run' if len(narrow) > 1 else ' runs'} below "
            f"full width (x{worst.pcie.width_current} of x{worst.pcie.width_max})",
            details + ["a narrow link slows weight loading, offloading and host-memory hand-offs"],
            remedy="reseat the card or move it to a full-width slot; check the BIOS PCIe bifurcation settings",
            data=data,
        )
    return passed(f"all {plural(len(known), 'GPU')} at full PCIe width", details, data=data)


CHECKS = (check_p2p, check_pcie)
