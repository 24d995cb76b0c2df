"""The demo's memory, predicted as the real run's is: each rank's peak from the same model (predict.py), with the
component sizes read from the tiny checkpoint's own headers, keyed by the device each rank is measured on: the GPU
NVML reports for its CUDA device where the ranks run on CUDA, else the sampler's `cpu<r>`.

On the CPU the model is the GPU's where it says so (NOTE): a CPU rank's fixed cost is the interpreter and torch,
measured (RANK_BASELINE_BYTES), not a CUDA context; gloo has no NCCL buffers. On either, the demo's "VAE" is a conv
and an upsample, not Wan's decoder. So the figures are of the demo's own size; what they show is the real run's
shape: which rank peaks, in which phase, and the root unshard.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from avatardoctor.ckpt.scan import scan_checkpoint
from avatardoctor.config import LaunchConfig
from avatardoctor.estimates import DEFAULT_TERMS
from avatardoctor.machine.host import local_host
from avatardoctor.machine.model import Gpu
from avatardoctor.predict import predict
from avatardoctor.units import MIB
from avatardoctor.visible import Visible, visible_gpus

# A demo rank's RSS once its imports are done and gloo is up: 225 MiB with torch 2.13.0 (CPU build),
# Python 3.11, Linux x86-64, measured by tests/bench/bench_demo_baseline.py (docs/performance.md).
RANK_BASELINE_BYTES = 225 * MIB
BASELINE_BAND_BYTES = 32 * MIB  # another torch build or platform: an honest band, not a measurement
# Live Avatar's FSDP root unit is 4.17 GiB against the 21.48 GiB a rank holds loaded in the seeds' arithmetic
# (docs/memory-model.md): the demo's flat root parameter keeps that share of a demo rank's loaded RSS (43 MiB),
# so its unshard stands out of the baseline as the real one does.
ROOT_UNSHARD_BYTES = round(4.17 / 21.48 * RANK_BASELINE_BYTES) // 4 * 4  # whole fp32 values
# The demo's decode per output pixel per frame: the upsampled RGB video and its tanh, fp32.
DECODE_BYTES_PER_PIXEL = 2 * 3 * 4 / 12  # predict.py counts per pixel of a 12-frame chunk
CPU_NOTE = (
    "the demo's ranks run on the CPU: each predicted peak is the GPU model's, with the component sizes of the "
    f"tiny checkpoint, a measured {RANK_BASELINE_BYTES // MIB} MiB for the Python interpreter and torch in place "
    f"of the CUDA context, and the demo's {ROOT_UNSHARD_BYTES / MIB:.0f} MiB root unshard during the load; torch's "
    "CPU allocator and the interpreter's own growth are not modelled. Compare the shape (which rank peaks, when, "
    "the unshard), not equal figures."
)


GPU_NOTE = (
    "the demo's ranks run on GPUs: each predicted peak is the GPU model's with the component sizes of the tiny "
    f"checkpoint, so the CUDA context and NCCL's buffers are nearly all of it, with the demo's {ROOT_UNSHARD_BYTES / MIB:.0f} "
    "MiB root unshard during the load. Compare the shape (which rank peaks, when, the unshard), not equal figures."
)


def cuda_ordinal(local_rank: int, local_world: int, cuda_devices: int) -> int | None:
    """The CUDA device a rank computes on, its local rank, where every local rank has a GPU of its own; else None:
    every rank on the CPU. Never two ranks on one GPU: NCCL refuses that ("Duplicate GPU detected")."""
    return local_rank if cuda_devices and cuda_devices >= local_world else None


def cuda_device_count() -> int:
    """The CUDA devices torch sees here (0 without a CUDA build or driver): what each rank will see."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def rank_gpus(nproc: int, cuda_devices: int, visible: Visible) -> tuple[Gpu, ...] | None:
    """The GPU each rank computes on, as NVML numbers it (the sampler's device ids): CUDA device k is the k-th GPU
    CUDA_VISIBLE_DEVICES leaves (`visible`, in CUDA's order); None where the ranks run on the CPU, or where NVML does
    not show their GPUs (the sampler then records the ranks' RSS as `cpu<r>`)."""
    ordinals = [cuda_ordinal(rank, nproc, cuda_devices) for rank in range(nproc)]
    if any(k is None or k >= len(visible.gpus) for k in ordinals):
        return None
    return tuple(visible.gpus[k] for k in ordinals if k is not None)


