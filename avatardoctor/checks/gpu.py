"""GPU checks: the driver, what GPUs there are, which ones CUDA will show the ranks, their free
memory, and who else holds memory on them."""

from __future__ import annotations

from typing import TypedDict

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    needs_gpu_facts,
    passed,
    skipped,
    warned,
)
from avatardoctor.machine.model import Gpu
from avatardoctor.rules import SEED_NOTE, SEED_REMEDY
from avatardoctor.units import GIB, gib, mib, plural
from avatardoctor.upstream import FP8_MIN_CC

# Memory NVML counts as used that no listed process owns; below this it is the CUDA/driver
# bookkeeping every GPU shows (v1 counts driver-reserved memory as used).
UNATTRIBUTED_SLACK_BYTES = GIB


def role(ctx: CheckContext, rank: int) -> str:
    if ctx.config.nproc == 1:
        return "single GPU"
    return f"DiT rank {rank}" if rank in ctx.config.dit_ranks else f"VAE rank {rank}"


def _foreign_bytes(gpu: Gpu) -> int:
    return sum(p.used_bytes or 0 for p in gpu.processes)


def idle_gpus(ctx: CheckContext) -> list[Gpu]:
    """GPUs no other process holds memory on: the ones to offer in CUDA_VISIBLE_DEVICES."""
    return [g for g in ctx.machine.gpus if not g.processes]


def visible_remedy(ctx: CheckContext) -> str | None:
    idle = idle_gpus(ctx)
    if len(idle) < ctx.config.nproc:
        return None
    chosen = ",".join(str(g.index) for g in idle[: ctx.config.nproc])
    return f"export CUDA_VISIBLE_DEVICES={chosen}"


@check("gpu.driver", "GPUs")
def check_driver(ctx: CheckContext) -> Outcome:
    m = ctx.machine
    if m.nvml_error:
        return failed(
            f"NVML is not available: {m.nvml_error}",
            details=["Live Avatar needs CUDA GPUs; nvidia-smi would fail here too."],
            remedy="install the NVIDIA driver (nvidia-smi must work); in a container, start it with "
            "`--gpus all` and the NVIDIA container toolkit. To ask 'what if' without GPUs: "
            "`avatardoctor check --machine 5xH800`",
            data={"error": m.nvml_error},
        )
    if m.source.startswith("catalogue:"):
        return skipped(f"{m.source.split(':', 1)[1]} is a catalogue machine: no driver to inspect")
    details = []
    if m.memory_info_version == 1:
        details.append("NVML memory info v1: driver-reserved memory is counted as used (v2 needs driver R510+)")
    data = {"driver": m.driver_version, "cuda": m.cuda_driver_version, "memory_info_version": m.memory_info_version}
    return passed(f"driver {m.driver_version}, CUDA {m.cuda_driver_version or 'unknown'}", details, data=data)


@check("gpu.inventory", "GPUs")
def check_inventory(ctx: CheckContext) -> Outcome:
    m = ctx.machine
    if m.nvml_error:
        return skipped("no GPU facts: NVML is not available (see gpu.driver)")
    if not m.gpus:
        return failed(
            "NVML works but reports no GPUs",
            remedy="check `nvidia-smi -L`; in a container, pass the devices (`--gpus all`)",
        )
    details = []
    for g in m.gpus:
        details.append(
            f"GPU {g.index}: {g.name}, {gib(g.total_bytes)} total, {gib(g.free_bytes)} free, "
            f"compute capability {g.cc}, {g.pci_bus_id}"
        )
    names = sorted({g.name for g in m.gpus})
    off = [str(g.index) for g in m.gpus if g.persistence_mode is False]
    if off:
        details.append(
            f"persistence mode is off on GPU {', '.join(off)}: the driver re-initialises them at every "
            "launch (seconds each); `sudo nvidia-smi -pm 1` keeps them ready"
        )
    summary = (
        f"{len(m.gpus)} x {names[0]} ({gib(m.gpus[0].total_bytes)} each)"
        if len(names) == 1
        else f"{len(m.gpus)} GPUs of {len(names)} models: {', '.join(names)}"
    )
    data = {"count": len(m.gpus), "models": names}
    return passed(summary, details, data=data)


