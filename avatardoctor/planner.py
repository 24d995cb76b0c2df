"""Choosing a configuration that fits: the smallest change, the hardware that would do, and the
best configuration upstream accepts on this machine. Deterministic, and every try is explained.

Preference order (docs/memory-model.md, "Planning"): upstream TPP over single GPU when five GPUs are
there; then the larger area; then more frames per clip; then the scripts' own precision (--fp8 where
every rank's GPU supports it, unless the user said --no-fp8), falling back in turn to offloading the KV
caches (single GPU) and to T5 on the CPU. Sizes above 720*400 overflow upstream's conditioning cache
for most images (upstream.cond_tokens): the search does not propose them; ask for one with --size and
la.asserts says whether this image allows it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from avatardoctor.components import ComponentSummary
from avatardoctor.config import LaunchConfig, resolve_config
from avatardoctor.estimates import EstimateTerms
from avatardoctor.machine.catalogue import CARDS, catalogue_machine
from avatardoctor.machine.model import Gpu
from avatardoctor.predict import VERDICT_WORDS, Prediction, predict, reference_hw
from avatardoctor.units import GIB
from avatardoctor.upstream import ENTRY_SCRIPT, LORA_HUB_ID, LORA_LOCAL, TRAINING_CONFIG, area, violations

PLANNED_SIZES = ("720*400", "704*384", "688*368", "384*256")  # the sizes upstream and the seeds run, largest first
PLANNED_FRAMES = (48, 36, 24, 12)  # multiples of 12: whole 3-latent-frame blocks
FP8_MIN_CC = (8, 9)
PRICE_ORDER = ("3090", "4090", "5090", "A6000", "L40S", "A100-40GB", "A100-80GB", "H100", "H800", "H200")  # roughly, per GPU


def refused(config: LaunchConfig) -> list[str]:
    """Upstream's rules that stop this configuration (la.asserts'), for its image."""
    return [v.rule.id for v in violations(config, reference_hw(config)[0]) if v.fatal]


def fp8_possible(gpus: tuple[Gpu, ...]) -> bool:
    return bool(gpus) and all(g.compute_capability >= FP8_MIN_CC for g in gpus)


def describe(config: LaunchConfig) -> str:
    """A configuration in the user's flags, for the step-by-step explanation."""
    parts = [config.mode, config.size, f"{config.infer_frames} frames", "fp8" if config.fp8 else "bf16"]
    parts += [flag for flag, on in (("offload KV cache", config.offload_kv_cache), ("T5 on CPU", config.t5_cpu)) if on]
    return " ".join(parts[:2]) + ", " + ", ".join(parts[2:])


def outcome(prediction: Prediction) -> str:
    g = prediction.binding
    if prediction.verdict == "fits" and g:
        return f"FITS (least headroom {g.headroom_bytes / GIB:.2f} GiB on GPU {g.index})"
    return f"{VERDICT_WORDS[prediction.verdict]}: {prediction.explanation()}"


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


def smallest_change(config: LaunchConfig, gpus: tuple[Gpu, ...], summary: ComponentSummary, terms: EstimateTerms) -> Change | None:
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


def hardware_advice(config: LaunchConfig, summary: ComponentSummary, terms: EstimateTerms, count: int = 3) -> list[HardwareOption]:
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


@dataclass(frozen=True)
class Plan:
    chosen: LaunchConfig | None
    prediction: Prediction | None
    reasons: tuple[str, ...]  # every configuration tried, in order, and why it was or was not taken


def lora_for_launch(base: LaunchConfig) -> str | None:
    """The README's local LoRA file when it is there and the user did not name one: upstream would
    download the hub id again into its own cache rather than read it."""
    local = Path(base.liveavatar or ".") / LORA_LOCAL
    if base.lora_path == LORA_HUB_ID and "lora_path" not in base.explicit and local.is_file():
        return LORA_LOCAL
    return base.lora_path


def candidates(base: LaunchConfig, gpus: tuple[Gpu, ...]):
    """Configurations upstream accepts, best first."""
    modes = ["tpp", "single"] if len(gpus) >= 5 else ["single"]
    for mode in modes:
        defaults = resolve_config(len(gpus), mode)
        keep = {k: getattr(base, k) for k in ("liveavatar", "ckpt_dir", "image", "audio", "prompt", "num_clip", "save_file")}
        keep |= {"lora_path": lora_for_launch(base), "explicit": base.explicit}
        start = replace(defaults, **{k: v for k, v in keep.items() if v is not None}, mode_reason="planner")
        # Every rank converts its DiT, the VAE rank too: fp8 only where every GPU of the launch has it.
        fp8 = fp8_possible(gpus[: start.nproc]) and (base.fp8 or "fp8" not in base.explicit)
        fallbacks = [{"fp8": fp8}]
        if mode == "single":
            fallbacks += [{"fp8": fp8, "offload_kv_cache": True}]
        fallbacks += [{**fallbacks[-1], "t5_cpu": True}]
        for size in PLANNED_SIZES:
            for frames in PLANNED_FRAMES:
                for extra in fallbacks:
                    cfg = replace(start, **{"size": size, "infer_frames": frames, **extra})
                    if not refused(cfg):
                        yield cfg


