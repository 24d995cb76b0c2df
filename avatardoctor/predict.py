"""Per-GPU peak memory of a Live Avatar launch, phase by phase, before anything loads.

The model is docs/memory-model.md's. Exact terms come from tensor shapes (the checkpoint's own
headers, or the packaged reference): weights, the FSDP root and blocks, T5, VAE, KV caches. Estimated
terms (CUDA context, NCCL buffers, activations, VAE decode) come from avatardoctor.estimates, default
or calibrated, each with a band. A GPU FITS when its peak plus the band is within its usable
memory, is TIGHT when the band straddles it, and WON'T FIT otherwise; the run's verdict is the worst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from avatardoctor.components import ComponentSummary
from avatardoctor.config import MULTI_PROCESS_MODES, LaunchConfig
from avatardoctor.errors import InputError
from avatardoctor.files import not_regular_file
from avatardoctor.estimates import EstimateTerms
from avatardoctor.machine.model import Gpu
from avatardoctor.units import GIB

PHASES = ("load", "fp8", "text", "denoise", "decode")
PHASE_NAMES = {"load": "loading", "fp8": "fp8 conversion", "text": "text encoding", "denoise": "denoising", "decode": "decode"}
COMPONENTS = (
    "weights", "root_unshard", "inflight_blocks", "t5", "vae",
    "kv_cache", "cond_cache", "activations", "decode", "context",
)  # fmt: skip
COMPONENT_NAMES = {
    "weights": "DiT weights", "root_unshard": "FSDP root unshard", "inflight_blocks": "in-flight blocks",
    "t5": "T5", "vae": "VAE", "kv_cache": "KV cache", "cond_cache": "conditioning cache",
    "activations": "activations", "decode": "VAE decode", "context": "CUDA context",
}  # fmt: skip
VERDICTS = ("fits", "tight", "wont-fit")
VERDICT_WORDS = {"fits": "FITS", "tight": "TIGHT", "wont-fit": "WON'T FIT"}
LATENT_FRAMES_PER_BLOCK = 3  # Live Avatar denoises 3 latent frames per step
VIDEO_FRAMES_PER_DECODE = 12  # ... and streams them through the VAE 12 video frames at a time
COND_TOKENS = {"single": 2800}  # conditioning KV cache, hard-coded upstream; 3000 with several ranks
COND_TOKENS_MULTI = 3000
TEMPORAL_STRIDE, SPATIAL_STRIDE = 4, 16  # VAE (4 frames, 8 px) then patchify (2 px): one token per 16x16 px


def padded_size(size: str, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) Live Avatar really renders: the image's aspect within the --size area budget,
    padded up to multiples of 64, never upscaled (upstream's get_size_less_than_area). Without an
    image, the aspect of the --size string (width*height)."""
    width, height = (int(x) for x in size.split("*"))
    target = width * height
    h, w = image_hw or (height, width)
    if h * w <= target:
        min_scale, max_scale = 0.1, 1.0
    else:
        d = 63
        b, a, c = d * (h + w), h * w, d**2 - target
        min_scale = (-b + math.sqrt(b**2 - 2 * a * c)) / (2 * a)
        max_scale = math.sqrt(target / (h * w))
    for i in range(100):
        scale = max_scale - (max_scale - min_scale) * i / 100
        nh, nw = int(h * scale), int(w * scale)
        ph, pw = nh + (64 - nh % 64) % 64, nw + (64 - nw % 64) % 64
        if ph * pw <= target:
            return ph, pw
    return ph, pw


@dataclass(frozen=True)
class Geometry:
    height: int
    width: int
    latent_frames: int  # per clip: infer_frames / 4

    @property
    def tokens_per_frame(self) -> int:
        return (self.height // SPATIAL_STRIDE) * (self.width // SPATIAL_STRIDE)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the reference image, from its header only (Pillow reads lazily)."""
    from PIL import Image, UnidentifiedImageError

    if kind := not_regular_file(path):  # opening a FIFO would block forever
        raise InputError(f"--image {path}: {kind}, not an image file")
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"--image {path}: not an image Pillow can read ({str(e)[:80]})") from None


