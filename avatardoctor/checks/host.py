"""Host checks: RAM for what Live Avatar keeps on the CPU, /dev/shm for NCCL, disk for outputs."""

from __future__ import annotations

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.predict import VIDEO_SAVE_COPIES
from avatardoctor.units import GIB, MIB, gib, plural

SHM_MIN_BYTES = 256 * MIB  # below this NCCL's shared-memory segments fail to allocate
SHM_COMFORT_BYTES = GIB  # what `docker run --shm-size=1g` gives; --ipc=host gives the host's
DISK_MIN_BYTES = GIB
DISK_COMFORT_BYTES = 10 * GIB  # torch.compile's cache, the LoRA download, videos, run logs


@check("host.ram", "Host")
def check_ram(ctx: CheckContext) -> Outcome:
    """Host RAM at its two peaks, from the configuration and the audio's length (avatardoctor.predict's
    HostPrediction): the load, when every process builds T5 in fp32 at once, and the save, when the
    saving rank holds the whole video in fp32. An estimate: the page cache and Python come on top."""
    h = ctx.machine.host
    if h.ram_total_bytes is None:
        return skipped(
            f"no host RAM facts for {ctx.machine.source} (record the real box with `avatardoctor machine record`)"
        )
    p = ctx.prediction
    host = p.host
    s, cfg = ctx.components, ctx.config
    available = h.ram_available_bytes if h.ram_available_bytes is not None else h.ram_total_bytes
    details = [
        f"{gib(h.ram_total_bytes)} total, {gib(available)} available",
        f"load: {plural(host.processes, 'process')} at once, each building T5 in fp32 on the CPU then loading its "
        f"bf16 state dict, and wav2vec2 ({gib(host.load_per_process)} each): {gib(host.load_bytes)} (sizes from the {s.source})",
    ]
    if host.parked:
        details.append(f"--enable-online-decode with offloading parks the bf16 DiT ({gib(host.parked)}) in host RAM")
    if host.save_bytes is None:
        details.append(
            "save: unknown without --audio (or --audio-seconds): the whole video is held in fp32 on the saving rank"
        )
    else:
        details.append(
            f"save: {host.frames:,} frames at {p.geometry.width}x{p.geometry.height} held in fp32 on the saving rank, "
            f"about {VIDEO_SAVE_COPIES:g} copies while it writes: {gib(host.save_bytes)}"
        )
    details.append(f"plus the page cache of the {gib(s.dit.bytes)} DiT shards (reclaimable)")
    data = {
        "need_bytes": host.peak_bytes,
        "load_bytes": host.load_bytes,
        "save_bytes": host.save_bytes,
        "binding": host.binding,
        "total_bytes": h.ram_total_bytes,
        "available_bytes": available,
        "estimate": True,
    }
    at = (
        "the load (every process builds T5 at once)" if host.binding == "load" else "the save (the whole video in fp32)"
    )
    summary = f"about {gib(host.peak_bytes, 1)} needed at {at} ({cfg.mode}), {gib(available, 1)} available"
    if h.ram_total_bytes < host.peak_bytes:
        remedy = (
            "shorter audio per run (or fewer --num-clip), or add RAM: the video is saved only at the end"
            if host.binding == "save"
            else "add RAM or swap, or start fewer processes at once (--mode single)"
        )
        return failed(summary + ": the host cannot hold it, and the kernel kills a rank", details, remedy, data)
    if available < host.peak_bytes:
        return warned(
            summary + ": other programs hold the rest, the run may swap or be OOM-killed",
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
        return skipped(
            f"no /dev/shm facts for {ctx.machine.source} (record the real box with `avatardoctor machine record`)"
        )
    free = h.shm_free_bytes if h.shm_free_bytes is not None else h.shm_total_bytes
    needs_shm = ctx.p2p_missing
    why = (
        "P2P is missing between some ranks, so NCCL moves the hand-offs through /dev/shm"
        if needs_shm
        else "NCCL keeps its shared-memory segments there"
    )
    details = [f"/dev/shm: {gib(h.shm_total_bytes)} total, {gib(free)} free", why]
    data = {"total_bytes": h.shm_total_bytes, "free_bytes": free, "shm_transport": needs_shm}
    remedy = "in Docker: `docker run --shm-size=8g` (or `--ipc=host`); on Kubernetes: mount an emptyDir with medium: Memory at /dev/shm"
    if free < SHM_MIN_BYTES:
        summary = f"/dev/shm has {gib(free)} free: NCCL fails with 'Error while creating shared memory segment'"
        return (failed if needs_shm else warned)(summary, details, remedy=remedy, data=data)
    if free < SHM_COMFORT_BYTES:
        return warned(f"/dev/shm has only {gib(free)} free", details, remedy=remedy, data=data)
    return passed(f"/dev/shm has {gib(free)} free", details, data=data)


@check("host.disk", "Host")
def check_disk(ctx: CheckContext) -> Outcome:
    target = ctx.config.liveavatar or ctx.cwd
    target = target if target.is_absolute() else ctx.cwd / target
    usage = ctx.probes.disk(target)
    details = [
        f"{target}: {gib(usage.free_bytes)} free of {gib(usage.total_bytes)} on this host",
        "Live Avatar writes ./output/*.mp4 in its checkout; avatardoctor writes ./runs/",
    ]
    data = {"path": str(target), "free_bytes": usage.free_bytes}
    remedy = "free disk space there, or run from a directory on a larger disk"
    if usage.free_bytes < DISK_MIN_BYTES:
        return failed(f"only {gib(usage.free_bytes)} free where outputs go", details, remedy, data)
    if usage.free_bytes < DISK_COMFORT_BYTES:
        return warned(f"only {gib(usage.free_bytes)} free where outputs go", details, remedy, data)
    return passed(f"{gib(usage.free_bytes, 1)} free where outputs go", details, data=data)


CHECKS = (check_ram, check_shm, check_disk)
