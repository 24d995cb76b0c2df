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

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from avatardoctor import __version__
from avatardoctor.advice import PLANNED_FRAMES, PLANNED_SIZES, fp8_possible, hardware_advice, refused
from avatardoctor.checks.base import CheckContext
from avatardoctor.ckpt.components import ComponentSummary
from avatardoctor.config import LaunchConfig, resolve_config
from avatardoctor.estimates import EstimateTerms
from avatardoctor.machine.model import Gpu, p2p_ok
from avatardoctor.planfile import PLAN_SCHEMA, PlanFile, PlannedGpu, PlannedMachine
from avatardoctor.predict import VERDICT_WORDS, Prediction, predict
from avatardoctor.units import GIB
from avatardoctor.upstream import (
    ENTRY_SCRIPT,
    FP8_MIN_CC,
    LORA_HUB_ID,
    LORA_LOCAL,
    TRAINING_CONFIG,
    clips_for_audio,
)


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


# The configuration flags a user may set that the planner otherwise chooses: set, they are constraints.
CONSTRAINTS = {
    "size": "--size",
    "infer_frames": "--infer-frames",
    "fp8": "--fp8",
    "t5_cpu": "--t5-cpu",
    "offload_kv_cache": "--offload-kv-cache",
    "offload_model": "--offload-model",
    "master_port": "--master-port",
    "sample_steps": "--sample-steps",
    "sample_solver": "--sample-solver",
    "num_gpus_dit": "--num-gpus-dit",
    "ulysses_size": "--ulysses-size",
    "enable_online_decode": "--enable-online-decode",
    "t5_fsdp": "--t5-fsdp",
    "compile": "--compile",
}
KEPT_INPUTS = ("liveavatar", "ckpt_dir", "image", "audio", "audio_seconds", "prompt", "num_clip", "save_file", "gradio")


def flag_text(field: str, value) -> str:
    """A constraint as the user typed it: `--size 384*256`, `--no-fp8`, `--t5-cpu`."""
    flag = CONSTRAINTS.get(field, "--mode")
    if isinstance(value, bool) and field != "offload_model":
        return flag if value else flag.replace("--", "--no-", 1)
    return f"{flag} {value}"


def constraints(base: LaunchConfig) -> dict[str, Any]:
    """What the user set: the planner keeps it and changes only the rest."""
    fixed = {k: getattr(base, k) for k in CONSTRAINTS if k in base.explicit}
    if base.mode_reason == "--mode":
        fixed["mode"] = base.mode
    return fixed


def _without(base: LaunchConfig, field: str) -> LaunchConfig:
    """The configuration as if the user had not set this one flag."""
    if field == "mode":
        return replace(base, mode_reason="planner")
    return replace(base, explicit=base.explicit - {field})


def candidates(base: LaunchConfig, gpus: tuple[Gpu, ...]):
    """Configurations upstream accepts, best first, within the user's constraints."""
    fixed = constraints(base)
    modes = [fixed["mode"]] if "mode" in fixed else ["tpp", "single"] if len(gpus) >= 5 else ["single"]
    for mode in modes:
        defaults = resolve_config(len(gpus), mode)
        keep = {k: getattr(base, k) for k in KEPT_INPUTS} | {"lora_path": lora_for_launch(base)}
        flags = {k: v for k, v in fixed.items() if k != "mode"}
        start = replace(
            defaults,
            **{k: v for k, v in keep.items() if v is not None},
            **flags,
            explicit=base.explicit,
            mode_reason="planner",
        )
        # Every rank converts its DiT, the VAE rank too: fp8 only where every GPU of the launch has it.
        fp8 = fp8_possible(gpus[: start.nproc]) and bool(fixed.get("fp8", True))
        steps: list[dict] = [{}]
        if mode == "single" and "offload_kv_cache" not in fixed:
            steps.append({"offload_kv_cache": True})
        if "t5_cpu" not in fixed:
            steps.append({**steps[-1], "t5_cpu": True})
        sizes = [fixed["size"]] if "size" in fixed else PLANNED_SIZES
        frames = [fixed["infer_frames"]] if "infer_frames" in fixed else PLANNED_FRAMES
        for size in sizes:
            for count in frames:
                for extra in steps:
                    cfg = replace(start, **{"size": size, "infer_frames": count, "fp8": fp8, **extra})
                    if not refused(cfg):
                        yield cfg


