"""Facts -> checks -> report: what `avatardoctor check` does, without any rendering."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from avatardoctor.checks import CheckReport, run_checks
from avatardoctor.checks.base import CheckContext
from avatardoctor.config import resolve_config
from avatardoctor.machine import backend_for
from avatardoctor.visible import visible_gpus


def build_context(
    machine: str | None = None,
    demo: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    mode: str | None = None,
    **config_flags,
) -> CheckContext:
    """Read the machine (live, recorded or catalogue) and resolve the configuration for it."""
    env = dict(os.environ) if env is None else dict(env)
    facts = backend_for(machine, demo).snapshot()
    visible = visible_gpus(env.get("CUDA_VISIBLE_DEVICES"), facts.gpus)
    config = resolve_config(len(visible.gpus), mode, **config_flags)
    return CheckContext(machine=facts, visible=visible, config=config, env=env, cwd=cwd or Path.cwd())


def diagnose(ctx: CheckContext) -> CheckReport:
    return run_checks(ctx)
