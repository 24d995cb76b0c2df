"""Upstream's start-up rules: what Live Avatar's code refuses, crashes on or hangs at, decided from the
configuration alone and in a millisecond, before minutes of loading.

Each rule is read from upstream's code at UPSTREAM_COMMIT and cited by file:line in docs/upstream.md
("Rules"); the facts they use (sizes, geometry, the conditioning cache) live in avatardoctor.upstream,
one layer below. The checks (la.asserts), the prediction (WON'T RUN), the planner and the run
classifier all read upstream's rules here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from avatardoctor.config import LaunchConfig
from avatardoctor.upstream import (
    ALL_MODES,
    ENTRIES,
    FRAMES_PER_BLOCK,
    LORA_HUB_ID,
    MULTI_PROCESS_MODES,
    SCRIPT_SIZE,
    SIZES,
    cond_capacity,
    cond_tokens,
    largest_size_that_fits,
    padded_size,
)

# The seed articles' layout (3 DiT GPUs + 1 VAE GPU, their run_4gpu_tpp.sh): what to say instead of the
# tpp.world_size remedy, whose flags assume five GPUs are there.
SEED_NOTE = (
    "the seed articles' 4-GPU TPP (run_4gpu_tpp.sh, 3 DiT GPUs + 1 VAE GPU) is not in upstream Live Avatar, "
    "and upstream refuses it"
)
SEED_REMEDY = "--mode single on one 80 GB-class GPU, or five GPUs for tpp (--num-gpus-dit 4 --sample-steps 4)"


@dataclass(frozen=True)
class Launch:
    """What the rules look at: the configuration, the reference image's size when known, the entry."""

    config: LaunchConfig
    image_hw: tuple[int, int] | None = None

    @property
    def entry(self) -> str:
        return "gradio" if self.config.gradio else "cli"

    @property
    def padded(self) -> tuple[int, int]:
        return padded_size(self.config.size, self.image_hw)

    @property
    def cond_tokens(self) -> int:
        return cond_tokens(*self.padded)


@dataclass(frozen=True)
class Rule:
    """One thing upstream's code does with a configuration, decided before launch."""

    id: str
    modes: tuple[str, ...]
    broken: Callable[[Launch], bool]
    problem: Callable[[Launch], str]  # the offending setting, in the user's terms
    prevents: str  # what upstream does: its printed text, or its behaviour
    remedy: Callable[[Launch], str]
    entries: tuple[str, ...] = ENTRIES
    severity: str = "fail"  # "warn": upstream runs, but not as the user expects
    gpu_layout: bool = False  # about the TPP GPU count: the seed 4-GPU advice replaces its remedy
    log_texts: tuple[str, ...] = ()  # what a launch prints when it hits the rule, for the classifier

    def applies(self, launch: Launch) -> bool:
        return launch.config.mode in self.modes and launch.entry in self.entries and self.broken(launch)


def _four_dit_ranks(launch: Launch) -> str:
    """The flags that give upstream's only TPP layout: 4 DiT ranks, each running one of the 4 steps."""
    cfg = launch.config
    flags = {"--num-gpus-dit 4": cfg.num_gpus_dit == 4, "--sample-steps 4": cfg.sample_steps == 4}
    return " ".join(flag for flag, already in flags.items() if not already)


def _size_problem(launch: Launch) -> str:
    h, w = launch.padded
    image = f"this {launch.image_hw[1]}x{launch.image_hw[0]} image" if launch.image_hw else "the --size aspect"
    return (
        f"--size {launch.config.size} renders {w}x{h} px for {image}: the first prefill writes "
        f"{launch.cond_tokens} conditioning tokens into a cache of {cond_capacity(launch.config.mode)}"
    )


def _size_remedy(launch: Launch) -> str:
    best = largest_size_that_fits(launch.config.mode, launch.image_hw)
    if best is None:
        return "a smaller image"
    return f"--size {best} (the largest that fits for {'this image' if launch.image_hw else 'an image of the --size aspect'})"


