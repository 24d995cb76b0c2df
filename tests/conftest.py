"""Shared test helpers: recorded machines (the only fake: it replays what NVML would say) and contexts."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import pytest

from avatardoctor.checks.base import CheckContext
from avatardoctor.config import resolve_config
from avatardoctor.machine import backend_for
from avatardoctor.machine.model import Machine
from avatardoctor.visible import visible_gpus

# A busy 2-core CI machine is no reason for a property test to fail: no per-example deadline anywhere.
hypothesis.settings.register_profile("avatardoctor", deadline=None)
hypothesis.settings.load_profile("avatardoctor")

FIXTURES = Path(__file__).parent / "fixtures"
MACHINES = FIXTURES / "machines"


def machine(name: str) -> Machine:
    """A recorded fixture by name ("5xH800-healthy") or a catalogue spec ("5x4090")."""
    path = MACHINES / f"{name}.json"
    return backend_for(str(path) if path.exists() else name).snapshot()


def make_ctx(machine_name: str | Machine, env: dict | None = None, cwd: Path | None = None, **config) -> CheckContext:
    """A context as the CLI builds it; env defaults to an empty environment (not the test runner's)."""
    m = machine(machine_name) if isinstance(machine_name, str) else machine_name
    env = {} if env is None else env
    vis = visible_gpus(env.get("CUDA_VISIBLE_DEVICES"), m.gpus)
    mode = config.pop("mode", None)
    cfg = resolve_config(len(vis.gpus), mode, **config)
    return CheckContext(machine=m, visible=vis, config=cfg, env=env, cwd=cwd or Path.cwd())


@pytest.fixture
def clean_env(monkeypatch):
    """The test process's environment without variables that would change a check's answer."""
    for key in list(os.environ):
        if key.startswith(("NCCL_", "TORCH_NCCL_", "CUDA_", "HF_")) or key in ("NO_COLOR", "FORCE_COLOR"):
            monkeypatch.delenv(key, raising=False)
    return dict(os.environ)


@pytest.fixture(scope="session")
def full_skeleton(tmp_path_factory) -> Path:
    """A full-size Wan2.2-S2V-14B skeleton (real headers, sparse data), built once: read it, never change it."""
    from avatardoctor.ckpt.skeleton import write_skeleton

    return write_skeleton(tmp_path_factory.mktemp("skeleton") / "Wan2.2-S2V-14B")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The demo builds its skeleton checkpoint in the cache folder: a test's, not the developer's."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = saved
