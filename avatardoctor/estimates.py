"""The estimated terms of the memory model: everything the predictor cannot read from the
checkpoint's tensors. Each has a default (docs/memory-model.md) and an uncertainty band; measured
runs replace both (`avatardoctor calibrate`). Exact terms (weights, KV caches) live in the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

from avatardoctor.units import GIB


@dataclass(frozen=True)
class EstimateTerms:
    # CUDA context, cuBLAS/cuDNN workspaces and the caching allocator's slack, per process: about
    # 0.6-1.2 GiB on Hopper with torch 2.8, 0.3 GiB in the seeds' "21.48 GiB loaded" (21.17 GiB of
    # weights plus theirs). An honest band until calibration measures it.
    context_bytes: float = 0.75 * GIB
    context_band_bytes: float = 0.45 * GIB
    # NCCL's buffers per peer process (multi-process modes only).
    nccl_bytes_per_peer: float = 0.06 * GIB
    # Attention-peak activations per live token per model dimension: 235.5 KB/token at dim 5120
    # (fp32 residual and norms, complex128 RoPE tables, bf16 q/k/v), from a code walk.
    activation_bytes_per_token_dim: float = 235.5e3 / 5120
    activation_band: float = 0.5  # relative
    # VAE decode working set per output pixel of one streamed chunk (12 video frames).
    decode_bytes_per_pixel: float = 500.0
    decode_band: float = 0.6  # relative
    # wav2vec2's forward over the whole audio at once: the hidden states of every layer (25 x 1024 at
    # 50 frames/s, bf16) and the convolutional front end, per second of audio; a transient.
    audio_encoding_bytes_per_second: float = 2 * 25 * 1024 * 50 * 2
    audio_band: float = 0.5  # relative, on the encoder's transient
    # Allocator fragmentation: the share of each GPU's memory kept out of "usable".
    fragmentation: float = 0.03
    source: str = "default"  # or "calibrated from N runs"
    runs: int = 0


DEFAULT_TERMS = EstimateTerms()