def _added(chosen: LaunchConfig, gpus, summary, terms) -> list[str]:
    """A reason line for each fallback the planner added, with the shortfall it fixes."""
    lines = []
    for field in ("offload_kv_cache", "t5_cpu"):
        if getattr(chosen, field) and field not in chosen.explicit:
            off: dict[str, Any] = {field: False}  # LaunchConfig's keyword arguments
            without = predict(replace(chosen, **off), gpus, summary, terms)
            g = without.binding
            short = (
                f": GPU {g.index} short by {-g.headroom_bytes / GIB:.1f} GiB without it"
                if g and g.headroom_bytes < 0
                else ""
            )
            lines.append(f"added {CONSTRAINTS[field]}{short}")
    return lines


def make_plan(
    base: LaunchConfig,
    gpus: tuple[Gpu, ...],
    summary: ComponentSummary,
    terms: EstimateTerms,
    skip: frozenset[str] = frozenset(),
    explain: bool = True,
) -> Plan:
    """The first candidate that fits; `skip` names configurations (describe()) already tried and failed."""
    fixed = constraints(base)
    too_old = [g for g in gpus if g.compute_capability < FP8_MIN_CC]
    reasons = [f"kept your {flag_text(k, v)}" for k, v in fixed.items() if not (k == "fp8" and v and too_old)]
    if base.fp8 and "fp8" in base.explicit and too_old:
        names = ", ".join(f"GPU {g.index} (cc {g.cc})" for g in too_old)
        reasons.append(
            f"your --fp8 cannot run on {names}: FP8 needs compute capability 8.9 on every rank; planning in bf16"
        )
    if lora_for_launch(base) != base.lora_path:
        reasons.append(f"passing the README's local LoRA file {LORA_LOCAL}: upstream would download the hub id again")
    tried = 0
    for cfg in candidates(base, gpus):
        tried += 1
        if describe(cfg) in skip:
            reasons.append(f"skipped {describe(cfg)}: it ran out of memory in an earlier attempt")
            continue
        p = predict(cfg, gpus, summary, terms)
        reasons.append(f"tried {describe(cfg)}: {outcome(p)}")
        if p.verdict == "fits":
            reasons += _added(cfg, gpus, summary, terms)
            reasons.append(f"chose {describe(cfg)}")
            return Plan(cfg, p, tuple(reasons))
    if not tried and fixed:
        refusing = refused(replace(base, mode_reason="planner"))
        reasons.append(f"upstream refuses what your flags ask ({', '.join(refusing) or 'see la.asserts'})")
    if explain:  # one level only: each flag dropped alone, not every combination of them
        reasons += _blocking(base, fixed, gpus, summary, terms, skip)
    reasons.append("nothing upstream accepts fits this machine" + (" within your flags" if fixed else ""))
    return Plan(None, None, tuple(reasons))


def _blocking(base, fixed, gpus, summary, terms, skip) -> list[str]:
    """Which of the user's flags stands in the way: what would fit without each one."""
    lines = []
    for field, value in fixed.items():
        plan = make_plan(_without(base, field), gpus, summary, terms, skip, explain=False)
        if plan.chosen:
            lines.append(f"your {flag_text(field, value)} blocks it: without it, {plan.reasons[-1]}")
    return lines


HEARTBEAT_S = "1800"  # torch.compile's first pass and a long load must not trip the watchdog (default 480 s)


def entry_argv(config: LaunchConfig) -> list[str]:
    """The entry's full argument list, as the upstream scripts pass it (a list: never a shell string)."""
    argv = [
        "--ulysses_size",
        str(config.ulysses_size),
        "--task",
        "s2v-14B",
        "--size",
        config.size,
        "--base_seed",
        "420",
        "--training_config",
        TRAINING_CONFIG,
        "--num_clip",
        str(config.num_clip),
        "--offload_model",
        str(config.offload_model),
        "--convert_model_dtype",
        "--infer_frames",
        str(config.infer_frames),
        "--sample_steps",
        str(config.sample_steps),
        "--sample_guide_scale",
        "0",
        "--sample_solver",
        config.sample_solver,
        "--num_gpus_dit",
        str(config.num_gpus_dit),
        "--ckpt_dir",
        config.ckpt_dir or "ckpt/Wan2.2-S2V-14B/",
    ]
    if config.lora_path:
        argv += ["--load_lora", "--lora_path_dmd", config.lora_path]
    switches = {
        "--single_gpu": config.nproc == 1,
        "--enable_vae_parallel": config.enable_vae_parallel and config.nproc > 1,
        "--fp8": config.fp8,
        "--dit_fsdp": config.dit_fsdp,
        "--t5_fsdp": config.t5_fsdp,
        "--t5_cpu": config.t5_cpu,
        "--offload_kv_cache": config.offload_kv_cache,
        "--enable_online_decode": config.enable_online_decode,
    }
    argv += [flag for flag, on in switches.items() if on]
    # The launch starts in the Live Avatar checkout: input paths are made absolute so they still
    # name the files the user meant.
    inputs = {"--image": config.image, "--audio": config.audio}
    for flag, value in (("--save_file", config.save_file), *inputs.items(), ("--prompt", config.prompt)):
        if value is not None:
            argv += [flag, str(Path(value).absolute()) if flag in inputs else str(value)]
    return argv