def geometry(config: LaunchConfig) -> tuple[Geometry, str | None]:
    """The geometry, and a note when the image could not give its aspect (input.image says why)."""
    note, hw = None, None
    if config.image:
        try:
            hw = image_size(config.image)
        except InputError:
            note = f"--image {config.image} is unreadable: the aspect of --size {config.size} is assumed (see input.image)"
    h, w = padded_size(config.size, hw)
    return Geometry(h, w, config.infer_frames // TEMPORAL_STRIDE), note


@dataclass(frozen=True)
class GpuPrediction:
    rank: int
    index: int
    name: str
    role: str  # "DiT rank 0", "VAE rank 4", "single GPU"
    kind: str  # "dit", "vae" or "single"
    phases: dict[str, dict[str, float]]  # phase -> component -> bytes resident
    bands: dict[str, float]  # phase -> uncertainty (bytes)
    usable_bytes: float
    loaded_phase: str  # the last phase before the first DiT forward

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    @property
    def phase(self) -> str:
        """The phase that peaks (the first, when two tie)."""
        return max(self.phases, key=lambda p: (self.total(p), -PHASES.index(p)))

    @property
    def peak_bytes(self) -> float:
        return self.total(self.phase)

    @property
    def band_bytes(self) -> float:
        return self.bands[self.phase]

    @property
    def loaded_bytes(self) -> float:
        return self.total(self.loaded_phase)

    @property
    def headroom_bytes(self) -> float:
        return self.usable_bytes - self.peak_bytes

    @property
    def verdict(self) -> str:
        worst = max(VERDICTS.index(_verdict(self.total(p), self.bands[p], self.usable_bytes)) for p in self.phases)
        return VERDICTS[worst]

    @property
    def components(self) -> dict[str, float]:
        return self.phases[self.phase]

    @property
    def binding_phase(self) -> str:
        """Where the run would die: the first phase past the limit (or into the band), else the peak."""
        for verdict in ("wont-fit", "tight"):
            for p in self.phases:
                if _verdict(self.total(p), self.bands[p], self.usable_bytes) == verdict:
                    return p
        return self.phase

    def explanation(self) -> str:
        """One line: what is resident at the binding phase, against what is usable."""
        phase = self.binding_phase
        name = self.name.replace("NVIDIA ", "").replace("GeForce ", "")
        total, usable = self.total(phase) / GIB, self.usable_bytes / GIB
        relation = ">" if total > usable else "<="
        resident = self.phases[phase]
        loaded = self.phases[self.loaded_phase]
        grown = {c: v - loaded.get(c, 0) for c, v in resident.items() if v - loaded.get(c, 0) > 0.005 * GIB}
        if phase in ("load", "fp8", "text") or not grown:
            parts = " + ".join(f"{COMPONENT_NAMES[c]} {v / GIB:.2f}" for c, v in resident.items() if v)
            lead = "the bf16 load alone is" if phase == "load" else f"{PHASE_NAMES[phase]} holds"
            what = f"{lead} {total:.2f} GiB ({parts})"
        else:
            steps = " + ".join(f"{v / GIB:.2f} GiB {COMPONENT_NAMES[c]}" for c, v in sorted(grown.items(), key=lambda kv: -kv[1]))
            what = f"{self.loaded_bytes / GIB:.2f} GiB loaded + {steps} = {total:.2f} GiB at {PHASE_NAMES[phase]}"
        return f"GPU {self.index} ({self.role}): {what} {relation} {usable:.2f} GiB usable ({name})"

    def to_dict(self) -> dict:
        gib = lambda b: round(b / GIB, 3)  # noqa: E731 - the JSON's one unit
        return {
            "index": self.index,
            "rank": self.rank,
            "role": self.role,
            "name": self.name,
            "phase": self.phase,
            "peak_gib": gib(self.peak_bytes),
            "band_gib": gib(self.band_bytes),
            "usable_gib": gib(self.usable_bytes),
            "headroom_gib": gib(self.headroom_bytes),
            "loaded_gib": gib(self.loaded_bytes),
            "verdict": self.verdict,
            "components": {c: gib(self.components.get(c, 0)) for c in COMPONENTS},
            "phases_gib": {p: gib(self.total(p)) for p in self.phases},
        }


def _verdict(peak: float, band: float, usable: float) -> str:
    if peak + band <= usable:
        return "fits"
    return "wont-fit" if peak - band > usable else "tight"


@dataclass(frozen=True)
class Prediction:
    config: LaunchConfig
    geometry: Geometry
    gpus: tuple[GpuPrediction, ...]
    sizes_source: str
    terms: EstimateTerms
    missing_gpus: int = 0  # ranks with no GPU to run on
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        if self.missing_gpus or not self.gpus:
            return "wont-fit"
        return VERDICTS[max(VERDICTS.index(g.verdict) for g in self.gpus)]

    @property
    def binding(self) -> GpuPrediction | None:
        """The GPU that fails first (earliest failing phase), else the one closest to its limit."""
        failing = [g for g in self.gpus if g.verdict != "fits"]
        if failing:
            return min(failing, key=lambda g: (PHASES.index(g.binding_phase), g.headroom_bytes))
        return min(self.gpus, key=lambda g: g.headroom_bytes - g.band_bytes, default=None)

    def explanation(self) -> str:
        if self.missing_gpus:
            return f"{self.config.mode} needs {self.config.nproc} GPUs; {self.missing_gpus} of its ranks have none"
        return self.binding.explanation() if self.binding else "no GPUs"

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "explanation": self.explanation(),
            "mode": self.config.mode,
            "height": self.geometry.height,
            "width": self.geometry.width,
            "latent_frames": self.geometry.latent_frames,
            "sizes_from": self.sizes_source,
            "estimates_from": self.terms.source,
            "gpus": [g.to_dict() for g in self.gpus],
        }


