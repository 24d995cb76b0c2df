"""Per-GPU peak memory of a Live Avatar launch, phase by phase, before anything loads.

The model is docs/memory-model.md's. Exact terms come from tensor shapes (the checkpoint's own
headers, or the packaged reference): weights, the FSDP root and blocks, T5, VAE, KV caches. Estimated
terms (CUDA context, NCCL buffers, activations, VAE decode) come from avatardoctor.estimates, default
or calibrated, each with a band. A GPU FITS when its peak plus the band is within its usable
memory, is TIGHT when the band straddles it, and WON'T FIT otherwise; the run's verdict is the worst.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from avatardoctor.ckpt.components import ComponentSummary
from avatardoctor.config import LaunchConfig
from avatardoctor.errors import InputError
from avatardoctor.estimates import EstimateTerms
from avatardoctor.files import not_regular_file
from avatardoctor.machine.model import Gpu
from avatardoctor.rules import Violation, violations
from avatardoctor.units import GIB, plural
from avatardoctor.upstream import (
    FP8_CONVERSION_BYTES_PER_PARAM,
    FP8_MIN_CC,
    FRAMES_PER_LATENT,
    LATENT_FRAMES_PER_BLOCK,
    LORA_BYTES_PER_PARAM,
    MULTI_PROCESS_MODES,
    audio_feature_bytes,
    clips_for_audio,
    cond_capacity,
    padded_size,
    tokens_per_frame,
)

PHASES = ("load", "lora", "fp8", "audio", "text", "denoise", "decode")
PHASE_NAMES = {
    "load": "loading",
    "lora": "LoRA merge",
    "fp8": "fp8 conversion",
    "audio": "audio encoding",
    "text": "text encoding",
    "denoise": "denoising",
    "decode": "decode",
}
COMPONENTS = (
    "weights",
    "lora",
    "root_unshard",
    "inflight_blocks",
    "t5",
    "vae",
    "kv_cache",
    "cond_cache",
    "activations",
    "decode",
    "audio_features",
    "context",
)
COMPONENT_NAMES = {
    "weights": "DiT weights",
    "lora": "LoRA adapters (fp32)",
    "root_unshard": "FSDP root unshard",
    "inflight_blocks": "in-flight blocks",
    "t5": "T5",
    "vae": "VAE",
    "kv_cache": "KV cache",
    "cond_cache": "conditioning cache",
    "activations": "activations",
    "decode": "VAE decode",
    "audio_features": "audio features",
    "context": "CUDA context",
}
EAGER_ACTIVATIONS = 2.0  # ENABLE_COMPILE=false: Wan2.2's own peak-memory table implies ~90 bytes/token/dim, not 46
SINGLE_KV_CACHES = 4  # causal_s2v_pipeline.py builds exactly four, one per step
VERDICTS = ("fits", "tight", "wont-fit")
VERDICT_WORDS = {"fits": "FITS", "tight": "TIGHT", "wont-fit": "WON'T FIT", "wont-run": "WON'T RUN"}
VIDEO_FRAMES_PER_DECODE = 12  # Live Avatar streams latents through the VAE 12 video frames at a time


@dataclass(frozen=True)
class Geometry:
    height: int
    width: int
    latent_frames: int  # per clip: infer_frames / 4

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.height, self.width)


def read_per_file_version(read):
    """A header reader run once per version of a file (its path, mtime and size): `check`, the planner and
    the what-ifs predict dozens of times, each reading the same --image, --audio and LoRA headers."""

    @functools.lru_cache(maxsize=16)
    def cached(path: str, version: tuple[int, int]):
        return read(Path(path))

    @functools.wraps(read)
    def once(path: Path):
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return read(path)  # says why itself
        return cached(str(path), (st.st_mtime_ns, st.st_size))

    return once


@read_per_file_version
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


def reference_hw(config: LaunchConfig) -> tuple[tuple[int, int] | None, str | None]:
    """The reference image's (height, width), and a note when it could not give them (input.image says why)."""
    if not config.image:
        return None, None
    try:
        return image_size(config.image), None
    except InputError:
        return (
            None,
            f"--image {config.image} is unreadable: the aspect of --size {config.size} is assumed (see input.image)",
        )


