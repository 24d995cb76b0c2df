"""Every check, in the order the doctor prints them, and the report they make together.

One module per area; each exposes CHECKS, an ordered tuple. The order here is the order of the
output and of the JSON `checks` list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avatardoctor import __version__
from avatardoctor.checks import (
    audio,
    ckpt,
    fit,
    gpu,
    health,
    host,
    inputs,
    live,
    liveavatar,
    nccl,
    ports,
    software,
    topology,
)
from avatardoctor.checks.base import Check, CheckContext, CheckResult, Status
from avatardoctor.config import LaunchConfig
from avatardoctor.machine.model import Machine

CHECK_SCHEMA = "avatardoctor.check/1"

ALL_CHECKS: tuple[Check, ...] = (
    *gpu.CHECKS,
    *health.CHECKS,
    *topology.CHECKS,
    *nccl.CHECKS,
    *live.CHECKS,
    *ports.CHECKS,
    *host.CHECKS,
    *software.CHECKS,
    *liveavatar.CHECKS,
    *ckpt.CHECKS,
    *inputs.CHECKS,
    *audio.CHECKS,
    *fit.CHECKS,
)

# The checks that read the host avatardoctor runs on whatever --machine names: its Python environment,
# its master port, its disk. A what-if (--machine, --demo) asks about the named box's hardware; these
# say what this host would lack to run it here, and do not decide the answer (docs/exit-codes.md).
THIS_HOST_CHECKS = frozenset(c.id for c in (*software.CHECKS, *live.CHECKS, ports.check_master_port, host.check_disk))


@dataclass(frozen=True)
class CheckReport:
    """Run once, render many: the human and JSON renderers read this and compute nothing."""

    results: tuple[CheckResult, ...]
    machine: Machine
    config: LaunchConfig

    @property
    def what_if(self) -> bool:
        """The facts are a catalogue or recorded box, not this machine's (--machine, --demo)."""
        return not self.machine.source.startswith("nvml")

    def judged(self) -> tuple[CheckResult, ...]:
        """The checks that answer the question asked: all of them here; on a what-if, those about the named box."""
        return tuple(r for r in self.results if not (self.what_if and r.id in THIS_HOST_CHECKS))

    def this_host_failures(self) -> tuple[CheckResult, ...]:
        """On a what-if: what this host lacks to run the named box's configuration here (not the answer)."""
        judged = set(map(id, self.judged()))
        return tuple(r for r in self.results if r.status is Status.FAIL and id(r) not in judged)

    @property
    def ready(self) -> bool:
        return not any(r.status is Status.FAIL for r in self.judged())

    @property
    def crashed(self) -> tuple[str, ...]:
        """The checks that crashed (a bug in avatardoctor: their failure says nothing about the machine)."""
        return tuple(r.id for r in self.results if r.data.get("crashed"))

    @property
    def verdict(self) -> str:
        return "ready" if self.ready else "not-ready"

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    def to_dict(self) -> dict[str, Any]:
        config = self.config.to_dict()
        return {
            "schema": CHECK_SCHEMA,
            "avatardoctor_version": __version__,
            "verdict": self.verdict,
            "counts": {s.value: self.count(s) for s in Status},
            "this_host_failing": [r.id for r in self.this_host_failures()],
            "config": config,
            "machine": self.machine.to_dict(),
            "checks": [r.to_dict() for r in self.results],
            "prediction": next(
                (r.data["prediction"] for r in self.results if r.id == "fit.peak" and "prediction" in r.data), None
            ),
        }


def run_checks(ctx: CheckContext, checks: tuple[Check, ...] = ALL_CHECKS) -> CheckReport:
    return CheckReport(tuple(c.run(ctx) for c in checks), ctx.machine, ctx.config)
