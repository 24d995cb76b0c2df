"""Facts -> checks -> report: what `avatardoctor check` does, without any rendering."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from avatardoctor.checks import CheckReport, run_checks
from avatardoctor.checks.base import CheckContext
from avatardoctor.ckpt.scan import scan_checkpoint
from avatardoctor.config import CKPT_DIR, resolve_config
from avatardoctor.errors import InputError
from avatardoctor.estimates import DEFAULT_TERMS, EstimateTerms
from avatardoctor.machine import backend_for
from avatardoctor.machine.interpreter import inspect_interpreter
from avatardoctor.visible import visible_gpus

if TYPE_CHECKING:
    from rich.console import Console


def build_context(
    machine: str | None = None,
    demo: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    mode: str | None = None,
    python: str | None = None,
    **config_flags,
) -> CheckContext:
    """Read the machine (live, recorded or catalogue) and the checkpoint's structure, and resolve
    the configuration for them; `python` (--python PATH) is the interpreter the sw.* checks inspect."""
    env = dict(os.environ) if env is None else dict(env)
    interpreter = inspect_interpreter(python) if python else None  # a bad PATH: one line, before anything else
    gpus = config_flags.pop("gpus", None)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus  # --gpus is what the launch will set
    facts = backend_for(machine, demo).snapshot()
    visible = visible_gpus(env.get("CUDA_VISIBLE_DEVICES"), facts.gpus)
    if gpus is not None and (visible.problem or not visible.gpus):
        raise InputError(
            f"--gpus {gpus}: {visible.problem or 'names no GPU'} (this machine's GPUs: "
            f"{', '.join(str(g.index) for g in facts.gpus) or 'none'})"
        )
    if demo and not config_flags.get("ckpt_dir"):
        from avatardoctor.demo.checkpoints import demo_checkpoint

        config_flags["ckpt_dir"] = str(demo_checkpoint(env))
    if config_flags.get("liveavatar") and not config_flags.get("ckpt_dir"):
        config_flags["ckpt_dir"] = CKPT_DIR  # what every upstream script passes
    config = resolve_config(len(visible.gpus), mode, **config_flags)
    ctx = CheckContext(
        machine=facts,
        visible=visible,
        config=config,
        env=env,
        cwd=cwd or Path.cwd(),
        terms=estimate_terms(env),
        python=interpreter,
    )
    if config.ckpt_dir:
        ctx = replace(ctx, checkpoint=scan_checkpoint(config.ckpt_dir, ctx.launch_dir))
    return ctx


def with_live_test(ctx: CheckContext, timeout_s: float = 60.0) -> CheckContext:
    """Run the live communication test on this machine (check --deep): NCCL on its GPUs, gloo on
    its CPUs when it has none. A recorded or catalogue machine is not here to test."""
    if not ctx.machine.source.startswith("nvml"):
        return ctx
    from avatardoctor.nccltest.launch import NcclTest, run_test

    backend = "nccl" if ctx.rank_gpus else "gloo"
    nproc = len(ctx.rank_gpus) if ctx.rank_gpus else ctx.config.nproc
    port = ctx.probes.port(ctx.config.master_port).usable
    test = NcclTest(backend, nproc, master_port=port or 29500, timeout_s=timeout_s)
    outcome = run_test(test)
    without_p2p = None
    if backend == "nccl" and outcome.ok and ctx.p2p_missing:
        # Where P2P is off, the figure with NCCL_P2P_DISABLE=1 too: does forcing it change anything?
        without_p2p = run_test(replace(test, env={**test.env, "NCCL_P2P_DISABLE": "1"}))
    return replace(ctx, nccl=outcome, nccl_backend=backend, nccl_without_p2p=without_p2p)


def estimate_terms(env: Mapping[str, str]) -> EstimateTerms:
    """The calibrated terms; the defaults (saying why) when the history cannot be read, so a damaged
    history never stops a check."""
    from avatardoctor.calibration import current_terms

    try:
        return current_terms(env)
    except InputError as err:
        return replace(DEFAULT_TERMS, source=f"default (calibration history unreadable: {err})")


def diagnose(ctx: CheckContext) -> CheckReport:
    return run_checks(ctx)


def checkpoint_context(
    ckpt_dir: str, liveavatar: Path | None, lora_path: str | None, cwd: Path | None = None
) -> CheckContext:
    """A context for `ckpt verify`: the checkpoint (and LoRA) alone, no machine."""
    from avatardoctor.machine.model import Machine
    from avatardoctor.visible import Visible

    config = resolve_config(0, "single", ckpt_dir=ckpt_dir, liveavatar=liveavatar, lora_path=lora_path)
    ctx = CheckContext(Machine(source="not inspected"), Visible(None, ()), config, dict(os.environ), cwd or Path.cwd())
    return replace(ctx, checkpoint=scan_checkpoint(ckpt_dir, ctx.launch_dir))


def verify_checkpoint(
    directory: str,
    liveavatar: Path | None,
    lora_path: str | None,
    deep: bool,
    manifest: Path | None,
    write_manifest: Path | None,
    force: bool,
    progress: Console,
) -> tuple[CheckContext, CheckReport, str | None]:
    """`ckpt verify`: the checkpoint's structure from its headers, and with `deep` its content (hashes,
    .pth CRCs, the manifest), checked; also what was written (--write-manifest), to say. HashingInterrupted
    when Ctrl-C stops the hashing."""
    from avatardoctor.checks import ckpt as ckpt_checks
    from avatardoctor.checks import liveavatar as la_checks

    ctx = checkpoint_context(directory, liveavatar, lora_path)
    checks = ckpt_checks.CHECKS + ((la_checks.lora,) if lora_path else ())
    wrote = None
    if deep and ctx.checkpoint is not None and not ctx.checkpoint.root_problem:
        from avatardoctor.ckpt.deep import gather_deep
        from avatardoctor.ckpt.manifest import relative_digests
        from avatardoctor.ckpt.manifest import write_manifest as write_sha256sum

        scan = ctx.checkpoint
        facts = gather_deep(scan, manifest, progress)
        ctx = replace(ctx, checkpoint=replace(scan, deep=facts))
        checks += ckpt_checks.DEEP_CHECKS
        if write_manifest:
            write_sha256sum(relative_digests(facts.hashed.digests, scan.root), write_manifest, force)
            wrote = f"wrote {len(facts.hashed.digests)} sha256 lines to {write_manifest}"
    return ctx, run_checks(ctx, checks), wrote


def demo_checks(ctx: CheckContext) -> CheckReport:
    """What the demo checks before it launches: the port, NCCL's environment, /dev/shm."""
    from avatardoctor.checks import host, nccl, ports

    return run_checks(ctx, (ports.check_master_port, nccl.check_nccl_env, host.check_shm))