def geometry(config: LaunchConfig, image_hw: tuple[int, int] | None) -> Geometry:
    h, w = padded_size(config.size, image_hw)
    return Geometry(h, w, config.infer_frames // FRAMES_PER_LATENT)


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
    estimated: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> the estimated terms' drivers

    def total(self, phase: str) -> float:
        return sum(self.phases[phase].values())

    def calibration_inputs(self, phase: str) -> dict:
        """What calibration fits against at a phase: the exact terms' bytes, and what drives each estimate."""
        est = self.estimated.get(phase, {})
        exact = self.total(phase) - est.get("bytes", 0.0)
        return {
            "exact_bytes": int(exact),
            "token_dims": est.get("token_dims", 0.0),
            "decode_pixels": est.get("decode_pixels", 0.0),
        }

    def reserved(self, phase: str) -> float:
        """What NVML shows at a phase: PyTorch's caching allocator keeps what earlier phases allocated (no
        empty_cache() follows the LoRA merge or the fp8 conversion), so the most allocated so far."""
        order = list(self.phases)
        return max(self.total(p) for p in order[: order.index(phase) + 1])

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
            steps = " + ".join(
                f"{v / GIB:.2f} GiB {COMPONENT_NAMES[c]}" for c, v in sorted(grown.items(), key=lambda kv: -kv[1])
            )
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
            "phases_reserved_gib": {p: gib(self.reserved(p)) for p in self.phases},
            "calibration": {p: self.calibration_inputs(p) for p in self.phases},
        }


def _verdict(peak: float, band: float, usable: float) -> str:
    if peak + band <= usable:
        return "fits"
    return "wont-fit" if peak - band > usable else "tight"


@dataclass(frozen=True)
class Inputs:
    """What the prediction reads beyond the configuration: the image's size, the audio's length, the LoRA's."""

    image_hw: tuple[int, int] | None = None
    audio_seconds: float | None = None  # None: unknown (no --audio, no --audio-seconds)
    lora_params: int | None = None  # from the LoRA file's headers; None: the reference's target modules


@dataclass(frozen=True)
class Prediction:
    config: LaunchConfig
    geometry: Geometry
    gpus: tuple[GpuPrediction, ...]
    sizes_source: str
    terms: EstimateTerms
    missing_gpus: int = 0  # ranks with no GPU to run on
    notes: tuple[str, ...] = field(default_factory=tuple)
    refusals: tuple[Violation, ...] = ()  # upstream's rules this launch breaks: it cannot run, whatever the memory
    inputs: Inputs = field(default_factory=lambda: Inputs())
    host: HostPrediction | None = None

    @property
    def memory_verdict(self) -> str:
        if self.missing_gpus or not self.gpus:
            return "wont-fit"
        return VERDICTS[max(VERDICTS.index(g.verdict) for g in self.gpus)]

    @property
    def verdict(self) -> str:
        """The memory verdict, unless upstream's code refuses, crashes or hangs on this launch."""
        return "wont-run" if self.refusals else self.memory_verdict

    @property
    def binding(self) -> GpuPrediction | None:
        """The GPU that fails first (earliest failing phase), else the one closest to its limit."""
        failing = [g for g in self.gpus if g.verdict != "fits"]
        if failing:
            return min(failing, key=lambda g: (PHASES.index(g.binding_phase), g.headroom_bytes))
        return min(self.gpus, key=lambda g: g.headroom_bytes - g.band_bytes, default=None)

    def explanation(self) -> str:
        if self.refusals:
            memory = f"memory alone: {VERDICT_WORDS[self.memory_verdict]}, {self.memory_explanation()}"
            return f"upstream's code stops this launch ({', '.join(v.rule.id for v in self.refusals)}; see la.asserts); {memory}"
        return self.memory_explanation()

    def memory_explanation(self) -> str:
        if self.missing_gpus:
            return f"{self.config.mode} needs {plural(self.config.nproc, 'GPU')}; {self.missing_gpus} of its ranks have none"
        return self.binding.explanation() if self.binding else "no GPUs"

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "memory_verdict": self.memory_verdict,
            "refused_by": [
                {"rule": v.rule.id, "problem": v.problem, "upstream": v.rule.prevents} for v in self.refusals
            ],
            "explanation": self.explanation(),
            "mode": self.config.mode,
            "height": self.geometry.height,
            "width": self.geometry.width,
            "latent_frames": self.geometry.latent_frames,
            "sizes_from": self.sizes_source,
            "audio_seconds": self.inputs.audio_seconds,
            "host": self.host.to_dict() if self.host else None,
            "estimates_from": self.terms.source,
            "gpus": [g.to_dict() for g in self.gpus],
        }


