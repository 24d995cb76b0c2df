"""Live Avatar itself: the checkout, the launch's hard start-up asserts, and the LoRA file.

Each upstream assert fires only after torchrun has started every rank, and some only after minutes of
weight loading; all of them can be decided here from the configuration in a millisecond. The facts
(texts, paths, rules) are upstream's, as docs/liveavatar.md records them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.ckpt.safetensors_file import CkptFileError, read_header
from avatardoctor.config import LORA_HUB_ID, MODES, MULTI_PROCESS_MODES, SIZES, LaunchConfig, resolve_config
from avatardoctor.units import gib

GROUP = "Live Avatar"
UPSTREAM_REPO = "https://github.com/Alibaba-Quark/LiveAvatar"

# ---------------------------------------------------------------------------------------- la.checkout

# Opened by the launch: without them torchrun starts and every rank dies at once.
REQUIRED_FILES = (
    "minimal_inference/s2v_streaming_interact.py",
    "minimal_inference/gradio_app.py",
    "liveavatar/configs/s2v_causal_sft.yaml",
)
# The upstream launch scripts: avatardoctor launches torchrun itself, users read these for the flags.
REFERENCE_SCRIPTS = ("infinite_inference_multi_gpu.sh", "infinite_inference_single_gpu.sh")
SEED_SCRIPT = "run_4gpu_tpp.sh"  # named by the seed articles, absent upstream


@check("la.checkout", GROUP)
def checkout(ctx: CheckContext) -> Outcome:
    given = ctx.config.liveavatar
    if given is None:
        return skipped("pass --liveavatar DIR to check the Live Avatar checkout")
    given = Path(given)
    root = Path(os.path.normpath(ctx.cwd / given))  # an absolute `given` replaces cwd
    where = [f"checkout: {root}" + ("" if given.is_absolute() else f" (--liveavatar {given} relative to {ctx.cwd})")]
    data = {"path": str(root)}
    clone = f"pass --liveavatar the root of a clone of {UPSTREAM_REPO} (the directory holding minimal_inference/)"
    # os.path here and below: unlike Path's methods it answers False, not PermissionError, behind an unreadable dir
    if not os.path.exists(root):
        return failed(f"Live Avatar checkout not found: {root}", where, clone, data)
    if not os.path.isdir(root):
        return failed(f"--liveavatar {root} is a file, not the Live Avatar checkout directory", where, clone, data)
    if not os.access(root, os.R_OK | os.X_OK):
        return failed(
            f"cannot read the Live Avatar checkout {root} (permission denied)",
            where,
            f"chmod -R u+rX {root}, or run avatardoctor as the user who will launch Live Avatar",
            data,
        )
    missing = [p for p in REQUIRED_FILES if not os.path.isfile(root / p)]
    missing_scripts = [p for p in REFERENCE_SCRIPTS if not os.path.isfile(root / p)]
    data |= {"missing": missing, "missing_scripts": missing_scripts}
    details = where + [f"missing: {p}" for p in missing + missing_scripts]
    if os.path.exists(root / SEED_SCRIPT):
        details.append(
            f"{SEED_SCRIPT} is not an upstream script (the seed articles' 4-GPU TPP); upstream refuses "
            "fewer than 5 GPUs in TPP (see la.asserts)"
        )
    if missing:
        return failed(
            f"the Live Avatar checkout {root} lacks {len(missing)} file{'s' if len(missing) > 1 else ''} the launch opens: {', '.join(missing)}",
            details,
            clone,
            data,
        )
    if missing_scripts:
        return warned(
            f"the Live Avatar checkout {root} lacks the upstream launch script(s) {', '.join(missing_scripts)}",
            details + ["avatardoctor launches torchrun itself; the scripts are only the reference for the flags"],
            f"restore them from {UPSTREAM_REPO} (in a clone: git -C {root} checkout -- {' '.join(missing_scripts)})",
            data,
        )
    return passed(f"Live Avatar checkout at {root} has the entry scripts and training config", details, data)


# ----------------------------------------------------------------------------------------- la.asserts


@dataclass(frozen=True)
class AssertRule:
    """One upstream start-up assert, decided from the configuration alone."""

    id: str
    modes: tuple[str, ...]
    broken: Callable[[LaunchConfig], bool]
    problem: Callable[[LaunchConfig], str]  # the offending setting, in the user's terms
    prevents: str  # the upstream text (or behaviour) that would stop the run
    remedy: Callable[[LaunchConfig], str]
    gpu_layout: bool = False  # about the TPP GPU count: the seed 4-GPU advice replaces its remedy


def _four_dit_ranks(cfg: LaunchConfig) -> str:
    """The flags that give upstream's only TPP layout: 4 DiT ranks, each running one of the 4 steps."""
    flags = {"--num-gpus-dit 4": cfg.num_gpus_dit == 4, "--sample-steps 4": cfg.sample_steps == 4}
    return " ".join(flag for flag, already in flags.items() if not already)


