"""The Live Avatar configuration being checked, in Live Avatar's own terms.

Defaults are the upstream launch scripts' values (docs/upstream.md, "Launch"):
infinite_inference_multi_gpu.sh for `tpp`, infinite_inference_single_gpu.sh for `single`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from avatardoctor.upstream import ALL_MODES, LORA_HUB_ID, MULTI_PROCESS_MODES, SCRIPT_PORT, SCRIPT_SIZE, Size

MODES = ALL_MODES
CKPT_DIR = "ckpt/Wan2.2-S2V-14B/"  # --ckpt_dir in every upstream script, relative to the checkout

# What each mode's script passes where they differ: the upstream scripts for tpp and single; for
# fsdp and seed-4gpu, what the seed articles describe (--dit_fsdp, no fp8; seed-4gpu is their 3 DiT
# GPUs + 1 VAE GPU with ulysses_size = num_gpus_dit and port 29103, which upstream refuses).
_UPSTREAM: dict[str, Any] = dict(enable_vae_parallel=True, offload_model=False, master_port=SCRIPT_PORT["tpp"])
_MODE_DEFAULTS: dict[str, dict[str, Any]] = {  # LaunchConfig's keyword arguments, by mode
    "tpp": dict(_UPSTREAM, num_gpus_dit=4, size=SCRIPT_SIZE["tpp"]),
    "single": dict(
        num_gpus_dit=1,
        size=SCRIPT_SIZE["single"],
        offload_model=True,
        master_port=SCRIPT_PORT["single"],
        enable_vae_parallel=False,
    ),
    "fsdp": dict(_UPSTREAM, num_gpus_dit=4, size="704*384", fp8=False, dit_fsdp=True),
    "seed-4gpu": dict(
        _UPSTREAM,
        num_gpus_dit=3,
        size="704*384",
        fp8=False,
        dit_fsdp=True,
        sample_steps=3,
        ulysses_size=3,
        master_port=29103,
    ),
}


@dataclass(frozen=True)
class LaunchConfig:
    mode: str
    mode_reason: str  # why this mode: "--mode" or "default for N visible GPUs"
    num_gpus_dit: int
    size: Size  # parsed once (upstream.Size), still the "W*H" text
    offload_model: bool
    master_port: int
    enable_vae_parallel: bool
    infer_frames: int = 48
    sample_steps: int = 4
    sample_solver: str = "euler"
    ulysses_size: int = 1
    fp8: bool = True
    lora_path: str | None = LORA_HUB_ID
    save_file: str | None = None
    liveavatar: Path | None = None
    ckpt_dir: str | None = None  # as given; None: not checked (CKPT_DIR in the checkout with --liveavatar)
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    t5_cpu: bool = False
    offload_kv_cache: bool = False
    enable_online_decode: bool = False
    num_clip: int = 10000  # the scripts' value; upstream caps it by the audio's length
    image: Path | None = None  # the reference image: its aspect sets the real height and width
    audio: Path | None = None  # the driving audio: its length caps the clips
    audio_seconds: float | None = None  # what if the audio lasts this long: instead of --audio's length
    prompt: str | None = None
    compile: bool = True  # ENABLE_COMPILE (the scripts' true): eager PyTorch holds about twice the activations
    gradio: bool = False  # launched through gradio_app.py, whose start-up asserts are laxer
    explicit: frozenset[str] = frozenset()  # the fields the user set with a flag: the planner keeps them

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", Size(self.size))  # a Size stays itself: text from a flag or a plan parses here

    @property
    def nproc(self) -> int:
        """torchrun --nproc_per_node: the DiT ranks plus the VAE rank, or one process."""
        return self.num_gpus_dit + 1 if self.mode in MULTI_PROCESS_MODES else 1

    def to_dict(self) -> dict:
        """The configuration as JSON values (check --json, plan files)."""
        d = asdict(self) | {"nproc": self.nproc, "explicit": sorted(self.explicit)}
        return d | {k: str(getattr(self, k)) if getattr(self, k) else None for k in ("liveavatar", "image", "audio")}

    @property
    def dit_ranks(self) -> range:
        return range(self.num_gpus_dit) if self.mode in MULTI_PROCESS_MODES else range(1)


def default_mode(visible_gpus: int) -> str:
    return "tpp" if visible_gpus >= 5 else "single"


def resolve_config(visible_gpus: int, mode: str | None = None, **overrides) -> LaunchConfig:
    """Upstream defaults for the mode (chosen by GPU count when not given), then the user's flags."""
    reason = "--mode" if mode else f"default for {visible_gpus} visible GPU{'s' if visible_gpus != 1 else ''}"
    mode = mode or default_mode(visible_gpus)
    config = LaunchConfig(mode=mode, mode_reason=reason, **_MODE_DEFAULTS[mode])
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(config, **given, explicit=frozenset(given))
