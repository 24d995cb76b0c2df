"""Live Avatar as its code really is: the pinned commit, the launch, the requirements and the geometry.

Every fact here is read from upstream's code at UPSTREAM_COMMIT and cited by file:line in
docs/upstream.md; nothing is copied from it. This module is the bottom layer (it imports nothing of
avatardoctor): the configuration, the rules (avatardoctor.rules), the prediction, the checks, the
planner and the runner read upstream through it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

UPSTREAM_REPO = "https://github.com/Alibaba-Quark/LiveAvatar"
UPSTREAM_COMMIT = "9c2c38de1715e553127b42c82cb959f756b02595"  # the rules below were verified at this commit
ENTRY_SCRIPT = "minimal_inference/s2v_streaming_interact.py"  # every CLI script's entry
GRADIO_ENTRY = "minimal_inference/gradio_app.py"  # both gradio scripts' entry
TRAINING_CONFIG = "liveavatar/configs/s2v_causal_sft.yaml"
# The files these rules were read from: a checkout that changed one of them may not follow them.
RULE_FILES = (
    ENTRY_SCRIPT,
    GRADIO_ENTRY,
    "liveavatar/models/wan/causal_s2v_pipeline_tpp.py",
    "liveavatar/models/wan/causal_s2v_pipeline.py",
    "liveavatar/models/wan/causal_model_s2v.py",
    "liveavatar/models/wan/causal_motioner.py",
    "liveavatar/models/wan/wan_2_2/modules/attention.py",
    "liveavatar/models/wan/wan_2_2/modules/model.py",
    "liveavatar/models/wan/wan_2_2/distributed/fsdp.py",
    "liveavatar/utils/load_weight_utils.py",
    TRAINING_CONFIG,
)

# argparse choices of --size (width*height), the same in both entries
SIZES = (
    "720*1280",
    "1280*720",
    "480*832",
    "832*480",
    "704*1280",
    "1280*704",
    "1024*704",
    "704*1024",
    "720*400",
    "704*384",
    "688*368",
    "384*256",
)
SCRIPT_SIZE = {"tpp": "720*400", "single": "704*384"}  # infinite_inference_{multi,single}_gpu.sh --size
SCRIPT_PORT = {"tpp": 29102, "single": 29101}  # the CLI scripts' --master_port
GRADIO_PORT = {"tpp": 29502, "single": 29501}  # the gradio scripts' --master_port
GRADIO_SERVER_PORT = 7860
# What the gradio scripts add to the environment (gradio_multi_gpu.sh, gradio_single_gpu.sh); the
# HF_ENDPOINT mirror they also set is a regional choice, not a rule, and is left to the user.
GRADIO_ENV = {
    "TORCH_NCCL_BLOCKING_WAIT": "1",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "86400",
}
GRADIO_LACKS = ("--enable_online_decode",)  # CLI entry flags gradio_app.py's argparse refuses


# What the entry imports within seconds of the launch (and what the load needs), with requirements.txt's pins
# ("" for none): (distribution names, the import, pin). Missing fails the launch; off-pin may.
@dataclass(frozen=True)
class Requirement:
    dists: tuple[str, ...]
    module: str
    pin: str = ""
    gradio_only: bool = False


REQUIREMENTS = (
    Requirement(("torchvision",), "torchvision", ">=0.19.0"),
    Requirement(("diffusers",), "diffusers", ">=0.31.0"),
    Requirement(("transformers",), "transformers", ">=4.49.0,<=4.51.3"),
    Requirement(("numpy",), "numpy", ">=1.23.5,<2"),
    Requirement(("peft",), "peft", "==0.17.1"),
    Requirement(("accelerate",), "accelerate", ">=1.1.1"),  # diffusers' device_map load
    Requirement(("tokenizers",), "tokenizers", ">=0.20.3"),
    Requirement(("Pillow",), "PIL"),
    Requirement(("easydict",), "easydict"),
    Requirement(("ftfy",), "ftfy"),
    Requirement(("regex",), "regex"),
    Requirement(("einops",), "einops"),
    Requirement(("tqdm",), "tqdm"),
    Requirement(("decord", "eva-decord"), "decord"),
    Requirement(("safetensors",), "safetensors"),
    Requirement(("librosa",), "librosa"),
    Requirement(("imageio",), "imageio"),
    Requirement(("imageio-ffmpeg",), "imageio_ffmpeg"),  # the MP4 writer at save time
    Requirement(("dashscope",), "dashscope"),
    Requirement(("PyYAML",), "yaml"),
    Requirement(("huggingface-hub",), "huggingface_hub"),
    Requirement(("gradio",), "gradio", gradio_only=True),
)

LORA_HUB_ID = "Quark-Vision/Live-Avatar"
LORA_FILE = "liveavatar.safetensors"
LORA_CACHE_DIR = "ckpt/LiveAvatar"  # hf_hub_download(cache_dir=...), relative to the launch folder
LORA_LOCAL = f"{LORA_CACHE_DIR}/{LORA_FILE}"  # where the README's download puts the file
LORA_DOWNLOAD = f"hf download {LORA_HUB_ID} {LORA_FILE} --local-dir {LORA_CACHE_DIR}"

# ---- geometry ------------------------------------------------------------------------------------

FRAMES_PER_LATENT = 4  # the VAE's temporal stride: latent frames = infer_frames // 4
LATENT_FRAMES_PER_BLOCK = 3  # each denoising block is 3 latent frames
FRAMES_PER_BLOCK = FRAMES_PER_LATENT * LATENT_FRAMES_PER_BLOCK  # 12 video frames
SPATIAL_STRIDE = 16  # VAE 8 px, then the (1, 2, 2) patch: one token per 16x16 px
COND_CAPACITY_TPP, COND_CAPACITY_SINGLE = 3000, 2800  # the conditioning cache's preallocated tokens


SIZE_PATTERN = re.compile(r"([1-9]\d{1,4})\*([1-9]\d{1,4})")  # --size: WIDTH*HEIGHT, as argparse takes it


class Size(str):
    """A --size value as upstream spells it ("704*384", width*height), parsed once: it is still that
    string (plans, JSON and flags carry it as text) and knows its width, height and area."""

    width: int
    height: int

    def __new__(cls, text: str) -> Size:
        if isinstance(text, Size):
            return text
        match = SIZE_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not WIDTH*HEIGHT in pixels, e.g. 704*384")
        size = super().__new__(cls, text)
        size.width, size.height = int(match[1]), int(match[2])
        return size

    @property
    def area(self) -> int:
        """The pixel budget upstream fits the image's aspect into."""
        return self.width * self.height