def _kv_bytes(summary: ComponentSummary, tokens: int) -> float:
    """A KV cache: key and value, every layer, bf16, per token."""
    return 2 * summary.dit_shape.layers * tokens * summary.dit_shape.dim * 2


def predict_rank(
    rank: int,
    gpu: Gpu,
    config: LaunchConfig,
    summary: ComponentSummary,
    terms: EstimateTerms,
    geo: Geometry,
    inputs: Inputs = Inputs(),
) -> GpuPrediction:
    """Each phase as upstream allocates it (docs/memory-model.md, one table per mode, each term cited)."""
    multi = config.mode in MULTI_PROCESS_MODES
    kind = "single" if not multi else ("dit" if rank in config.dit_ranks else "vae")
    role = {"single": "single GPU", "dit": f"DiT rank {rank}", "vae": f"VAE rank {rank}"}[kind]
    shape = summary.dit_shape
    sharded = config.dit_fsdp and multi
    # Upstream's FSDP shards over the whole world group, the VAE rank included (--mode fsdp); the seed
    # articles' arithmetic shards over the DiT GPUs only (--mode seed-4gpu). Neither runs upstream.
    seeds = config.mode == "seed-4gpu"
    world = config.num_gpus_dit if seeds else config.nproc
    outside = sharded and seeds and kind == "vae"  # the seeds keep their VAE GPU out of the group
    dit = 0 if outside else summary.dit.bytes / world if sharded else summary.dit.bytes  # TPP: a full copy each
    fp8 = config.fp8 and gpu.compute_capability >= FP8_MIN_CC  # without FP8 the launch can only run in bf16
    dit_run = dit - (shape.fp8.params / (world if sharded else 1) if fp8 else 0)
    lora = 0.0
    if config.lora_path:
        adapters = inputs.lora_params if inputs.lora_params is not None else shape.lora_params
        # PEFT holds the adapters in fp32; merging a layer makes its fp32 delta and the bf16 sum beside it
        lora = adapters * LORA_BYTES_PER_PARAM + shape.largest_lora_target * (LORA_BYTES_PER_PARAM + 2)
    conversion = shape.largest_fp8_layer * FP8_CONVERSION_BYTES_PER_PARAM if fp8 else 0
    root = summary.dit_units.root.bytes
    block = max((b.bytes for b in summary.dit_units.blocks), default=0)
    t5 = summary.t5.bytes
    t5_encoding = 0 if config.t5_cpu else (t5 / world + summary.t5_root.bytes if config.t5_fsdp and multi else t5)
    t5_at_load = t5 / world if config.t5_fsdp and multi else 0  # shard_fn puts the shards on the GPU at init
    t5_kept = t5_encoding if not config.offload_model else t5_at_load  # offload moves T5 back after encoding
    vae = summary.vae.params * 2  # held in bf16 on the GPU, whatever the file's dtype
    context = terms.context_bytes + (terms.nccl_bytes_per_peer * (config.nproc - 1) if multi else 0)
    seconds = inputs.audio_seconds or 0.0
    features = audio_feature_bytes(seconds)  # on every rank, from the audio encoding to the end
    encoder = summary.wav2vec2.params * 2 + terms.audio_encoding_bytes_per_second * seconds  # bf16, whole audio
    tokens_clip = geo.latent_frames * geo.tokens_per_frame
    live_tokens = LATENT_FRAMES_PER_BLOCK * geo.tokens_per_frame
    cond_tokens = cond_capacity(config.mode)
    # Every layer's attention concatenates the whole KV cache and the conditioning cache (k and v, bf16)
    attention_concat = 2 * (tokens_clip + cond_tokens) * shape.dim * 2
    live = terms.activation_bytes_per_token_dim * live_tokens * shape.dim * (1 if config.compile else EAGER_ACTIVATIONS)
    activations = live + attention_concat
    decode = terms.decode_bytes_per_pixel * geo.height * geo.width * VIDEO_FRAMES_PER_DECODE
    cond = _kv_bytes(summary, cond_tokens)  # preallocated whole, whatever the prefill uses

    phases: dict[str, dict[str, float]] = {"load": {"weights": dit, "t5": t5_at_load, "vae": vae, "context": context}}
    if lora:
        phases["lora"] = {"weights": dit, "lora": lora, "t5": t5_at_load, "vae": vae, "context": context}
    if conversion:  # one Linear at a time: its new bf16 weight beside the old, then the fp8 copy
        phases["fp8"] = {"weights": dit + conversion, "t5": t5_at_load, "vae": vae, "context": context}
    # Nothing leaves the GPU before the inputs are encoded: the audio first (wav2vec2 on the GPU), then T5.
    resident = {"weights": dit_run, "t5": t5_at_load, "vae": vae, "context": context}
    phases["audio"] = {**resident, "audio_features": features + encoder}
    phases["text"] = {**resident, "t5": t5_encoding, "audio_features": features}
    if kind in ("dit", "single"):
        single = kind == "single"
        caches = (
            1 if not single or config.offload_kv_cache else SINGLE_KV_CACHES
        )  # single: always 4, whatever the steps
        online = single and config.enable_online_decode
        phases["denoise"] = {
            "weights": dit_run,
            "root_unshard": root if sharded else 0,
            "inflight_blocks": 2 * block if sharded else 0,  # FSDP's limit_all_gathers allows two
            "t5": 0 if single else t5_kept,  # one GPU: T5 and the VAE go to the CPU whatever --offload_model says
            "vae": vae if (online or not single) else 0,
            "kv_cache": caches * _kv_bytes(summary, tokens_clip),
            "cond_cache": cond,
            "activations": activations,
            "decode": decode if online else 0,
            "audio_features": features,
            "context": context,
        }
    if kind == "vae":  # its DiT copy goes to the CPU inside the loop only with --offload_model True
        phases["decode"] = {
            "weights": 0 if config.offload_model else dit_run,
            "t5": t5_kept,
            "vae": vae,
            "decode": decode,
            "audio_features": features,
            "context": context,
        }
    elif kind == "single" and not config.enable_online_decode:
        # The final decode of every clip: the KV caches are gone, the DiT and the shared cond cache stay.
        phases["decode"] = {
            "weights": dit_run,
            "vae": vae,
            "cond_cache": cond,
            "decode": decode,
            "audio_features": features,
            "context": context,
        }
    bands = {
        p: terms.context_band_bytes
        + terms.activation_band * c.get("activations", 0)
        + terms.decode_band * c.get("decode", 0)
        + terms.audio_band * max(c.get("audio_features", 0) - features, 0)
        for p, c in phases.items()
    }
    estimated = {}
    for p, c in phases.items():  # the estimated share of each phase, and what calibration fits it by
        live_share = live if c.get("activations") else 0.0
        transient = max(c.get("audio_features", 0) - features, 0)
        estimated[p] = {
            "bytes": c.get("context", 0) + live_share + c.get("decode", 0) + transient,
            "token_dims": live_tokens * shape.dim if live_share else 0.0,
            "decode_pixels": geo.height * geo.width * VIDEO_FRAMES_PER_DECODE if c.get("decode") else 0.0,
        }
    usable = gpu.free_bytes - terms.fragmentation * gpu.total_bytes
    return GpuPrediction(rank, gpu.index, gpu.name, role, kind, phases, bands, usable, "text", estimated)