def _kv_bytes(summary: ComponentSummary, tokens: int) -> float:
    """A KV cache: key and value, every layer, bf16, per token."""
    return 2 * summary.dit_shape.layers * tokens * summary.dit_shape.dim * 2


def predict_rank(
    rank: int, gpu: Gpu, config: LaunchConfig, summary: ComponentSummary, terms: EstimateTerms, geo: Geometry
) -> GpuPrediction:
    multi = config.mode in MULTI_PROCESS_MODES
    kind = "single" if not multi else ("dit" if rank in config.dit_ranks else "vae")
    role = {"single": "single GPU", "dit": f"DiT rank {rank}", "vae": f"VAE rank {rank}"}[kind]
    n = config.num_gpus_dit
    dit, root = summary.dit.bytes, summary.dit_units.root.bytes
    block = max((b.bytes for b in summary.dit_units.blocks), default=0)
    fp8_saving = summary.dit_shape.linear.bytes / 2 if config.fp8 else 0
    sharded = config.dit_fsdp and multi
    t5 = summary.t5.bytes
    t5_on_gpu = 0 if config.t5_cpu else (t5 / n + summary.t5_root.bytes if config.t5_fsdp and multi else t5)
    t5_at_load = t5 / n if config.t5_fsdp and multi else 0  # shard_fn puts the shards on the GPU at init
    t5_after = t5_on_gpu if not config.offload_model else t5_at_load  # offload moves T5 back after encoding
    vae = summary.vae.bytes
    context = terms.context_bytes + (terms.nccl_bytes_per_peer * (config.nproc - 1) if multi else 0)
    tokens_clip = geo.latent_frames * geo.tokens_per_frame
    live_tokens = LATENT_FRAMES_PER_BLOCK * geo.tokens_per_frame
    activations = terms.activation_bytes_per_token_dim * live_tokens * summary.dit_shape.dim
    decode = terms.decode_bytes_per_pixel * geo.height * geo.width * VIDEO_FRAMES_PER_DECODE
    cond = _kv_bytes(summary, COND_TOKENS.get(config.mode, COND_TOKENS_MULTI))

    if sharded and kind == "dit":
        w_load, w_run = dit / n, (dit - fp8_saving) / n
    elif sharded:  # the VAE rank is outside the DiT's FSDP group
        w_load = w_run = 0
    else:  # TPP: a full copy on every rank, the VAE rank's unused unless offloaded
        w_load, w_run = dit, dit - fp8_saving
        if kind == "vae" and config.offload_model:
            w_load = w_run = 0
    offloaded = config.offload_model and kind == "single"
    phases: dict[str, dict[str, float]] = {
        "load": {"weights": w_load, "t5": t5_at_load, "vae": vae, "context": context},
    }
    if config.fp8 and w_load:
        # Linear layers convert one at a time after the bf16 load: one block's fp8 copy is extra.
        phases["fp8"] = {"weights": w_load + block / 2, "t5": t5_at_load, "vae": vae, "context": context}
    phases["text"] = {"weights": 0 if offloaded else w_run, "t5": t5_on_gpu, "vae": 0 if offloaded else vae, "context": context}
    if kind in ("dit", "single"):
        caches = 1 if kind == "dit" or config.offload_kv_cache else config.sample_steps
        online = kind == "single" and config.enable_online_decode
        phases["denoise"] = {
            "weights": w_run,
            "root_unshard": root if sharded else 0,
            "inflight_blocks": 2 * block if sharded else 0,  # FSDP's limit_all_gathers allows two
            "t5": t5_after,
            "vae": vae if (not offloaded or online) else 0,
            "kv_cache": caches * _kv_bytes(summary, tokens_clip),
            "cond_cache": cond,
            "activations": activations,
            "decode": decode if online else 0,
            "context": context,
        }
    if kind in ("vae", "single"):
        phases["decode"] = {"weights": 0 if offloaded else w_run, "t5": t5_after, "vae": vae, "decode": decode, "context": context}
    bands = {
        p: terms.context_band_bytes
        + terms.activation_band * c.get("activations", 0)
        + terms.decode_band * c.get("decode", 0)
        for p, c in phases.items()
    }
    usable = gpu.free_bytes - terms.fragmentation * gpu.total_bytes
    return GpuPrediction(rank, gpu.index, gpu.name, role, kind, phases, bands, usable, "text")


def predict(
    config: LaunchConfig, rank_gpus: tuple[Gpu, ...], summary: ComponentSummary, terms: EstimateTerms
) -> Prediction:
    geo, note = geometry(config)
    gpus = tuple(predict_rank(r, g, config, summary, terms, geo) for r, g in enumerate(rank_gpus[: config.nproc]))
    missing = max(0, config.nproc - len(rank_gpus))
    return Prediction(config, geo, gpus, summary.source, terms, missing_gpus=missing, notes=(note,) if note else ())


def with_changes(config: LaunchConfig, **changes) -> LaunchConfig:
    """The configuration with some flags changed (for what-ifs and the planner)."""
    return replace(config, **changes)
