"""Checkpoint checks: the folder Live Avatar's --ckpt_dir names, verified from headers in seconds.

The facts come from avatardoctor.ckpt.scan (headers, index, archive directories); these checks
only judge them. Each problem names its file and says how to get it right.
"""

from __future__ import annotations

import os
from typing import Any

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.ckpt import layout
from avatardoctor.ckpt.components import Size, reference_summary
from avatardoctor.ckpt.manifest import compare, relative_digests
from avatardoctor.ckpt.scan import ComponentScan
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
    if scan is None or scan.root_problem:
        return skipped("no checkpoint (see ckpt.layout)")
    return scan.components[key]


@check("ckpt.layout", GROUP)
def check_layout(ctx: CheckContext) -> Outcome:
    scan = ctx.checkpoint
    if scan is None:
        return skipped(NO_CHECKPOINT)
    where = [
        f"--ckpt-dir {scan.given} -> {scan.root}"
        + ("" if os.path.isabs(scan.given) else f" (relative to {ctx.launch_dir}, where the launch starts)")
    ]
    data: dict[str, Any] = {"root": str(scan.root), "layout": scan.layout}
    if scan.root_problem:
        elsewhere = ctx.cwd / scan.given
        if not os.path.isabs(scan.given) and ctx.launch_dir != ctx.cwd and elsewhere.is_dir():
            where.append(
                f"{elsewhere} exists, but the launch starts in {ctx.launch_dir}, where the path means {scan.root}"
            )
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
    assert ctx.checkpoint is not None  # _unusable returned the skip otherwise
    index = ctx.checkpoint.index
    if index is None:
        return skipped("no readable shard index (see ckpt.layout and ckpt.dit)")
    problems = ctx.checkpoint.index_problems
    data = {
        "tensors": len(index.weight_map),
        "shards": index.shards,
        "total_size": index.total_size,
        "problems": len(problems),
    }
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
    assert ctx.checkpoint is not None  # _unusable returned the skip otherwise
    units = ctx.checkpoint.summary and ctx.checkpoint.summary.dit_units
    details = []
    if units:
        block = max(b.bytes for b in units.blocks) if units.blocks else 0
        details.append(
            f"FSDP units: {len(units.blocks)} blocks of {gib(block, 3)} and the root {gib(units.root.bytes)}"
        )
    data = {"bytes": scan.size.bytes, "params": scan.size.params}
    if scan.diff and scan.diff.blocking:
        kinds = ", ".join(line.split(":")[0] for line in scan.diff.blocking)
        return failed(
            f"the DiT is not Wan2.2-S2V-14B's ({kinds})",
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
            [
                f"{scan.size.bytes:,} bytes of parameters; the reference has {reference.bytes:,}: another precision or model"
            ],
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


@check("ckpt.sha256", GROUP)
def check_sha256(ctx: CheckContext) -> Outcome:
    checkpoint = ctx.checkpoint
    deep = checkpoint.deep if checkpoint else None
    if checkpoint is None or deep is None:
        return skipped("content not hashed: `avatardoctor ckpt verify DIR --deep`")
    root = checkpoint.root
    digests = relative_digests(deep.hashed.digests, root)
    unreadable = [f"{p.relative_to(root).as_posix()}: {why}" for p, why in deep.hashed.errors.items()]
    data: dict[str, Any] = {"sha256": digests, "manifest": str(deep.manifest_path) if deep.manifest_path else None}
    if unreadable:
        return failed(
            f"{len(unreadable)} file{'s' if len(unreadable) > 1 else ''} could not be read to the end",
            _listed(unreadable),
            REDOWNLOAD,
            data,
        )
    manifest_path = deep.manifest_path
    if deep.manifest is None or manifest_path is None:  # gather_deep reads a manifest only from a path
        return passed(
            f"sha256 of {len(digests)} files (the Hub's LFS object ids are these sha256s)",
            [f"{digest}  {name}" for name, digest in sorted(digests.items())],
            data,
        )
    findings = compare(deep.manifest, digests)
    data["findings"] = [{"path": f.path, "kind": f.kind, "expected": f.expected, "actual": f.actual} for f in findings]
    lines = [
        f"{f.kind}: {f.path}" + (f" (sha256 {f.actual}, manifest {f.expected})" if f.kind == "wrong-content" else "")
        for f in findings
    ]
    errors = [f for f in findings if not f.is_warning]
    if errors:
        wrong = [f.path for f in errors if f.kind == "wrong-content"]
        summary = (
            f"{wrong[0]}: wrong content (its sha256 differs from {manifest_path.name})"
            if wrong
            else f"{errors[0].path}: listed in {manifest_path.name} but not in the checkpoint"
        )
        return failed(summary, _listed(lines), f"re-download the named files: {REDOWNLOAD}", data)
    if findings:
        return warned(
            f"every file in {manifest_path.name} matches; {len(findings)} more not listed in it",
            _listed(lines),
            data=data,
        )
    return passed(f"all {len(digests)} files match {manifest_path.name}", data=data)


@check("ckpt.crc", GROUP)
def check_crc(ctx: CheckContext) -> Outcome:
    deep = ctx.checkpoint.deep if ctx.checkpoint else None
    if deep is None:
        return skipped("archives not read: `avatardoctor ckpt verify DIR --deep`")
    bad = {name: problem for name, problem in deep.crc.items() if problem}
    if bad:
        lines = [f"{name}: {problem}" for name, problem in sorted(bad.items())]
        return failed(lines[0] + ": the file is damaged", lines, f"re-download it: {REDOWNLOAD}", {"damaged": bad})
    return passed(
        f"zip CRC-32 of every entry in {len(deep.crc)} .pth archive{'s' if len(deep.crc) != 1 else ''} verified",
        data={"archives": sorted(deep.crc)},
    )


CHECKS = (check_layout, check_config, check_index, check_dit, check_t5, check_vae, check_tokenizer, check_wav2vec2)
DEEP_CHECKS = (check_sha256, check_crc)
