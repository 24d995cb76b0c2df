"""What would make a configuration fit: the smallest one-flag change on these GPUs, and the cheapest
catalogue hardware on which it fits as it is. Both come from the same prediction the fit check and
the planner use (docs/memory-model.md, "Planning"); fit.peak gives them as its remedy and the
planner builds its search on them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from avatardoctor.ckpt.components import ComponentSummary
from avatardoctor.config import LaunchConfig
from avatardoctor.estimates import EstimateTerms
from avatardoctor.machine.catalogue import CARDS, catalogue_machine
from avatardoctor.machine.model import Gpu
from avatardoctor.predict import Prediction, predict, reference_hw
from avatardoctor.rules import violations
from avatardoctor.upstream import FP8_MIN_CC, area

PLANNED_SIZES = ("720*400", "704*384", "688*368", "384*256")  # the sizes upstream and the seeds run, largest first
PLANNED_FRAMES = (48, 36, 24, 12)  # multiples of 12: whole 3-latent-frame blocks
PRICE_ORDER = (
    "3090",
    "4090",
    "5090",
    "A6000",
    "L40S",
    "A100-40GB",
    "A100-80GB",
    "H100",
    "H800",
    "H200",
)  # roughly, per GPU


def refused(config: LaunchConfig) -> list[str]:
    """Upstream's rules that stop this configuration (la.asserts'), for its image."""
    return [v.rule.id for v in violations(config, reference_hw(config)[0]) if v.fatal]


def fp8_possible(gpus: tuple[Gpu, ...]) -> bool:
    return bool(gpus) and all(g.compute_capability >= FP8_MIN_CC for g in gpus)


@dataclass(frozen=True)
class Change:
    flags: str  # the command-line change, e.g. "--fp8"
    config: LaunchConfig
    prediction: Prediction


def _single_changes(config: LaunchConfig, gpus: tuple[Gpu, ...]) -> list[tuple[str, dict]]:
    """One-flag changes, least quality lost first."""
    changes: list[tuple[str, dict]] = []
    if not config.t5_cpu:
        changes.append(("--t5-cpu", {"t5_cpu": True}))
    if not config.fp8 and fp8_possible(gpus[: config.nproc]):
        changes.append(("--fp8", {"fp8": True}))
    if config.mode == "single" and not config.offload_kv_cache:
        changes.append(("--offload-kv-cache", {"offload_kv_cache": True}))
    if not config.offload_model:
        changes.append(("--offload-model True", {"offload_model": True}))
    changes += [(f"--size {s}", {"size": s}) for s in PLANNED_SIZES if area(s) < area(config.size)]
    changes += [(f"--infer-frames {f}", {"infer_frames": f}) for f in PLANNED_FRAMES if f < config.infer_frames]
    return changes


def smallest_change(
    config: LaunchConfig, gpus: tuple[Gpu, ...], summary: ComponentSummary, terms: EstimateTerms
) -> Change | None:
    """The first one-flag change (least quality lost first) that makes every GPU fit."""
    for flags, change in _single_changes(config, gpus):
        changed = replace(config, **change)
        if refused(changed):
            continue
        p = predict(changed, gpus, summary, terms)
        if p.verdict == "fits":
            return Change(flags, changed, p)
    return None


@dataclass(frozen=True)
class HardwareOption:
    spec: str  # "5xL40S"
    prediction: Prediction
    fp8_dropped: bool  # the card cannot run --fp8: predicted in bf16


def hardware_advice(
    config: LaunchConfig, summary: ComponentSummary, terms: EstimateTerms, count: int = 3
) -> list[HardwareOption]:
    """The cheapest catalogue machines on which this configuration fits, cheapest first."""
    options = []
    for key in PRICE_ORDER:
        card = next(c for c in CARDS if c.key == key)
        if config.nproc > card.max_count:
            continue
        machine = catalogue_machine(f"{config.nproc}x{key}")
        cfg = config
        dropped = config.fp8 and not fp8_possible(machine.gpus)
        if dropped:
            cfg = replace(config, fp8=False)
        p = predict(cfg, machine.gpus, summary, terms)
        if p.verdict == "fits":
            options.append(HardwareOption(f"{config.nproc}x{key}", p, dropped))
            if len(options) == count:
                break
    return options
