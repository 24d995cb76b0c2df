"""Checkpoint checks: the folder Live Avatar's --ckpt_dir names, verified from headers in seconds.

The facts come from avatardoctor.ckpt.scan (headers, index, archive directories); these checks
only judge them. Each problem names its file and says how to get it right.
"""

from __future__ import annotations

import os

from avatardoctor.checks.base import CheckContext, Outcome, check, failed, passed, skipped, warned
from avatardoctor.ckpt import layout
from avatardoctor.ckpt.scan import ComponentScan
from avatardoctor.components import Size, reference_summary
from avatardoctor.units import gib

GROUP = "Checkpoint"
SHOWN = 10  # problems listed in details before "and N more"
REDOWNLOAD = f"download it again: {layout.DOWNLOAD}"
NO_CHECKPOINT = "no checkpoint to verify: pass --ckpt-dir DIR (or --liveavatar DIR for its ckpt/Wan2.2-S2V-14B)"


def _listed(lines: list[str]) -> list[str]:
    if len(lines) <= SHOWN + 1:  # "and 1 more" would take the line the item needs
        return lines
    return lines[:SHOWN] + [f"... and {len(lines) - SHOWN} more"]


def _size(size: Size) -> str:
    return f"{gib(size.bytes)} ({size.params / 1e9:.2f} B params)"


def _unusable(ctx: CheckContext, key: str) -> Outcome | ComponentScan:
    """The component's scan, or the skip to return when there is nothing to judge."""
    scan = ctx.checkpoint
    if scan is None:
        return skipped(NO_CHECKPOINT)
    if scan.root_problem:
        return skipped("no checkpoint folder (see ckpt.layout)")
    return scan.components[key]


@check("ckpt.layout", GROUP)
def check_layout(ctx: CheckContext) -> Outcome:
    scan = ctx.checkpoint
    if scan is None:
        return skipped(NO_CHECKPOINT)
    where = [f"--ckpt-dir {scan.given} -> {scan.root}" + ("" if os.path.isabs(scan.given) else f" (relative to {ctx.launch_dir}, where the launch starts)")]
    data = {"root": str(scan.root), "layout": scan.layout}
    if scan.root_problem:
        elsewhere = ctx.cwd / scan.given
        if not os.path.isabs(scan.given) and ctx.launch_dir != ctx.cwd and elsewhere.is_dir():
            where.append(f"{elsewhere} exists, but the launch starts in {ctx.launch_dir}, where the path means {scan.root}")
            remedy = f"--ckpt-dir {elsewhere} (an absolute path means the same from everywhere)"
        else:
            remedy = f"point --ckpt-dir at the Wan2.2-S2V-14B folder, or get it: {layout.DOWNLOAD}"
        return failed(f"checkpoint folder {scan.root}: {scan.root_problem}", where, remedy, data)
    missing = [(f, c.label) for c in scan.components.values() for f in c.missing]
    data["missing"] = [f for f, _ in missing]
    details = where + _listed([f"missing: {f} ({label})" for f, label in missing])
    if scan.layout == "seed":
        details.append(layout.SEED_NOTE)
    if missing:
        return failed(
            f"{len(missing)} file{'s' if len(missing) > 1 else ''} Live Avatar opens "
            f"{'are' if len(missing) > 1 else 'is'} missing from {scan.root}",
            details,
            remedy=f"download the Wan2.2-S2V-14B layout: {layout.DOWNLOAD}",
            data=data,
        )
    count = sum(len(c.files) for c in scan.components.values())
    return passed(f"Wan2.2-S2V-14B layout at {scan.root}: all {count} files present", details, data)


@check("ckpt.index", GROUP)
def check_index(ctx: CheckContext) -> Outcome:
    got = _unusable(ctx, "dit")
    if isinstance(got, Outcome):
        return got
    index = ctx.checkpoint.index
    if index is None:
        return skipped("no readable shard index (see ckpt.layout and ckpt.dit)")
    problems = ctx.checkpoint.index_problems
    data = {"tensors": len(index.weight_map), "shards": index.shards, "total_size": index.total_size, "problems": len(problems)}
    if problems:
        return failed(
            f"{index.path.name} disagrees with its shards ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
            _listed(problems),
            remedy=f"the index and the shards come from different downloads or one is damaged: {REDOWNLOAD}",
            data=data,
        )
    return passed(f"{len(index.weight_map):,} tensors in {len(index.shards)} shards, as the index says", data=data)