def predict(
    config: LaunchConfig, rank_gpus: tuple[Gpu, ...], summary: ComponentSummary, terms: EstimateTerms
) -> Prediction:
    """Every rank GPU's peak, phase by phase, and the host's. The input files are read once per file
    version (read_per_file_version); the arithmetic is memoised per configuration, machine, sizes, terms
    and inputs, so a command that asks the same question many times (fit.peak, host.ram, the planner's
    search, the advice) computes it once."""
    image_hw, note = reference_hw(config)
    inputs = Inputs(image_hw, audio_seconds(config), lora_params(config))
    return _predict(config, tuple(rank_gpus), summary, terms, inputs, note)


@functools.lru_cache(maxsize=1024)
def _predict(
    config: LaunchConfig,
    rank_gpus: tuple[Gpu, ...],
    summary: ComponentSummary,
    terms: EstimateTerms,
    inputs: Inputs,
    note: str | None,
) -> Prediction:
    image_hw = inputs.image_hw
    geo = geometry(config, image_hw)
    gpus = tuple(
        predict_rank(r, g, config, summary, terms, geo, inputs) for r, g in enumerate(rank_gpus[: config.nproc])
    )
    missing = max(0, config.nproc - len(rank_gpus))
    refusals = tuple(v for v in violations(config, image_hw) if v.fatal)
    notes: tuple[str, ...] = (note,) if note else ()
    if inputs.audio_seconds is None:
        notes += ("no --audio (or --audio-seconds): the audio features, which grow with its length, are left out",)
    host = predict_host(config, summary, geo, inputs.audio_seconds)
    return Prediction(
        config,
        geo,
        gpus,
        summary.source,
        terms,
        missing_gpus=missing,
        notes=notes,
        refusals=refusals,
        inputs=inputs,
        host=host,
    )


