"""The vocabulary every check speaks: a stable id, a status, a one-line summary, details, a remedy.

A check is a small function decorated with @check(id, group). It reads the CheckContext (the facts,
this host's probes among them: ctx.probes) and returns an Outcome. The files and programs the
configuration names (the checkout and its git, the checkpoint, --image/--audio, the LoRA, ffmpeg and
the entry's imports) are read by the one check that owns each, and that check's docstring says so; the runner stamps the id on it, and turns an exception into a failed
result naming the bug instead of killing the report. Renderers read results and compute nothing.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatardoctor.ckpt.components import ComponentSummary, reference_summary
from avatardoctor.ckpt.scan import CheckpointScan
from avatardoctor.config import LaunchConfig
from avatardoctor.estimates import DEFAULT_TERMS, EstimateTerms
from avatardoctor.machine.interpreter import Interpreter
from avatardoctor.machine.model import Gpu, GpuPair, Machine, p2p_ok
from avatardoctor.machine.probes import HostProbes
from avatardoctor.visible import Visible

if TYPE_CHECKING:  # a type only: the checks judge its facts and never start the test
    from avatardoctor.nccltest.launch import NcclOutcome


class Status(str, Enum):
    PASS = "pass"
    SKIP = "skip"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return ("pass", "skip", "warn", "fail").index(self.value)


@dataclass(frozen=True)
class Outcome:
    status: Status
    summary: str
    details: tuple[str, ...] = ()
    remedy: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


def passed(summary: str, details=(), data=None) -> Outcome:
    return Outcome(Status.PASS, summary, tuple(details), None, data or {})


def warned(summary: str, details=(), remedy: str | None = None, data=None) -> Outcome:
    return Outcome(Status.WARN, summary, tuple(details), remedy, data or {})


def failed(summary: str, details=(), remedy: str | None = None, data=None) -> Outcome:
    return Outcome(Status.FAIL, summary, tuple(details), remedy, data or {})


def skipped(summary: str, details=(), data=None) -> Outcome:
    return Outcome(Status.SKIP, summary, tuple(details), None, data or {})


def worst(statuses) -> Status:
    return max(statuses, key=lambda s: s.rank, default=Status.PASS)


@dataclass(frozen=True)
class CheckResult:
    id: str
    group: str
    status: Status
    summary: str
    details: tuple[str, ...] = ()
    remedy: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "status": self.status.value,
            "summary": self.summary,
            "details": list(self.details),
            "remedy": self.remedy,
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may read. Built once per command; checks never reach around it."""

    machine: Machine
    visible: Visible
    config: LaunchConfig
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    cwd: Path = field(default_factory=Path.cwd)
    checkpoint: CheckpointScan | None = None  # the --ckpt-dir folder's structure, when one is given
    terms: EstimateTerms = DEFAULT_TERMS  # the memory model's estimated terms (default or calibrated)
    nccl: NcclOutcome | None = None  # after check --deep
    nccl_backend: str | None = None
    nccl_without_p2p: NcclOutcome | None = None  # the same test with NCCL_P2P_DISABLE=1, where P2P is off
    deep: bool = False  # check --deep: checks may run what they would otherwise only read about
    probes: HostProbes = field(default_factory=HostProbes)  # ports, disk, interfaces: probed once, when asked
    python: Interpreter | None = None  # --python: the environment the sw.* checks read; None: this interpreter's

    @property
    def launch_dir(self) -> Path:
        """Where the runner starts Live Avatar (its checkout), so where relative paths resolve."""
        return self.cwd / self.config.liveavatar if self.config.liveavatar else self.cwd

    @property
    def prediction(self):
        """Every rank GPU's predicted peak (avatardoctor.predict.Prediction)."""
        from avatardoctor.predict import predict

        return predict(self.config, self.rank_gpus, self.components, self.terms)

    @property
    def components(self) -> ComponentSummary:
        """Component sizes from the checkpoint's own headers when it verified, else the reference."""
        summary = self.checkpoint.summary if self.checkpoint else None
        return summary or reference_summary()

    @property
    def handoffs(self) -> list[tuple[int, Gpu, Gpu, GpuPair | None]]:
        """(sending rank, its GPU, the next rank's GPU, their link) for every hand-off of the latents: in
        TPP each DiT rank runs one denoising step and sends the latents on with dist.send / dist.recv."""
        gpus = self.rank_gpus
        return [
            (r, gpus[r], gpus[r + 1], self.machine.pair(gpus[r].index, gpus[r + 1].index)) for r in range(len(gpus) - 1)
        ]

    @property
    def p2p_missing(self) -> bool:
        """Some hand-off between the ranks' GPUs has no peer-to-peer path (it goes through host memory)."""
        return any(not p2p_ok(pair) for *_, pair in self.handoffs)

    @property
    def rank_gpus(self) -> tuple[Gpu, ...]:
        """The GPUs that ranks 0..nproc-1 will use (fewer than nproc when too few are visible)."""
        return self.visible.gpus[: self.config.nproc]


@dataclass(frozen=True)
class Check:
    id: str
    group: str
    fn: Callable[[CheckContext], Outcome]

    def run(self, ctx: CheckContext) -> CheckResult:
        try:
            out = self.fn(ctx)
        except Exception as err:  # a bug in a check must not hide the other checks' answers
            where = traceback.extract_tb(err.__traceback__)[-1]
            out = failed(
                f"this check crashed: {type(err).__name__}: {err}",
                details=[f"at {Path(where.filename).name}:{where.lineno} in {where.name}"],
                remedy="this is an avatardoctor bug; please report it with `avatardoctor check --json` output",
                data={"crashed": True},
            )
        return CheckResult(self.id, self.group, out.status, out.summary, out.details, out.remedy, out.data)


def check(check_id: str, group: str) -> Callable[[Callable[[CheckContext], Outcome]], Check]:
    def wrap(fn: Callable[[CheckContext], Outcome]) -> Check:
        return Check(check_id, group, fn)

    return wrap


def needs_gpu_facts(ctx: CheckContext) -> Outcome | None:
    """The skip that GPU checks return when there are no GPU facts (gpu.driver says why)."""
    if ctx.machine.nvml_error is not None:
        return skipped("no GPU facts: NVML is not available (see gpu.driver)")
    if not ctx.machine.gpus:
        return skipped("no GPUs found (see gpu.inventory)")
    if not ctx.visible.gpus:
        return skipped("no GPUs are visible to CUDA (see gpu.visible)")
    return None
