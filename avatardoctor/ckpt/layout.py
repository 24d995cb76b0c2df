"""What a Wan2.2-S2V-14B checkpoint folder holds, as Live Avatar opens it, and as the seeds tell it.

Upstream (what `--ckpt_dir` must hold, at 9c2c38d): config.json, diffusion_pytorch_model.safetensors.index.json
    + its shards (CausalWanModel_S2V.from_pretrained, causal_s2v_pipeline_tpp.py:159-164), the umT5 .pth,
    the VAE .pth and the google/umt5-xxl tokenizer (wan_2_2/configs/wan_s2v_14B_modified.py:12-16, opened
    at causal_s2v_pipeline_tpp.py:126-132) and the wav2vec2 folder (causal_s2v_pipeline_tpp.py:181-186).
Seed articles: config.json, model.safetensors.index.json + model-0000N-of-0000M.safetensors, and T5
    "in ckpt/t5-large/": a layout Live Avatar does not open.
"""

from __future__ import annotations

from dataclasses import dataclass

UPSTREAM_INDEX = "diffusion_pytorch_model.safetensors.index.json"
SEED_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = "google/umt5-xxl"
WAV2VEC2_DIR = "wav2vec2-large-xlsr-53-english"
UPSTREAM_REPO = "Wan-AI/Wan2.2-S2V-14B"
DOWNLOAD = f"huggingface-cli download {UPSTREAM_REPO} --local-dir ckpt/Wan2.2-S2V-14B"


@dataclass(frozen=True)
class Component:
    key: str
    label: str
    files: tuple[str, ...]  # each required
    any_of: tuple[str, ...] = ()  # at least one required (alternative formats)


# The files each component's loader opens, relative to the checkpoint folder. The DiT's shards
# come from its index and are added when the index is read.
COMPONENTS = (
    Component("config", "DiT config", (CONFIG,)),
    Component("dit", "DiT (diffusion transformer)", (UPSTREAM_INDEX,)),
    Component("t5", "umT5-XXL text encoder", (T5_FILE,)),
    Component("vae", "Wan2.1 VAE", (VAE_FILE,)),
    Component(
        "tokenizer",
        "umT5 tokenizer",
        (f"{TOKENIZER_DIR}/tokenizer_config.json",),
        (f"{TOKENIZER_DIR}/spiece.model", f"{TOKENIZER_DIR}/tokenizer.json"),
    ),
    Component(
        "wav2vec2",
        "wav2vec2 audio encoder",
        (f"{WAV2VEC2_DIR}/config.json", f"{WAV2VEC2_DIR}/preprocessor_config.json", f"{WAV2VEC2_DIR}/vocab.json"),
        (f"{WAV2VEC2_DIR}/model.safetensors", f"{WAV2VEC2_DIR}/pytorch_model.bin"),
    ),
)
BY_KEY = {c.key: c for c in COMPONENTS}
SEED_NOTE = (
    f"this folder has the layout the seed articles describe ({SEED_INDEX} + model-0000N-of-0000M.safetensors); "
    f"Live Avatar opens {UPSTREAM_INDEX} and its shards, and the umT5 .pth in this folder (not ckpt/t5-large/)"
)
