"""The demo's memory, predicted as the real run's is: each CPU rank's peak from the same model (predict.py),
with the component sizes read from the tiny checkpoint's own headers, keyed by the demo's devices (`cpu<r>`).

The model is the GPU's; a CPU rank differs where it says so (NOTE): its fixed cost is the interpreter and
torch, measured (RANK_BASELINE_BYTES), not a CUDA context; gloo has no NCCL buffers; the demo's "VAE" is a
conv and an upsample, not Wan's decoder. So the figures are of the demo's own size; what they show is the
real run's shape: which rank peaks, in which phase, and the root unshard.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from avatardoctor.ckpt.scan import scan_checkpoint
from avatardoctor.config import LaunchConfig
from avatardoctor.estimates import DEFAULT_TERMS
from avatardoctor.machine.host import local_host
from avatardoctor.machine.model import Gpu
from avatardoctor.predict import predict
from avatardoctor.units import MIB

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
NOTE = (
    "the demo's ranks run on the CPU: each predicted peak is the GPU model's, with the component sizes of the "
    f"tiny checkpoint, a measured {RANK_BASELINE_BYTES // MIB} MiB for the Python interpreter and torch in place "
    f"of the CUDA context, and the demo's {ROOT_UNSHARD_BYTES / MIB:.0f} MiB root unshard during the load; torch's "
    "CPU allocator and the interpreter's own growth are not modelled. Compare the shape (which rank peaks, when, "
    "the unshard), not equal figures."
)


def device_id(rank: int) -> str:
    """The device the sampler records a CPU rank as (runner/sampler.py)."""
    return f"cpu{rank}"


def demo_prediction(config: LaunchConfig, ckpt: Path) -> dict | None:
    """The plan's prediction for the demo's ranks, as predict.Prediction.to_dict() writes it, with each rank's
    device id as its index; None when the tiny checkpoint's headers cannot be read. No calibration inputs:
    a CPU rank's RSS must never calibrate the GPU model."""
    summary = scan_checkpoint(ckpt, ckpt.parent).summary
    if summary is None:
        return None
    host = local_host()
    share = (host.ram_total_bytes or 0) // config.nproc, (host.ram_available_bytes or 0) // config.nproc
    cpus = tuple(
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
    prediction = predict(config, cpus, summary, terms)
    ranks = [
        dataclasses.replace(g, phases={**g.phases, "load": {**g.phases["load"], "root_unshard": ROOT_UNSHARD_BYTES}})
        for g in prediction.gpus
    ]
    doc = dataclasses.replace(prediction, gpus=tuple(ranks)).to_dict()
    for entry in doc["gpus"]:
        entry["index"] = device_id(entry["rank"])
        del entry["calibration"]
    top = max(ranks, key=lambda g: g.peak_bytes)
    parts = {
        "Python and torch": top.components.get("context", 0),
        "root unshard": top.components.get("root_unshard", 0),
    }
    parts["the tiny checkpoint's weights"] = top.peak_bytes - sum(parts.values())
    said = " + ".join(f"{name} {b / MIB:.0f} MiB" for name, b in parts.items())
    explanation = f"{device_id(top.rank)} ({top.role}) peaks at {top.phase}: {top.peak_bytes / MIB:.0f} MiB ({said})"
    return {**doc, "explanation": explanation, "notes": [NOTE]}