@check("ckpt.dit", GROUP)
def check_dit(ctx: CheckContext) -> Outcome:
    got = _unusable(ctx, "dit")
    if isinstance(got, Outcome):
        return got
    scan: ComponentScan = got
    if scan.problems:
        return failed(
            scan.problems[0],
            _listed(scan.problems),
            remedy=f"re-download the named file (a partial download is the usual cause): {REDOWNLOAD}",
            data={"problems": scan.problems},
        )
    if scan.size is None:
        return skipped("DiT shards not all present (see ckpt.layout)")
    units = ctx.checkpoint.summary() and ctx.checkpoint.summary().dit_units
    details = []
    if units:
        block = max(b.bytes for b in units.blocks) if units.blocks else 0
        details.append(f"FSDP units: {len(units.blocks)} blocks of {gib(block, 3)} and the root {gib(units.root.bytes)}")
    data = {"bytes": scan.size.bytes, "params": scan.size.params}
    if scan.diff and scan.diff.blocking:
        return failed(
            f"the DiT is not Wan2.2-S2V-14B's: {scan.diff.blocking[0]}",
            details + list(scan.diff.blocking),
            remedy=f"Live Avatar loads this exact model: {layout.DOWNLOAD}",
            data=data,
        )
    if scan.diff and scan.diff.dtype_only:
        return warned(
            f"DiT {_size(scan.size)}: {scan.diff.dtype_only[0]}",
            details + list(scan.diff.dtype_only),
            remedy="it loads (--convert_model_dtype casts it), but needs more memory while loading; "
            f"the BF16 original: {layout.DOWNLOAD}",
            data=data,
        )
    return passed(f"DiT {_size(scan.size)}, matches Wan2.2-S2V-14B", details, data)


def _component_outcome(ctx: CheckContext, key: str, reference: Size | None = None) -> Outcome:
    got = _unusable(ctx, key)
    if isinstance(got, Outcome):
        return got
    scan: ComponentScan = got
    label = layout.BY_KEY[key].label
    if scan.problems:
        return failed(scan.problems[0], _listed(scan.problems), remedy=f"re-download the named file: {REDOWNLOAD}")
    if scan.missing:
        return skipped(f"{label}: files missing (see ckpt.layout)")
    if scan.size is None:
        return passed(f"{label}: {len(scan.files)} file{'s' if len(scan.files) > 1 else ''} present and readable")
    data = {"bytes": scan.size.bytes, "params": scan.size.params}
    if reference and scan.size.bytes != reference.bytes:
        return warned(
            f"{label} holds {gib(scan.size.bytes)}, Wan2.2-S2V-14B's has {gib(reference.bytes)}",
            [f"{scan.size.bytes:,} bytes of parameters; the reference has {reference.bytes:,}: another precision or model"],
            remedy=f"Live Avatar expects the original file: {REDOWNLOAD}",
            data=data,
        )
    return passed(f"{label} {_size(scan.size)}", data=data)


@check("ckpt.t5", GROUP)
def check_t5(ctx: CheckContext) -> Outcome:
    return _component_outcome(ctx, "t5", reference_summary().t5)


@check("ckpt.vae", GROUP)
def check_vae(ctx: CheckContext) -> Outcome:
    return _component_outcome(ctx, "vae", reference_summary().vae)


@check("ckpt.tokenizer", GROUP)
def check_tokenizer(ctx: CheckContext) -> Outcome:
    return _component_outcome(ctx, "tokenizer")


@check("ckpt.wav2vec2", GROUP)
def check_wav2vec2(ctx: CheckContext) -> Outcome:
    return _component_outcome(ctx, "wav2vec2")


@check("ckpt.config", GROUP)
def check_config(ctx: CheckContext) -> Outcome:
    return _component_outcome(ctx, "config")


CHECKS = (check_layout, check_config, check_index, check_dit, check_t5, check_vae, check_tokenizer, check_wav2vec2)