def _upstream_size(cfg: LaunchConfig) -> str:
    return resolve_config(0, cfg.mode).size  # the upstream script's --size for this mode


BOTH = MODES  # every mode
ASSERT_RULES = (
    AssertRule(
        "tpp.world_size", MULTI_PROCESS_MODES,
        lambda c: c.nproc < 5,
        lambda c: f"{c.nproc} processes ({c.num_gpus_dit} DiT + 1 VAE)",
        'AssertionError: "At least 5 GPUs are supported for distributed inference."',
        _four_dit_ranks, gpu_layout=True,
    ),
    AssertRule(
        "tpp.num_gpus_dit", MULTI_PROCESS_MODES,
        lambda c: c.num_gpus_dit != 4,
        lambda c: f"--num-gpus-dit {c.num_gpus_dit}",
        'AssertionError: "Only 4 GPUs are supported..."',
        _four_dit_ranks, gpu_layout=True,
    ),
    AssertRule(
        "tpp.vae_parallel", MULTI_PROCESS_MODES,
        lambda c: not c.enable_vae_parallel,
        lambda c: "VAE parallel off",
        'AssertionError: "VAE parallel is required..."',
        lambda c: "launch the entry with --enable_vae_parallel (avatardoctor's own launches always pass it)",
    ),
    AssertRule(
        "tpp.sample_steps", MULTI_PROCESS_MODES,
        lambda c: c.sample_steps != c.num_gpus_dit,
        lambda c: f"--sample-steps {c.sample_steps} with {c.num_gpus_dit} DiT GPUs",
        "each DiT rank runs exactly one denoising step, so TPP needs sample_steps == num_gpus_dit",
        _four_dit_ranks, gpu_layout=True,
    ),
    AssertRule(
        "single.sample_steps", ("single",),
        lambda c: c.sample_steps > 4,
        lambda c: f"--sample-steps {c.sample_steps} on one GPU",
        "KeyError: '5' (the single-GPU KV caches are keyed \"1\"..\"4\")",
        lambda c: "--sample-steps 4",
    ),
    AssertRule(
        "single.fsdp", ("single",),
        lambda c: c.dit_fsdp or c.t5_fsdp,
        lambda c: "--dit_fsdp/--t5_fsdp with one process",
        "one process cannot shard: upstream refuses --dit_fsdp and --t5_fsdp with a single GPU",
        lambda c: "drop --t5-fsdp (and use --mode single without FSDP)",
    ),
    AssertRule(
        "ulysses_size", BOTH,
        lambda c: c.ulysses_size != 1,
        lambda c: f"--ulysses-size {c.ulysses_size} (the seed articles' 'equal to num_gpus_dit' is not upstream)",
        'AssertionError: "Sequence parallel is not supported."',
        lambda c: "--ulysses-size 1",
    ),
    AssertRule(
        "sample_solver", BOTH,
        lambda c: c.sample_solver != "euler",
        lambda c: f"--sample-solver {c.sample_solver}",
        'NotImplementedError("Unsupported solver.")',
        lambda c: "--sample-solver euler",
    ),
    AssertRule(
        "size.choice", BOTH,
        lambda c: c.size not in SIZES,
        lambda c: f"--size {c.size}",
        f"argparse: argument --size: invalid choice (accepted: {', '.join(SIZES)})",
        lambda c: f"--size {_upstream_size(c)}",
    ),
    AssertRule(
        "size.720x1280", BOTH,
        lambda c: c.size == "720*1280",
        lambda c: "--size 720*1280",
        "fails upstream (issue #14): the conditioning KV cache is hard-coded for 720*400",
        lambda c: f"--size {_upstream_size(c)}",
    ),
    AssertRule(
        "infer_frames", BOTH,
        lambda c: c.infer_frames % 4 != 0,
        lambda c: f"--infer-frames {c.infer_frames}",
        "infer_frames must be a multiple of 4",
        lambda c: f"--infer-frames {max(4, c.infer_frames // 4 * 4)}",
    ),
    AssertRule(
        "save_path", BOTH,
        lambda c: not c.save_file and not c.lora_path,
        lambda c: "no --save_file and no LoRA",
        "the script crashes at save time, after the whole generation",
        lambda c: f"--lora-path {LORA_HUB_ID}",
    ),
)  # fmt: skip


