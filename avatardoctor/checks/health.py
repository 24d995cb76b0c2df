"""GPU health, as DCGM's health watches flag it: uncorrected ECC errors, retired pages and remapped rows, and
clocks held down; and the Xids the driver logged since boot. Read from the NVML snapshot (machine.model.Health,
Machine.kernel_xids); a GPU that cannot say (GeForce has no ECC) is not judged on it. What each Xid means is
NVIDIA's Xid catalogue's (https://docs.nvidia.com/deploy/xid-errors/index.html; machine.model.XID_HARDWARE)."""

from __future__ import annotations

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, needs_gpu_facts, passed, skipped, warned
from avatardoctor.machine.model import XID_APPLICATION, XID_HARDWARE, XidEvent, xid_meaning

GROUP = "GPUs"
RESET = "reset it while idle (`sudo nvidia-smi -r -i {index}`) or reboot"


@check("gpu.ecc", GROUP)
def check_ecc(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    counted = [g for g in ctx.rank_gpus if g.health.ecc_volatile_uncorrected is not None]
    if not counted:
        return skipped("the ranks' GPUs report no ECC counters (ECC off, or a GPU without it)")
    details = [
        f"GPU {g.index}: {g.health.ecc_volatile_uncorrected} uncorrected since the driver loaded, "
        f"{g.health.ecc_aggregate_uncorrected if g.health.ecc_aggregate_uncorrected is not None else 'unknown'} "
        "over its life"
        for g in counted
    ]
    data = {str(g.index): [g.health.ecc_volatile_uncorrected, g.health.ecc_aggregate_uncorrected] for g in counted}
    now = [g for g in counted if g.health.ecc_volatile_uncorrected]
    if now:
        gpus = ", ".join(str(g.index) for g in now)
        return failed(
            f"uncorrected ECC errors on GPU {gpus} since the driver loaded: a run there can crash or compute garbage",
            details,
            f"{RESET.format(index=now[0].index)}; if they return, the card needs service (`nvidia-smi -q -d ECC`)",
            data,
        )
    before = [g for g in counted if g.health.ecc_aggregate_uncorrected]
    if before:
        return warned(
            f"GPU {', '.join(str(g.index) for g in before)} had uncorrected ECC errors in the past (none since the "
            "driver loaded)",
            details,
            "watch `nvidia-smi -q -d ECC`; a GPU that keeps gathering them needs service",
            data,
        )
    return passed("no uncorrected ECC errors on the ranks' GPUs", details, data)


@check("gpu.retired_pages", GROUP)
def check_retired_pages(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    known = [
        g
        for g in ctx.rank_gpus
        if g.health.retired_pages_pending is not None or g.health.remapped_rows_pending is not None
    ]
    if not known:
        return skipped("the ranks' GPUs report neither page retirement nor row remapping")
    failing = [g for g in known if g.health.remapped_rows_failed]
    pending = [g for g in known if g.health.retired_pages_pending or g.health.remapped_rows_pending]
    details = [f"GPU {g.index}: a memory repair waits for a reset" for g in pending] + [
        f"GPU {g.index}: a row remapping failed" for g in failing
    ]
    data = {"pending": [g.index for g in pending], "failed": [g.index for g in failing]}
    if failing:
        return failed(
            f"GPU {', '.join(str(g.index) for g in failing)} could not remap a failing memory row",
            details,
            "the card needs service; leave it out of CUDA_VISIBLE_DEVICES meanwhile",
            data,
        )
    if pending:
        return failed(
            f"GPU {', '.join(str(g.index) for g in pending)} has a memory repair pending until a reset: "
            "until then the bad memory is still in use",
            details,
            RESET.format(index=pending[0].index),
            data,
        )
    return passed("no retired pages or remapped rows waiting on the ranks' GPUs", details, data)


@check("gpu.throttle", GROUP)
def check_throttle(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    held = {g.index: g.health.throttle for g in ctx.rank_gpus if g.health.throttle}
    if not any(g.health.throttle is not None for g in ctx.rank_gpus):
        return skipped("NVML does not say why the ranks' GPUs' clocks are where they are")
    details = [f"GPU {index}: {', '.join(reasons)}" for index, reasons in held.items()]
    if not held:
        return passed("no GPU of the ranks is slowed by heat, power or a hardware slowdown")
    return warned(
        f"GPU {', '.join(map(str, held))} {'is' if len(held) == 1 else 'are'} slowed now "
        f"({'; '.join(details)}): Live Avatar's TPP pipeline runs at the pace of its slowest GPU",
        details,
        "check cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`); an idle GPU held down is hardware",
        {str(index): list(reasons) for index, reasons in held.items()},
    )


def _xid_line(e: XidEvent) -> str:
    on = f"GPU {e.gpu}" if e.gpu is not None else f"PCI {e.pci_bus_id} (no GPU of this snapshot)"
    at = f" at {e.since_boot_s:.0f} s since boot" if e.since_boot_s is not None else ""
    return f"{on}{at}: {xid_meaning(e.xid)}" + (f" ({e.message})" if e.message else "")


@check("gpu.xid", GROUP)
def check_xid(ctx: CheckContext) -> Outcome:
    """Reads the kernel log's Xids that the snapshot gathered (machine.kernellog); `run` watches NVML's events."""
    if skip := needs_gpu_facts(ctx):
        return skip
    log = ctx.machine.kernel_xids
    if log is None:
        return skipped("these machine facts hold no kernel log (a catalogue box, or recorded before it was read)")
    watched = [g.index for g in ctx.rank_gpus if g.health.xid_events]
    during_run = (
        f"; `run` records the Xids NVML reports on GPU {', '.join(map(str, watched))} (logs/gpu_health.csv)"
        if watched
        else "; NVML reports no Xid events for the ranks' GPUs either"
    )
    if log.unreadable:
        return skipped(f"the kernel log is not readable here ({log.unreadable}){during_run}")
    ranks = {g.index for g in ctx.rank_gpus}
    seen = [e for e in log.events if e.gpu is None or e.gpu in ranks]  # an unmatched bus id may be a rank's GPU
    details = [_xid_line(e) for e in seen]
    data = {"source": log.source, "events": [[e.gpu, e.xid, e.since_boot_s] for e in seen]}
    hardware = [e for e in seen if e.xid not in XID_APPLICATION]
    if any(e.xid in XID_HARDWARE for e in hardware):
        worst = next(e for e in hardware if e.xid in XID_HARDWARE)
        gpus = sorted({e.gpu for e in hardware if e.xid in XID_HARDWARE and e.gpu is not None})
        index = worst.gpu if worst.gpu is not None else "N"
        return failed(
            f"the driver logged hardware Xids since boot on {', '.join(f'GPU {g}' for g in gpus) or 'a GPU'}: "
            f"{xid_meaning(worst.xid)}",
            details,
            XID_HARDWARE[worst.xid].split(": ", 1)[-1].replace("-i N", f"-i {index}"),
            data,
        )
    if seen:
        return warned(
            f"{len(seen)} Xid(s) since boot ({', '.join(sorted({str(e.xid) for e in seen}))}), none of them one "
            "NVIDIA's Xid catalogue counts as a hardware failure (13, 31, 43: a program's own fault)",
            details,
            "if they come from Live Avatar's runs, rerun with CUDA_LAUNCH_BLOCKING=1 to name the kernel",
            data,
        )
    return passed(f"no Xid in the kernel log since boot ({log.source}){during_run}", details, data)


CHECKS = (check_ecc, check_retired_pages, check_throttle, check_xid)