def _frames_remedy(launch: Launch) -> str:
    """Whole blocks, never fewer than upstream runs: one block, or two in TPP once a second clip follows."""
    cfg = launch.config
    blocks = 2 if cfg.mode in MULTI_PROCESS_MODES and cfg.num_clip > 1 else 1
    return f"--infer-frames {max(blocks * FRAMES_PER_BLOCK, cfg.infer_frames // FRAMES_PER_BLOCK * FRAMES_PER_BLOCK)}"


RULES = (
    Rule(
        "tpp.world_size",
        MULTI_PROCESS_MODES,
        lambda x: x.config.nproc < 5,
        lambda x: f"{x.config.nproc} processes ({x.config.num_gpus_dit} DiT + 1 VAE)",
        'AssertionError: "At least 5 GPUs are supported for distributed inference."',
        _four_dit_ranks,
        entries=("cli",),
        gpu_layout=True,
        log_texts=("At least 5 GPUs are supported for distributed inference.",),
    ),
    Rule(
        "tpp.num_gpus_dit",
        MULTI_PROCESS_MODES,
        lambda x: x.config.num_gpus_dit != 4,
        lambda x: f"--num-gpus-dit {x.config.num_gpus_dit}",
        'AssertionError: "Only 4 GPUs are supported for distributed inference."',
        _four_dit_ranks,
        entries=("cli",),
        gpu_layout=True,
        log_texts=("Only 4 GPUs are supported for distributed inference.",),
    ),
    Rule(
        "tpp.vae_parallel",
        MULTI_PROCESS_MODES,
        lambda x: not x.config.enable_vae_parallel,
        lambda x: "VAE parallel off",
        'AssertionError: "VAE parallel is required for distributed inference."',
        lambda x: "launch the entry with --enable_vae_parallel (avatardoctor's own launches always pass it)",
        log_texts=("VAE parallel is required for distributed inference.",),
    ),
    Rule(
        "tpp.sample_steps",
        MULTI_PROCESS_MODES,
        lambda x: x.config.sample_steps != x.config.num_gpus_dit,
        lambda x: f"--sample-steps {x.config.sample_steps} with {x.config.num_gpus_dit} DiT GPUs",
        "DiT rank i runs denoising step i: fewer steps leave the last DiT rank waiting for ever (a hang), "
        "more steps send a rank into a step with no KV cache (a crash)",
        _four_dit_ranks,
        gpu_layout=True,
    ),
    Rule(
        "tpp.dit_fsdp",
        MULTI_PROCESS_MODES,
        lambda x: x.config.dit_fsdp,
        lambda x: "--dit_fsdp with TPP (the seed articles' idea)",
        "upstream cannot run this: its FSDP shards over the whole world group, the VAE rank included, "
        "and TPP ranks never run the same forward together, so the all-gathers never match (a hang)",
        lambda x: "drop --dit_fsdp: upstream TPP keeps a full DiT on each of 5 GPUs",
    ),
    Rule(
        "single.sample_steps",
        ("single",),
        lambda x: x.config.sample_steps > 4,
        lambda x: f"--sample-steps {x.config.sample_steps} on one GPU",
        'KeyError: \'5\' (the single-GPU pipeline builds exactly 4 KV caches, keyed "1".."4")',
        lambda x: "--sample-steps 4",
        log_texts=("KeyError: '5'",),
    ),
    Rule(
        "single.fsdp",
        ("single",),
        lambda x: x.config.dit_fsdp or x.config.t5_fsdp,
        lambda x: "--dit_fsdp/--t5_fsdp with one process",
        'AssertionError: "t5_fsdp and dit_fsdp are not supported in non-distributed environments."',
        lambda x: "drop --t5-fsdp and --dit-fsdp",
        log_texts=("t5_fsdp and dit_fsdp are not supported in non-distributed environments.",),
    ),
    Rule(
        "single.offload_model",
        ("single",),
        lambda x: not x.config.offload_model,
        lambda x: "--offload-model False on one GPU",
        "the VAE is moved to the CPU during generation whatever --offload_model says, and back to the GPU for "
        "the final decode only when it is True: a device-mismatch RuntimeError after every clip is computed",
        lambda x: "--offload-model True (the single-GPU script's value)",
    ),
    Rule(
        "ulysses_size",
        ALL_MODES,
        lambda x: x.config.ulysses_size != 1,
        lambda x: (
            f"--ulysses-size {x.config.ulysses_size} (the seed articles' 'equal to num_gpus_dit' is not upstream)"
        ),
        'AssertionError: "Sequence parallel is not supported."',
        lambda x: "--ulysses-size 1",
        log_texts=(
            "Sequence parallel is not supported.",
            "sequence parallel are not supported in non-distributed environments.",
        ),
    ),
    Rule(
        "sample_solver",
        ALL_MODES,
        lambda x: x.config.sample_solver != "euler",
        lambda x: f"--sample-solver {x.config.sample_solver}",
        'NotImplementedError("Unsupported solver.") after the load and the text encoding',
        lambda x: "--sample-solver euler",
        log_texts=("Unsupported solver.",),
    ),
    Rule(
        "size.choice",
        ALL_MODES,
        lambda x: x.config.size not in SIZES,
        lambda x: f"--size {x.config.size}",
        f"argparse: argument --size: invalid choice (accepted: {', '.join(SIZES)})",
        lambda x: f"--size {SCRIPT_SIZE.get(x.config.mode, SCRIPT_SIZE['tpp'])}",
        log_texts=("argument --size: invalid choice",),
    ),
    Rule(
        "cond_cache",
        ALL_MODES,
        lambda x: x.config.size in SIZES and x.cond_tokens > cond_capacity(x.config.mode),
        _size_problem,
        "RuntimeError: The expanded size of the tensor (3000 or 2800) must match the existing size, at the first "
        "prefill, after the whole load (the conditioning cache is preallocated for 720*400)",
        _size_remedy,
        log_texts=(
            "The expanded size of the tensor (3000) must match",
            "The expanded size of the tensor (2800) must match",
        ),
    ),
    Rule(
        "infer_frames.min",
        ALL_MODES,
        lambda x: x.config.infer_frames < FRAMES_PER_BLOCK,
        lambda x: f"--infer-frames {x.config.infer_frames} (under {FRAMES_PER_BLOCK}: no whole 3-latent-frame block)",
        "zero denoising blocks per clip: the VAE rank concatenates nothing (a crash) or waits on a broadcast "
        "that never comes (a hang)",
        _frames_remedy,
    ),
    Rule(
        "tpp.one_block",
        MULTI_PROCESS_MODES,
        lambda x: FRAMES_PER_BLOCK <= x.config.infer_frames < 2 * FRAMES_PER_BLOCK and x.config.num_clip > 1,
        lambda x: f"--infer-frames {x.config.infer_frames} with TPP (one denoising block per clip)",
        "with one block the VAE rank never broadcasts the reference latents after clip 1: the DiT ranks wait at "
        "clip 2 for ever (a hang)",
        lambda x: f"--infer-frames {2 * FRAMES_PER_BLOCK} or more (two blocks per clip)",
    ),
    Rule(
        "infer_frames.blocks",
        ALL_MODES,
        lambda x: x.config.infer_frames >= FRAMES_PER_BLOCK and x.config.infer_frames % FRAMES_PER_BLOCK != 0,
        lambda x: f"--infer-frames {x.config.infer_frames} (not a multiple of {FRAMES_PER_BLOCK})",
        "only whole blocks of 3 latent frames are denoised: the frames past the last block are left undenoised "
        "and the video drifts from the audio",
        _frames_remedy,
        severity="warn",
    ),
    Rule(
        "save_path",
        ALL_MODES,
        lambda x: not x.config.save_file and not x.config.lora_path,
        lambda x: "no --save_file and no LoRA",
        "the entry derives the output name from --lora_path_dmd: a crash at save time, after the whole generation",
        lambda x: f"--lora-path {LORA_HUB_ID}",
        entries=("cli",),
    ),
)


@dataclass(frozen=True)
class Violation:
    rule: Rule
    problem: str
    remedy: str

    @property
    def fatal(self) -> bool:
        return self.rule.severity == "fail"


def violations(config: LaunchConfig, image_hw: tuple[int, int] | None = None) -> list[Violation]:
    """Every rule this launch breaks, in rule order (warnings included: see Violation.fatal)."""
    launch = Launch(config, image_hw)
    return [Violation(r, r.problem(launch), r.remedy(launch)) for r in RULES if r.applies(launch)]
