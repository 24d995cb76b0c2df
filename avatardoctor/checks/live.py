"""nccl.live: the ranks really talk (check --deep). The facts come from avatardoctor.nccltest,
run once when the context is built; this only judges them."""

from __future__ import annotations

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, passed, skipped, warned
from avatardoctor.machine.model import p2p_ok

# GB/s per PCIe lane by generation (after encoding overhead), and per NVLink (per direction).
PCIE_LANE_GBS = {3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
NVLINK_GBS = 20.0
SLOW_SHARE = 0.25  # below this share of what the links allow, the busbw is worth a warning


def expected_busbw(ctx: CheckContext) -> float | None:
    """What the slowest rank-to-rank link should carry (GB/s), from the topology; None on CPU."""
    links = []
    for _, a, _, pair in ctx.handoffs:
        if pair and pair.nvlinks:
            links.append(pair.nvlinks * NVLINK_GBS)
            continue
        gen, width = a.pcie.gen_max, a.pcie.width_current
        if gen in PCIE_LANE_GBS and width:
            per = PCIE_LANE_GBS[gen] * width * 0.8
            links.append(per if p2p_ok(pair) else per / 2)  # through host memory: two trips
    return min(links) if links else None


def rows(outcome) -> list[str]:
    lines = ["all_reduce:  size (B)   time (us)   algbw (GB/s)   busbw (GB/s)"]
    lines += [
        f"  {r['bytes']:>12,} {r['time_us']:>11.1f} {r['algbw_gbs']:>14.3f} {r['busbw_gbs']:>14.3f}"
        for r in outcome.allreduce
    ]
    if outcome.sendrecv:
        lines.append("send/recv i -> i+1:  size (B)   time (us)   busbw (GB/s)")
        lines += [f"  {r['bytes']:>12,} {r['time_us']:>11.1f} {r['busbw_gbs']:>14.3f}" for r in outcome.sendrecv]
    return lines


@check("nccl.live", "NCCL")
def check_live(ctx: CheckContext) -> Outcome:
    outcome = ctx.nccl
    if outcome is None:
        return skipped("not run: `avatardoctor check --deep` (this machine only) or `avatardoctor nccl`")
    data = {
        "busbw_gbs": outcome.busbw_gbs,
        "backend": ctx.nccl_backend,
        "world_size": len(outcome.ranks) or None,
        "allreduce": outcome.allreduce,
        "sendrecv": outcome.sendrecv,
        "failure": outcome.failure,
    }
    if not outcome.ok:
        return failed(outcome.summary, outcome.debug_lines, outcome.remedy, data)
    details = rows(outcome)
    other = ctx.nccl_without_p2p
    if other is not None and other.busbw_gbs is not None:
        details.append(
            f"with NCCL_P2P_DISABLE=1: all_reduce busbw {other.busbw_gbs:.2f} GB/s ({'ok' if other.ok else other.summary})"
        )
        data["busbw_gbs_p2p_disabled"] = other.busbw_gbs
    expected = expected_busbw(ctx) if ctx.nccl_backend == "nccl" else None
    if expected and outcome.busbw_gbs is not None and outcome.busbw_gbs < SLOW_SHARE * expected:
        return warned(
            f"all_reduce busbw {outcome.busbw_gbs:.1f} GB/s, under {SLOW_SHARE:.0%} of the {expected:.0f} GB/s the links allow",
            details + outcome.debug_lines,
            remedy="check the PCIe link widths (topo.pcie), NCCL_P2P_DISABLE, and ACS/IOMMU settings",
            data=data,
        )
    busbw = f"{outcome.busbw_gbs:.2f} GB/s" if outcome.busbw_gbs is not None else "not measured"
    return passed(f"{outcome.summary}; all_reduce busbw {busbw}", details, data)


CHECKS = (check_live,)