def _seed_layout(ctx: CheckContext) -> bool:
    """The seed articles' 4-GPU TPP: 3 DiT GPUs + 1 VAE GPU, or TPP chosen on a 4-GPU box."""
    return ctx.config.mode in MULTI_PROCESS_MODES and (ctx.config.num_gpus_dit == 3 or len(ctx.visible.gpus) == 4)


SEED_NOTE = (
    "the seed articles' 4-GPU TPP (run_4gpu_tpp.sh, 3 DiT GPUs + 1 VAE GPU) is not in upstream Live Avatar, "
    "and upstream refuses it"
)
SEED_REMEDY = "--mode single on one 80 GB-class GPU, or five GPUs for tpp (--num-gpus-dit 4 --sample-steps 4)"


@check("la.asserts", GROUP)
def asserts(ctx: CheckContext) -> Outcome:
    cfg = ctx.config
    broken = [r for r in ASSERT_RULES if cfg.mode in r.modes and r.broken(cfg)]
    data = {"violations": [r.id for r in broken], "mode": cfg.mode, "nproc": cfg.nproc}
    if not broken:
        return passed(
            f"the {cfg.mode} launch passes upstream's start-up asserts "
            f"({cfg.nproc} process{'es' if cfg.nproc > 1 else ''}, {cfg.sample_steps} steps, size {cfg.size})",
            data=data,
        )
    details = [f"{r.id}: {r.problem(cfg)} -> {r.prevents}" for r in broken]
    remedies = [r.remedy(cfg) for r in broken]
    if _seed_layout(ctx):
        details.append(SEED_NOTE)
        remedies = [SEED_REMEDY] + [r.remedy(cfg) for r in broken if not r.gpu_layout]
    return failed(
        f"{len(broken)} upstream start-up check{'s' if len(broken) > 1 else ''} would stop this launch: {', '.join(data['violations'])}",
        details,
        "; ".join(dict.fromkeys(remedies)),  # each once (the TPP layout rules share theirs), in rule order
        data,
    )


# -------------------------------------------------------------------------------------------- la.lora

LORA_FILE = "liveavatar.safetensors"
LORA_LOCAL = "ckpt/LiveAvatar/liveavatar.safetensors"  # where upstream's README puts it
LORA_DOWNLOAD = f"huggingface-cli download {LORA_HUB_ID} --local-dir ckpt/LiveAvatar"
TRUE_VALUES = ("1", "true", "yes", "on")