def make_plan(
    base: LaunchConfig, gpus: tuple[Gpu, ...], summary: ComponentSummary, terms: EstimateTerms, skip: frozenset[str] = frozenset()
) -> Plan:
    """The first candidate that fits; `skip` names configurations (describe()) already tried and failed."""
    reasons = []
    too_old = [g for g in gpus if g.compute_capability < FP8_MIN_CC]
    if base.fp8 and "fp8" in base.explicit and too_old:
        names = ", ".join(f"GPU {g.index} (cc {g.cc})" for g in too_old)
        reasons.append(f"your --fp8 cannot run on {names}: FP8 needs compute capability 8.9 on every rank; planning in bf16")
    if lora_for_launch(base) != base.lora_path:
        reasons.append(f"passing the README's local LoRA file {LORA_LOCAL}: upstream would download the hub id again")
    for cfg in candidates(base, gpus):
        if describe(cfg) in skip:
            reasons.append(f"skipped {describe(cfg)}: it ran out of memory in an earlier attempt")
            continue
        p = predict(cfg, gpus, summary, terms)
        reasons.append(f"tried {describe(cfg)}: {outcome(p)}")
        if p.verdict == "fits":
            reasons.append(f"chose {describe(cfg)}")
            return Plan(cfg, p, tuple(reasons))
    reasons.append("nothing upstream accepts fits this machine")
    return Plan(None, None, tuple(reasons))


PLAN_SCHEMA = "avatardoctor.plan/1"
HEARTBEAT_S = "1800"  # torch.compile's first pass and a long load must not trip the watchdog (default 480 s)


def entry_argv(config: LaunchConfig) -> list[str]:
    """The entry's full argument list, as the upstream scripts pass it (a list: never a shell string)."""
    argv = [
        "--ulysses_size", str(config.ulysses_size), "--task", "s2v-14B", "--size", config.size,
        "--base_seed", "420", "--training_config", TRAINING_CONFIG, "--num_clip", str(config.num_clip),
        "--offload_model", str(config.offload_model), "--convert_model_dtype",
        "--infer_frames", str(config.infer_frames), "--sample_steps", str(config.sample_steps),
        "--sample_guide_scale", "0", "--sample_solver", config.sample_solver,
        "--num_gpus_dit", str(config.num_gpus_dit), "--ckpt_dir", config.ckpt_dir or "ckpt/Wan2.2-S2V-14B/",
    ]  # fmt: skip
    if config.lora_path:
        argv += ["--load_lora", "--lora_path_dmd", config.lora_path]
    switches = {
        "--single_gpu": config.nproc == 1, "--enable_vae_parallel": config.enable_vae_parallel and config.nproc > 1,
        "--fp8": config.fp8, "--dit_fsdp": config.dit_fsdp, "--t5_fsdp": config.t5_fsdp, "--t5_cpu": config.t5_cpu,
        "--offload_kv_cache": config.offload_kv_cache, "--enable_online_decode": config.enable_online_decode,
    }  # fmt: skip
    argv += [flag for flag, on in switches.items() if on]
    # The launch starts in the Live Avatar checkout: input paths are made absolute so they still
    # name the files the user meant.
    inputs = {"--image": config.image, "--audio": config.audio}
    for flag, value in (("--save_file", config.save_file), *inputs.items(), ("--prompt", config.prompt)):
        if value is not None:
            argv += [flag, str(Path(value).absolute()) if flag in inputs else str(value)]
    return argv


def plan_document(plan: Plan, ctx) -> dict:
    """The plan file: everything a launch needs, and why it was chosen."""
    from avatardoctor.checks.ports import bind_error, free_port_near
    from avatardoctor.checks.topology import p2p_ok

    doc: dict = {"schema": PLAN_SCHEMA, "reasons": list(plan.reasons)}
    if plan.chosen is None:
        options = hardware_advice(replace(ctx.config, mode_reason="planner"), ctx.components, ctx.terms)
        doc["hardware_advice"] = [o.spec for o in options]
        return doc
    cfg = plan.chosen
    gpus = ctx.visible.gpus[: cfg.nproc]
    port = cfg.master_port if bind_error(cfg.master_port) is None else free_port_near(cfg.master_port)
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(g.index) for g in gpus),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # so CUDA numbers GPUs as NVML and this plan do
        "NCCL_DEBUG": "WARN", "NCCL_DEBUG_SUBSYS": "OFF", "ENABLE_COMPILE": "true" if cfg.compile else "false",
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": HEARTBEAT_S,
    }  # fmt: skip
    pairs = [ctx.machine.pair(a.index, b.index) for a, b in zip(gpus, gpus[1:])]
    if any("GeForce" in g.name for g in gpus) and any(p2p_ok(p) and not p.nvlinks for p in pairs):
        env["NCCL_P2P_DISABLE"] = "1"  # GeForce P2P reported by a patched or old driver: known hangs (topo.p2p)
    config = cfg.to_dict()
    doc.update(
        mode=cfg.mode,
        entry=ENTRY_SCRIPT,
        nproc=cfg.nproc,
        master_port=port,
        env=env,
        argv=entry_argv(cfg),
        prediction=plan.prediction.to_dict(),
        config=config,
    )
    return doc