VIDEO_SAVE_COPIES = 3.25  # estimate: the fp32 video, save_video's clamped and grid copies, its uint8 frames


@dataclass(frozen=True)
class HostPrediction:
    """Host RAM at its two peaks (docs/memory-model.md, "Host RAM"): every process building T5 at once, and
    the saving rank holding the whole video in fp32 while it writes the MP4."""

    processes: int
    load_per_process: float  # T5 built in fp32 on the CPU, then its bf16 state dict loaded; wav2vec2 in fp32
    parked: float  # the bf16 DiT parked on the CPU (one GPU with --enable-online-decode and offloading)
    frames: int | None  # frames of the whole video; None: the audio's length is unknown
    frame_bytes: int  # one decoded frame, fp32 RGB

    @property
    def load_bytes(self) -> float:
        return self.processes * self.load_per_process + self.parked

    @property
    def save_bytes(self) -> float | None:
        return None if self.frames is None else self.frames * self.frame_bytes * VIDEO_SAVE_COPIES + self.parked

    @property
    def peak_bytes(self) -> float:
        return max(self.load_bytes, self.save_bytes or 0.0)

    @property
    def binding(self) -> str:
        return "save" if (self.save_bytes or 0.0) > self.load_bytes else "load"

    def to_dict(self) -> dict:
        gib_ = lambda b: None if b is None else round(b / GIB, 3)  # noqa: E731
        return {
            "processes": self.processes,
            "load_per_process_gib": gib_(self.load_per_process),
            "load_gib": gib_(self.load_bytes),
            "video_frames": self.frames,
            "save_gib": gib_(self.save_bytes),
            "peak_gib": gib_(self.peak_bytes),
            "binding": self.binding,
        }


def predict_host(
    config: LaunchConfig, summary: ComponentSummary, geo: Geometry, seconds: float | None
) -> HostPrediction:
    t5_fp32 = summary.t5.params * 4  # with torch.device('cpu'): the encoder built in fp32, then .to(bf16)
    t5_load = max(t5_fp32, 2 * summary.t5.bytes)  # and torch.load's bf16 state dict beside the bf16 model
    per_process = t5_load + summary.wav2vec2.bytes  # wav2vec2 from_pretrained on the CPU, fp32
    parked = (
        summary.dit.bytes if config.mode == "single" and config.enable_online_decode and config.offload_model else 0
    )
    frames = None
    if seconds is not None:
        clips = min(config.num_clip, clips_for_audio(seconds, config.infer_frames))
        frames = clips * config.infer_frames
    return HostPrediction(config.nproc, per_process, parked, frames, geo.height * geo.width * 3 * 4)


def audio_seconds(config: LaunchConfig) -> float | None:
    """--audio-seconds, else --audio's length from its header (soundfile reads no samples for it)."""
    if config.audio_seconds is not None:
        return config.audio_seconds
    if config.audio is None or not config.audio.is_file() or not_regular_file(config.audio):
        return None
    return _audio_header_seconds(config.audio)


@read_per_file_version
def _audio_header_seconds(path: Path) -> float | None:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, ValueError, TypeError):  # input.audio says why
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames >= 0 else None


def lora_params(config: LaunchConfig) -> int | None:
    """The adapters' parameters from a local LoRA file's header (lora_A and lora_B tensors); None for a
    hub id or an unreadable file: the reference's target modules at rank 128 stand in."""
    if not config.lora_path:
        return None
    path = Path(config.liveavatar or ".") / config.lora_path
    if not path.is_file() or not_regular_file(path):
        return None
    return _lora_file_params(path)


@read_per_file_version
def _lora_file_params(path: Path) -> int | None:
    from avatardoctor.ckpt.safetensors_file import CkptFileError, read_header

    try:
        header = read_header(path)
    except CkptFileError:  # la.lora says why
        return None
    counted = [math.prod(t.shape) for t in header.tensors if "lora_A" in t.name or "lora_B" in t.name]
    return sum(counted) if counted else None