def is_hub_id(value: str) -> bool:
    """Upstream tries a value with a "/" (not a /, ./ or ../ path) as a Hub repo id first, and falls back
    to a local path when that fails; only a namespace/name value can be a repo id."""
    return value.count("/") == 1 and not value.startswith(("/", "."))


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads, by the same variables it reads."""
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache)
    home = env.get("HF_HOME")
    if not home:
        xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
        home = str(Path(xdg) / "huggingface")
    return Path(home) / "hub"


def cached_hub_file(cache: Path, repo_id: str, filename: str) -> Path | None:
    """The file of the revision refs/main names: what an offline hf_hub_download would return."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    try:
        revision = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = repo_dir / "snapshots" / revision / filename
    return path if os.path.isfile(path) else None  # follows the blob symlink: a dangling one is no file


@check("la.lora", GROUP)
def lora(ctx: CheckContext) -> Outcome:
    value = ctx.config.lora_path
    if not value:
        return skipped("no LoRA: the output will be the base model's; also see la.asserts for the save-path crash")
    start = Path(os.path.normpath(ctx.cwd / (ctx.config.liveavatar or "")))  # the runner starts in the checkout
    path = Path(os.path.normpath(start / value))
    if is_hub_id(value) and not os.path.isfile(path):
        return _hub_lora(ctx, value)
    data = {"source": "local", "path": str(path)}
    if os.path.isfile(path) and os.access(path, os.R_OK):
        return _verified_lora(path, f"LoRA file {path}", data)
    if not os.path.exists(path):
        summary = f"LoRA file not found: {path}"
    elif os.path.isdir(path):
        summary = f"LoRA path {path} is a directory, not the {LORA_FILE} file"
    else:
        summary = f"cannot read the LoRA file {path} (permission denied)"
    return failed(
        summary,
        [] if Path(value).is_absolute() else [f"--lora-path {value} is relative to {start}"],
        f"upstream keeps it at {LORA_LOCAL}: {LORA_DOWNLOAD}",
        data,
    )


def _hub_lora(ctx: CheckContext, repo_id: str) -> Outcome:
    cache = hub_cache_dir(ctx.env)
    cached = cached_hub_file(cache, repo_id, LORA_FILE)
    offline = any(ctx.env.get(k, "").strip().lower() in TRUE_VALUES for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    data = {"source": "hub", "repo_id": repo_id, "cache": str(cache), "cached": str(cached) if cached else None}
    if cached:
        return _verified_lora(cached, f"LoRA {repo_id} is in the Hugging Face cache: {cached}", data)
    if offline:
        return failed(
            "offline and the LoRA hub id is not cached: the launch will print "
            "'Failed to download from HF Hub ... treating as local path' and fail",
            [f"looked for {cache}/models--{repo_id.replace('/', '--')}/snapshots/<refs/main>/{LORA_FILE}"],
            f"--lora-path {LORA_LOCAL} (download it first where there is network: {LORA_DOWNLOAD})",
            data,
        )
    return warned(
        f"LoRA {repo_id} will be downloaded from the Hugging Face Hub at launch (network needed)",
        [f"not yet in the Hugging Face cache {cache}"],
        f"download it once ({LORA_DOWNLOAD}) and pass --lora-path {LORA_LOCAL}",
        data,
    )


def _verified_lora(path: Path, label: str, data: dict) -> Outcome:
    """A LoRA file on disk, verified like any safetensors file (header, offsets, exact size)."""
    try:
        header = read_header(path)
    except CkptFileError as e:
        return failed(f"{label}: {e.problem}", remedy=f"download it again: {LORA_DOWNLOAD}", data=data)
    details = [f"{len(header.tensors):,} tensors, {gib(header.data_bytes)}; header, offsets and size verified"]
    return passed(label, details, data | {"tensors": len(header.tensors), "bytes": header.data_bytes})


CHECKS = (checkout, asserts, lora)
