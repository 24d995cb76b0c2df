"""GPU health, as DCGM's health watches flag it: uncorrected ECC errors, retired pages and remapped rows, and
clocks held down. Read from the NVML snapshot (machine.model.Health); a GPU that cannot say (GeForce has no
ECC) is not judged on it."""

from __future__ import annotations

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, needs_gpu_facts, passed, skipped, warned

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


CHECKS = (check_ecc, check_retired_pages, check_throttle)