@check("gpu.visible", "GPUs")
def check_visible(ctx: CheckContext) -> Outcome:
    if ctx.machine.nvml_error or not ctx.machine.gpus:
        return skipped("no GPUs found (see gpu.driver, gpu.inventory)")
    vis, need, mode = ctx.visible, ctx.config.nproc, ctx.config.mode
    shown = ",".join(str(g.index) for g in vis.gpus) or "none"
    setting = "unset" if vis.raw is None else f"{vis.raw!r}"
    details = [f"CUDA_VISIBLE_DEVICES is {setting}: CUDA shows GPU {shown} (NVML numbering)"]
    if vis.problem:
        details.append(f"CUDA stops reading the list at {vis.problem}")
        if vis.dropped:
            details.append(f"and silently ignores the entries after it: {', '.join(vis.dropped)}")
    ranks = ", ".join(f"rank {r} -> GPU {g.index}" for r, g in enumerate(ctx.rank_gpus))
    if ranks:
        details.append(f"{mode} starts {need} process{'es' if need > 1 else ''}: {ranks}")
    data = {"raw": vis.raw, "visible": [g.index for g in vis.gpus], "needed": need, "problem": vis.problem}
    remedy = visible_remedy(ctx)
    if len(vis.gpus) < need:
        why = f"CUDA_VISIBLE_DEVICES stops at {vis.problem}" if vis.problem else f"only {len(vis.gpus)} visible"
        if len(ctx.machine.gpus) >= need:
            remedy = remedy or f"export CUDA_VISIBLE_DEVICES={','.join(str(g.index) for g in ctx.machine.gpus[:need])}"
        elif mode == "tpp":  # no CUDA_VISIBLE_DEVICES can fix this box
            details.append(SEED_NOTE)
            remedy = SEED_REMEDY
        return failed(
            f"{mode} needs {plural(need, 'GPU')} but CUDA will show {len(vis.gpus)} ({why}): ranks without a GPU "
            "die with 'invalid device ordinal'",
            details,
            remedy=remedy,
            data=data,
        )
    if vis.problem:
        return warned(f"CUDA_VISIBLE_DEVICES has a bad entry: {vis.problem}", details, remedy, data)
    models = {g.name for g in vis.gpus}
    if len(models) > 1 and ctx.env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        return warned(
            "mixed GPU models: CUDA numbers them fastest-first, not in the PCI order shown here",
            details + [f"models: {', '.join(sorted(models))}"],
            remedy="export CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA and nvidia-smi agree on GPU numbers",
            data=data,
        )
    extra = len(vis.gpus) - need
    summary = f"{need} of {len(vis.gpus)} visible GPUs used" + (f"; {extra} stay idle" if extra else "")
    return passed(summary, details, data=data)


@check("gpu.vram", "GPUs")
def check_vram(ctx: CheckContext) -> Outcome:
    """Free memory on each rank's GPU against what the load alone puts there (the prediction's load phase:
    the bf16 DiT every upstream mode loads onto each DiT GPU, --fp8 converting only after it, the VAE and
    the CUDA context). A GPU with less free cannot load, whatever else is set; fit.peak judges the rest."""
    if skip := needs_gpu_facts(ctx):
        return skip
    load = {p.index: p.total("load") for p in ctx.prediction.gpus}
    details, short = [], []
    for rank, g in enumerate(ctx.rank_gpus):
        reserved = f", {gib(g.reserved_bytes)} driver-reserved" if g.reserved_bytes else ""
        line = f"GPU {g.index} ({role(ctx, rank)}): {gib(g.free_bytes)} free of {gib(g.total_bytes)}{reserved}"
        if g.free_bytes < load[g.index]:
            short.append(g)
            line += f", the load alone needs {gib(load[g.index])}"
        details.append(line)
    details.append(f"DiT size from the {ctx.components.source}")
    data = {
        "free_bytes": {str(g.index): g.free_bytes for g in ctx.rank_gpus},
        "load_bytes": {str(i): int(b) for i, b in load.items()},
        "short": [g.index for g in short],
    }
    count = len(ctx.rank_gpus)
    if short:
        low = min(short, key=lambda g: g.free_bytes - load[g.index])
        busy = any(g.processes for g in short)
        return failed(
            f"GPU {low.index}: {gib(low.free_bytes)} free < {gib(load[low.index])} that loading the bf16 DiT puts "
            "on it, before anything runs",
            details + ["a lower bound: T5, KV caches and activations come on top (fit.peak)"],
            remedy="use 80 GB-class GPUs (A100-80GB, H100, H800, H200)"
            + (", or free the memory other processes hold (see gpu.processes)" if busy else ""),
            data=data,
        )
    low = min(ctx.rank_gpus, key=lambda g: g.free_bytes)
    return passed(
        f"{count} GPU{'s' if count > 1 else ''} for the ranks, least free {gib(low.free_bytes)} (GPU {low.index})",
        details,
        data,
    )


