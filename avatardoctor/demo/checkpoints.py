"""The demos' checkpoints, built once in the user's cache folder: a full-size skeleton (check --demo) and a
tiny real one (`avatardoctor demo`, whose ranks load it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from avatardoctor.ckpt.skeleton import write_skeleton

DEMO_NAME = "skeleton-wan2.2-s2v-14b-v1"  # bump when the skeleton's content changes
TINY_DEMO_NAME = "demo-tiny-v1"  # the `demo` workload's checkpoint: small shapes, real random data


def cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "avatardoctor"


def demo_checkpoint(env: Mapping[str, str]) -> Path:
    """The cached skeleton, built on first use (a few seconds; almost no disk)."""
    target = cache_dir(env) / DEMO_NAME
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from rich.console import Console

    with Console(stderr=True).status(f"building the demo's skeleton checkpoint in {target} (once, a few seconds)"):
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
        try:
            write_skeleton(building / "ckpt")
            os.replace(building / "ckpt", target)  # whole or not at all, even if two demos race
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return target


def tiny_demo_checkpoint(env: Mapping[str, str]) -> Path:
    """The `demo` workload's tiny real checkpoint (a few hundred KB), built on first use."""
    target = cache_dir(env) / TINY_DEMO_NAME
    if not target.is_dir():
        write_skeleton(target, tiny=True)
    return target