def device_key(rank: int, gpus: tuple[Gpu, ...] | None) -> int | str:
    """A rank's device id in the prediction, as the sampler writes it: its GPU's NVML index, or `cpu<r>`."""
    return f"cpu{rank}" if gpus is None else gpus[rank].index


def demo_prediction(config: LaunchConfig, ckpt: Path) -> dict | None:
    """The prediction for the demo's ranks on this machine: on the GPUs CUDA will give them (NVML's view of
    CUDA_VISIBLE_DEVICES), or on the CPU."""
    gpus, cuda_devices = None, cuda_device_count()
    if cuda_devices:  # only then is NVML asked: a CPU box loads no binding
        from avatardoctor.machine.nvml import NvmlBackend

        visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), NvmlBackend().snapshot().gpus)
        gpus = rank_gpus(config.nproc, cuda_devices, visible)
    return demo_prediction_on(config, ckpt, gpus)


def demo_prediction_on(config: LaunchConfig, ckpt: Path, gpus: tuple[Gpu, ...] | None) -> dict | None:
    """The plan's prediction for the demo's ranks on these GPUs (rank r on gpus[r]; None: the CPU), as
    predict.Prediction.to_dict() writes it, each rank's index its device id (device_key); None when the tiny
    checkpoint's headers cannot be read. No calibration inputs: the demo's model is not Live Avatar's."""
    summary = scan_checkpoint(ckpt, ckpt.parent).summary
    if summary is None:
        return None
    if gpus is None:
        host = local_host()
        share = (host.ram_total_bytes or 0) // config.nproc, (host.ram_available_bytes or 0) // config.nproc
        devices = tuple(
            Gpu(r, f"CPU (rank {r}'s share of host RAM)", "", "", (0, 0), share[0], share[0] - share[1], share[1])
            for r in range(config.nproc)
        )
        terms = dataclasses.replace(
            DEFAULT_TERMS,
            context_bytes=RANK_BASELINE_BYTES,
            context_band_bytes=BASELINE_BAND_BYTES,
            nccl_bytes_per_peer=0.0,
            decode_bytes_per_pixel=DECODE_BYTES_PER_PIXEL,
            source="the demo's: a measured CPU baseline, no NCCL buffers, the demo's decode",
        )
    else:
        devices = gpus
        terms = dataclasses.replace(
            DEFAULT_TERMS,
            decode_bytes_per_pixel=DECODE_BYTES_PER_PIXEL,
            source="the demo's: the GPU model's CUDA context and NCCL buffers, the demo's decode",
        )
    prediction = predict(config, devices, summary, terms)
    ranks = [
        dataclasses.replace(g, phases={**g.phases, "load": {**g.phases["load"], "root_unshard": ROOT_UNSHARD_BYTES}})
        for g in prediction.gpus
    ]
    doc = dataclasses.replace(prediction, gpus=tuple(ranks)).to_dict()
    for entry in doc["gpus"]:
        entry["index"] = device_key(entry["rank"], gpus)
        del entry["calibration"]
    top = max(ranks, key=lambda g: g.peak_bytes)
    parts = {
        "Python and torch" if gpus is None else "CUDA context and NCCL buffers": top.components.get("context", 0),
        "root unshard": top.components.get("root_unshard", 0),
    }
    parts["the tiny checkpoint's weights"] = top.peak_bytes - sum(parts.values())
    said = " + ".join(f"{name} {b / MIB:.0f} MiB" for name, b in parts.items())
    where = f"cpu{top.rank}" if gpus is None else f"GPU {gpus[top.rank].index}"
    explanation = f"{where} ({top.role}) peaks at {top.phase}: {top.peak_bytes / MIB:.0f} MiB ({said})"
    return {**doc, "explanation": explanation, "notes": [CPU_NOTE if gpus is None else GPU_NOTE]}