def padded_size(size: str, image_hw: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) Live Avatar really renders: the image's aspect within the --size area budget,
    padded up to multiples of 64, never upscaled (get_size_less_than_area). Without an image, the
    aspect of the --size string (width*height)."""
    size = Size(size)
    width, height, target = size.width, size.height, size.area
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


def area(size: str) -> int:
    """The pixel budget of a --size value ("720*400")."""
    return Size(size).area


def tokens_per_frame(height: int, width: int) -> int:
    return (height // SPATIAL_STRIDE) * (width // SPATIAL_STRIDE)


def cond_tokens(height: int, width: int) -> int:
    """Tokens the first prefill writes into the conditioning cache: the reference frame, then the
    motioner's FramePack buckets of 1, 2 and 16 latent frames patchified at (1,2,2), (2,4,4) and
    (4,8,8). About 2.5x one frame's tokens; exact for the 64-px multiples upstream renders."""
    lat_h, lat_w = height // 8, width // 8
    frame = (lat_h // 2) * (lat_w // 2)
    return frame + frame + (lat_h // 4) * (lat_w // 4) + 4 * (lat_h // 8) * (lat_w // 8)


def cond_capacity(mode: str) -> int:
    """The single-GPU pipeline shares one 2800-token cache; the TPP pipeline (every multi-process
    mode) gives each DiT rank 3000."""
    return COND_CAPACITY_SINGLE if mode == "single" else COND_CAPACITY_TPP


def denoised_blocks(infer_frames: int) -> int:
    """Whole 3-latent-frame blocks per clip: the frames beyond them are never denoised."""
    return infer_frames // FRAMES_PER_LATENT // LATENT_FRAMES_PER_BLOCK


def largest_size_that_fits(mode: str, image_hw: tuple[int, int] | None) -> str | None:
    """The --size choice with the largest rendered area whose conditioning tokens fit, for this image."""
    rendered = [(padded_size(s, image_hw), s) for s in SIZES]
    # The most pixels rendered; of the sizes that render as many, the smallest budget (no size is wasted).
    fitting = [(h * w, -area(s), s) for (h, w), s in rendered if cond_tokens(h, w) <= cond_capacity(mode)]
    return max(fitting)[2] if fitting else None


# ---- what the load does to the DiT (docs/upstream.md, "Memory-relevant facts") ---------------------

LORA_RANK = 128  # s2v_causal_sft.yaml lora_rank; PEFT 0.17.1 holds the adapters in fp32 until the merge
LORA_TARGETS = re.compile(r"\.(q|k|v|o|ffn\.0|ffn\.2)\.weight$")  # lora_target_modules "q,k,v,o,ffn.0,ffn.2"
LORA_BYTES_PER_PARAM = 4
# --fp8 converts every nn.Linear but these (the entry's ignore_keys); nn.Embedding weights are 2-D too
FP8_IGNORED = (
    "text_embedding",
    "time_embedding",
    "time_projection",
    "head.head",
    "casual_audio_encoder.encoder.final_linear",
)
NOT_LINEAR = ("trainable_cond_mask",)  # an nn.Embedding
# torch._scaled_mm with float8 e4m3, which --fp8's layers call, needs compute capability 8.9 (Ada, Hopper,
# Blackwell): elsewhere the launch can only run in bf16.
FP8_MIN_CC = (8, 9)
FP8_CONVERSION_BYTES_PER_PARAM = 3  # per layer, at once: the new layer's bf16 weight beside the old, then its fp8 copy


def lora_target(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and LORA_TARGETS.search(name) is not None


def fp8_converted(name: str, shape: tuple[int, ...]) -> bool:
    return (
        name.endswith(".weight")
        and len(shape) == 2
        and not any(key in name for key in FP8_IGNORED)
        and not any(name.startswith(n) for n in NOT_LINEAR)
    )


# Audio: wav2vec2 runs on the GPU over the whole audio; the bucketed features of every layer stay there
AUDIO_FEATURE_LAYERS, AUDIO_FEATURE_DIM = 25, 1024  # wav2vec2-large: 24 layers + the embedding output
VIDEO_FPS = 25  # cfg.sample_fps: the saved video's rate, and the audio features' rate
WAV2VEC2_FRAMES_PER_SECOND = 50  # wav2vec2's frame rate over 16 kHz audio
AUDIO_LOAD_RATE = 16_000  # librosa.load(audio_path, sr=16000)
AUDIO_FEATURE_RATE = 30  # AudioEncoder.video_rate: wav2vec2's frames are interpolated to 30 per second
# wav2vec2's feature encoder, (kernel, stride) per convolution: 400 samples in, one frame per 320
WAV2VEC2_CONVOLUTIONS = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))

# Speed upstream publishes, for the same class of box (GPU name, processes): generated frames per second of wall
# time, steady state. Each with its source (docs/upstream.md, "Published speed"); nothing unverified is listed.
PUBLISHED_SPEEDS = (
    ("H800", 5, 45.0, "README.md:46 at 9c2c38d (v1.1: fp8, compile, 4 steps): 45 FPS on multi-card H800"),
    ("H800", 5, 20.0, "README.md:42 at 770bffc (before v1.1, 4 steps): 20 FPS on 5xH800"),
)


def audio_feature_bytes(seconds: float) -> float:
    """audio_embed_bucket on every rank for the whole run: every layer's features at the video's rate, bf16."""
    return AUDIO_FEATURE_LAYERS * AUDIO_FEATURE_DIM * VIDEO_FPS * 2 * seconds


def clips_for_audio(seconds: float | Fraction, infer_frames: int) -> int:
    """Clips upstream makes for this much audio (its cap on --num_clip), step by step as its code computes it:
    librosa's resampled length, wav2vec2's frames, those interpolated to 30 per second, then
    int(frames / (infer_frames * 30/25)) + 1 in floats as upstream writes it. Pass a Fraction (samples / rate)
    where the exact length is known: 71.04 s makes 37 clips, a float product would make 38."""
    exact = seconds if isinstance(seconds, Fraction) else Fraction(seconds).limit_denominator(10**6)
    frames = math.ceil(exact * AUDIO_LOAD_RATE)
    for kernel, stride in WAV2VEC2_CONVOLUTIONS:
        frames = max(0, (frames - kernel) // stride + 1)
    features = int(frames / float(WAV2VEC2_FRAMES_PER_SECOND) * AUDIO_FEATURE_RATE)
    return int(features / (infer_frames * (AUDIO_FEATURE_RATE / VIDEO_FPS))) + 1


# ---- start-up rules -------------------------------------------------------------------------------

MULTI_PROCESS_MODES = ("tpp", "fsdp", "seed-4gpu")  # upstream's TPP pipeline: one process per GPU
ALL_MODES = ("tpp", "single", "fsdp", "seed-4gpu")
ENTRIES = ("cli", "gradio")


def str2bool(value: str) -> bool:
    """How the entry parses --offload_model (wan_2_2/utils/utils.py str2bool): ValueError for anything else."""
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise ValueError("Boolean value expected (True/False)")


# The prompt's cues, as upstream's prompt extender asks its model to add them (time, light source, light
# intensity and angle, colour tone, shot size, camera angle, composition), in the two languages upstream
# writes them: liveavatar/models/wan/wan_2_2/utils/system_prompt.py:6-14 (Chinese) and :35-43 (English).
# The example prompts mix them with the scene: infinite_inference_multi_gpu.sh:14 ("warm, dynamic lighting
# from the forge", "Style of Blizzard Entertainment cinematics"), minimal_inference/gradio_app.py:750 (docs/upstream.md §14).
PROMPT_LIGHTING_OR_STYLE_EN = tuple(
    "light lighting lit sunlight daylight moonlight firelight studio soft warm cool cinematic cinematics "
    "realistic photo photograph style background bokeh portrait shot camera close-up closeup composition "
    "colors colours sunny overcast".split()
)
PROMPT_LIGHTING_OR_STYLE_ZH = tuple("光 色调 镜头 中景 近景 全景 特写 拍摄 构图 风格 写实 电影 照片 背景".split())