def plan_document(plan: Plan, ctx: CheckContext) -> dict:
    """What `plan` prints and writes: the plan file, or, when nothing fits, the reasons and the hardware;
    with what the input checks (--image, --audio, --prompt) say of the inputs the plan will run on."""
    from avatardoctor.checks import audio, inputs, run_checks

    if plan.chosen is None:
        options = hardware_advice(replace(ctx.config, mode_reason="planner"), ctx.components, ctx.terms)
        doc: dict[str, Any] = {
            "schema": PLAN_SCHEMA,
            "avatardoctor_version": __version__,
            "reasons": list(plan.reasons),
            "hardware_advice": [o.spec for o in options],
        }
    else:
        doc = plan_file(plan, ctx).to_dict()
    checked = run_checks(ctx, inputs.CHECKS + audio.CHECKS).results
    doc["input_checks"] = [r.to_dict() for r in checked if r.status.value != "skip"]
    return doc


def plan_file(plan: Plan, ctx: CheckContext) -> PlanFile:
    """The plan file for the chosen configuration: everything a launch needs, and why it was chosen."""
    cfg = plan.chosen
    assert cfg is not None and plan.prediction is not None, "plan_file needs a chosen configuration"
    gpus = ctx.visible.gpus[: cfg.nproc]
    port = ctx.probes.port(cfg.master_port).usable
    env = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(g.index) for g in gpus),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # so CUDA numbers GPUs as NVML and this plan do
        "NCCL_DEBUG": "WARN",
        "NCCL_DEBUG_SUBSYS": "OFF",
        "ENABLE_COMPILE": "true" if cfg.compile else "false",
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": HEARTBEAT_S,
    }
    pairs = [ctx.machine.pair(a.index, b.index) for a, b in zip(gpus, gpus[1:])]
    if any("GeForce" in g.name for g in gpus) and any(p is not None and p2p_ok(p) and not p.nvlinks for p in pairs):
        env["NCCL_P2P_DISABLE"] = "1"  # GeForce P2P reported by a patched or old driver: known hangs (topo.p2p)
    checkout = str(Path(os.path.normpath(ctx.cwd / cfg.liveavatar))) if cfg.liveavatar else None
    return PlanFile(
        mode=cfg.mode,
        nproc=cfg.nproc,
        argv=tuple(entry_argv(cfg)),
        master_port=port or cfg.master_port,
        env=env,
        entry=ENTRY_SCRIPT,
        reasons=plan.reasons,
        prediction=plan.prediction.to_dict(),
        config=cfg.to_dict(),
        checkout=checkout,  # where `run --plan` starts the launch
        interpreter=sys.executable,
        machine=machine_identity(ctx.machine, gpus),
        inputs_note=inputs_note(cfg, plan.prediction),
    )


def machine_identity(machine, gpus) -> PlannedMachine:
    """What the plan was made for: `run --plan` refuses another box (a catalogue or recorded one is never here)."""
    return PlannedMachine(machine.source, machine.hostname, tuple(PlannedGpu(g.index, g.name, g.uuid) for g in gpus))


def inputs_note(cfg: LaunchConfig, prediction: Prediction | None) -> str | None:
    """What upstream does about inputs the plan does not name: its bundled examples, and the clip count."""
    missing = [
        flag
        for flag, value in (("--image", cfg.image), ("--audio", cfg.audio), ("--prompt", cfg.prompt))
        if value is None
    ]
    seconds = prediction.inputs.audio_seconds if prediction else None
    clips = f"{cfg.num_clip:,} clips (--num-clip)"
    if seconds is not None:
        clips = f"{min(cfg.num_clip, clips_for_audio(seconds, cfg.infer_frames)):,} clips ({seconds:.1f} s of audio caps --num-clip {cfg.num_clip:,})"
    if not missing:
        return f"upstream will make {clips}"
    examples = {"--image": "examples/boy.jpg", "--audio": "examples/boy.wav", "--prompt": "its example prompt"}
    used = ", ".join(f"{examples[f]} for {f}" for f in missing)
    return f"no {'/'.join(missing)}: upstream falls back to {used} (entry:27-60); " + (
        f"up to {clips}, capped by that audio's length" if cfg.audio is None else f"it will make {clips}"
    )
