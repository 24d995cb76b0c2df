"""Host checks: RAM for what Live Avatar keeps on the CPU, /dev/shm for NCCL, disk for outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.checks.topology import p2p_ok, talking_pairs
from avatardoctor.units import GIB, MIB, gib

SHM_MIN_BYTES = 256 * MIB  # below this NCCL's shared-memory segments fail to allocate
SHM_COMFORT_BYTES = GIB  # what `docker run --shm-size=1g` gives; --ipc=host gives the host's
DISK_MIN_BYTES = GIB
DISK_COMFORT_BYTES = 10 * GIB  # torch.compile's cache, the LoRA download, videos, run logs


def host_ram_need(ctx: CheckContext) -> tuple[int, list[str]]:
    """ESTIMATE of host RAM in use at once, with the reasons, from the packaged component sizes.

    Upstream builds T5 on the CPU in every process (it moves to the GPU only to encode), runs
    wav2vec2 on the CPU, and loads the DiT straight onto the GPU (from_pretrained with device_map);
    with offload_model the DiT also parks in host RAM between phases. (With --dit_fsdp, a mode
    still to come, from_pretrained has no device_map: every rank builds the whole bf16 DiT in host
    RAM before sharding it.)
    """
    s, cfg = ctx.components, ctx.config
    per_rank = s.t5.bytes + s.wav2vec2.bytes
    lines = [
        f"each of the {cfg.nproc} process{'es' if cfg.nproc > 1 else ''} builds T5 ({gib(s.t5.bytes)}) on the CPU "
        f"and runs wav2vec2 ({gib(s.wav2vec2.bytes)}) there (sizes from the {s.source})"
    ]
    need = cfg.nproc * per_rank
    if cfg.offload_model:
        need += s.dit.bytes
        lines.append(f"--offload_model True parks the bf16 DiT ({gib(s.dit.bytes)}) in host RAM between phases")
    lines.append(
        f"plus the page cache of the {gib(s.dit.bytes)} DiT shards, shared by all ranks (reclaimable, but "
        "without it every rank reads them from disk again)"
    )
    return need, lines


@check("host.ram", "Host")
def check_ram(ctx: CheckContext) -> Outcome:
    h = ctx.machine.host
    if h.ram_total_bytes is None:
        return skipped(f"no host RAM facts for {ctx.machine.source} (record the real box with `avatardoctor machine record`)")
    need, lines = host_ram_need(ctx)
    available = h.ram_available_bytes if h.ram_available_bytes is not None else h.ram_total_bytes
    details = [f"{gib(h.ram_total_bytes)} total, {gib(available)} available", *lines]
    data = {"need_bytes": need, "total_bytes": h.ram_total_bytes, "available_bytes": available, "estimate": True}
    summary = f"about {gib(need, 1)} needed ({ctx.config.mode}), {gib(available, 1)} available"
    if h.ram_total_bytes < need:
        return failed(
            summary + ": the host cannot hold it",
            details,
            remedy="add RAM, or use a mode with fewer processes (--mode single) or without --offload-model",
            data=data,
        )
    if available < need:
        return warned(
            summary + ": other programs hold the rest, the load may swap or be OOM-killed",
            details,
            remedy="close what holds host RAM (`ps aux --sort=-rss | head`) before launching",
            data=data,
        )
    return passed(summary, details, data=data)


@check("host.shm", "Host")
def check_shm(ctx: CheckContext) -> Outcome:
    h = ctx.machine.host
    if ctx.config.nproc < 2:
        return passed("one process: NCCL moves no data through /dev/shm")
    if h.shm_total_bytes is None:
        return skipped(f"no /dev/shm facts for {ctx.machine.source} (record the real box with `avatardoctor machine record`)")
    free = h.shm_free_bytes if h.shm_free_bytes is not None else h.shm_total_bytes
    needs_shm = any(not p2p_ok(ctx.machine.pair(a.index, b.index)) for _, a, b in talking_pairs(ctx))
    why = "P2P is missing between some ranks, so NCCL moves the hand-offs through /dev/shm" if needs_shm else "NCCL keeps its shared-memory segments there"
    details = [f"/dev/shm: {gib(h.shm_total_bytes)} total, {gib(free)} free", why]
    data = {"total_bytes": h.shm_total_bytes, "free_bytes": free, "shm_transport": needs_shm}
    remedy = "in Docker: `docker run --shm-size=8g` (or `--ipc=host`); on Kubernetes: mount an emptyDir with medium: Memory at /dev/shm"
    if free < SHM_MIN_BYTES:
        summary = f"/dev/shm has {gib(free)} free: NCCL fails with 'Error while creating shared memory segment'"
        return (failed if needs_shm else warned)(summary, details, remedy=remedy, data=data)
    if free < SHM_COMFORT_BYTES:
        return warned(f"/dev/shm has only {gib(free)} free", details, remedy=remedy, data=data)
    return passed(f"/dev/shm has {gib(free)} free", details, data=data)


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@check("host.disk", "Host")
def check_disk(ctx: CheckContext) -> Outcome:
    target = ctx.config.liveavatar or ctx.cwd
    target = target if target.is_absolute() else ctx.cwd / target
    usage = shutil.disk_usage(_existing(target))
    details = [
        f"{target}: {gib(usage.free)} free of {gib(usage.total)} on this host",
        "Live Avatar writes ./output/*.mp4 in its checkout; avatardoctor writes ./runs/",
    ]
    data = {"path": str(target), "free_bytes": usage.free}
    remedy = "free disk space there, or run from a directory on a larger disk"
    if usage.free < DISK_MIN_BYTES:
        return failed(f"only {gib(usage.free)} free where outputs go", details, remedy, data)
    if usage.free < DISK_COMFORT_BYTES:
        return warned(f"only {gib(usage.free)} free where outputs go", details, remedy, data)
    return passed(f"{gib(usage.free, 1)} free where outputs go", details, data=data)


CHECKS = (check_ram, check_shm, check_disk)