class _Holder(TypedDict):
    """A process (or unattributed memory: pid and name None) holding memory on a rank's GPU."""

    gpu: int
    pid: int | None
    name: str | None
    used_bytes: int | None


@check("gpu.processes", "GPUs")
def check_processes(ctx: CheckContext) -> Outcome:
    if skip := needs_gpu_facts(ctx):
        return skip
    rank_ids = {g.index for g in ctx.rank_gpus}
    details: list[str] = []
    holders: list[_Holder] = []
    for g in ctx.machine.gpus:
        used_here = g.index in rank_ids
        for p in g.processes:
            size = mib(p.used_bytes) if p.used_bytes is not None else "unknown MiB"
            name = p.name or "name not visible here (another PID namespace?)"
            details.append(
                f"GPU {g.index}: PID {p.pid} {name}, {size} ({p.kind})"
                + ("" if used_here else ", not used by the ranks")
            )
            if used_here:
                holders.append({"gpu": g.index, "pid": p.pid, "name": p.name, "used_bytes": p.used_bytes})
        hidden = g.used_bytes - _foreign_bytes(g)
        if used_here and hidden > UNATTRIBUTED_SLACK_BYTES:
            details.append(
                f"GPU {g.index}: {gib(hidden)} in use by processes NVML does not list "
                "(another container, or a process in another PID namespace)"
            )
            holders.append({"gpu": g.index, "pid": None, "name": None, "used_bytes": hidden})
    data = {"holders": holders}
    if not holders:
        return passed("no other process holds memory on the ranks' GPUs", details, data=data)
    gpus = sorted({h["gpu"] for h in holders})
    total = sum(h["used_bytes"] or 0 for h in holders)
    remedy = visible_remedy(ctx)
    pids = " ".join(str(h["pid"]) for h in holders if h["pid"])
    stop = f"stop them (`kill {pids}`)" if pids else "stop them"
    return warned(
        f"other processes hold {gib(total)} on GPU {', '.join(map(str, gpus))}, which the ranks will use",
        details,
        remedy=f"{stop} or pick idle GPUs: {remedy}" if remedy else stop,
        data=data,
    )


@check("gpu.fp8", "GPUs")
def check_fp8(ctx: CheckContext) -> Outcome:
    if not ctx.config.fp8:
        return skipped("--fp8 is off: the DiT runs in bf16")
    if skip := needs_gpu_facts(ctx):
        return skip
    # The entry converts the DiT on every rank, the VAE rank's copy too, with a compiled fp8 cast.
    ranks = list(enumerate(ctx.rank_gpus))
    lines = [f"rank {r}: GPU {g.index} {g.name}, compute capability {g.cc}" for r, g in ranks]
    too_old = [(r, g) for r, g in ranks if g.compute_capability < FP8_MIN_CC]
    data = {"ranks": [{"rank": r, "gpu": g.index, "cc": g.cc} for r, g in ranks], "min_cc": "8.9"}
    if not too_old:
        ccs = ", ".join(sorted({g.cc for _, g in ranks}))
        return passed(f"every rank's GPU supports FP8 (compute capability {ccs})", details=lines, data=data)
    gpu_list = ", ".join(str(g.index) for _, g in too_old)
    models = ", ".join(sorted({f"{g.name} (cc {g.cc})" for _, g in too_old}))
    return failed(
        f"--fp8 needs compute capability 8.9+ on every rank's GPU (the VAE rank converts too); GPU {gpu_list}: {models}",
        details=[*lines, "--fp8 uses torch._scaled_mm with float8 e4m3 (Ada, Hopper, Blackwell)"],
        remedy="--no-fp8 (drop --fp8 from the launch); the bf16 weights then need more GPU memory",
        data=data,
    )


CHECKS = (check_driver, check_inventory, check_visible, check_vram, check_processes, check_fp8)
