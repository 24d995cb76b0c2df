"""Run folders as `avatardoctor run` writes them (docs/run-folder.md), made of real files, for the
report tests and benchmark: a TPP run on five H800s whose GPU 2 runs out of memory in clip 4."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

PROMPT = 'A host says "hi" <script>alert(1)</script> & waves'
PHASES = [("load", 0, 60), ("lora merge", 60, 70), ("fp8", 70, 80), ("text encoding", 80, 95)] + [
    (f"clip {k} denoise", 95 + 100 * (k - 1), 95 + 100 * k) for k in range(1, 5)
]


OOM_CLIMB_TO_MIB = 77000  # what the failed GPU holds at the failure: 75.20 GiB of its usable 77.26


def memory_curve(t: np.ndarray, gpu: int) -> np.ndarray:
    """MiB used: load ramp, fp8 drop, T5, then a sawtooth while denoising; GPU 4 decodes."""
    mib = np.interp(t, [0, 60, 70, 80, 95, 100], [500, 31600, 31900, 16600, 27700, 37600])
    wave = 2400 * (0.5 + 0.5 * np.sin(t / 7.0)) * (t > 100)
    return mib + wave + (gpu == 4) * 1800 * (t > 100)


def make_run(
    root: Path, gpus: int = 5, seconds: float = 480.0, hz: float = 10.0, oom_gpu: int | None = 2, with_plan: bool = True
) -> Path:
    logs = root / "logs"
    logs.mkdir(parents=True)
    t = np.arange(0, seconds, 1 / hz)
    frames = []
    for g in range(gpus):
        used = memory_curve(t, g)
        if g == oom_gpu:
            # clip 4's caches climb to the limit in its last 15 s; the allocation that failed comes on top
            climb = np.clip((t - (seconds - 15)) / 14, 0, 1)
            used = used + (OOM_CLIMB_TO_MIB - used) * climb
        frames.append(
            pd.DataFrame(
                {
                    "time": pd.Timestamp("2026-11-20T09:00:00Z") + pd.to_timedelta(t, unit="s"),
                    "elapsed_s": t.round(3),
                    "gpu": g,
                    "uuid": f"GPU-{g:08d}-0000-0000-0000-000000000000",
                    "memory_used_mib": used.round(0),
                    "memory_total_mib": 81559,
                    "utilization_pct": 97,
                }
            )
        )
    pd.concat(frames).sort_values(["elapsed_s", "gpu"], kind="stable").to_csv(logs / "gpu_memory.csv", index=False)
    pd.DataFrame(PHASES, columns=["phase", "start_s", "end_s"]).to_csv(logs / "phases.csv", index=False)
    if with_plan:
        plan = {
            "schema": "avatardoctor.plan/1",
            "mode": "tpp",
            "nproc": gpus,
            "argv": ["--size", "720*400", "--prompt", PROMPT],
            "config": {
                "mode": "tpp",
                "nproc": gpus,
                "size": "720*400",
                "infer_frames": 48,
                "fp8": False,
                "offload_model": False,
            },
            "prediction": {
                "verdict": "fits",
                "gpus": [
                    {"index": g, "peak_gib": 43.5 if g == gpus - 1 else 41.2, "usable_gib": 77.26, "phase": "denoise"}
                    for g in range(gpus)
                ],
            },
        }
        (root / "plan.json").write_text(json.dumps(plan))
    debug = {
        "schema": "avatardoctor.debug/1",
        "outcome": "oom" if oom_gpu is not None else "success",
        "failure": None
        if oom_gpu is None
        else {
            "class": "oom",
            "gpu": oom_gpu,
            "phase": "clip 4 denoise",
            "at_elapsed_s": seconds - 1,
            "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.31 GiB.",
            "tried_to_allocate_mib": 2365,
            "remedy": "--offload-kv-cache or a smaller --size",
        },
        "durations": {"total_s": seconds},
        "clips_done": 3,
    }
    (root / "debug_info.json").write_text(json.dumps(debug))
    return root


GRADIO_REQUEST_S = 100.0  # each request of the gradio fixture starts this long after the one before
GRADIO_USABLE_GIB = 77.26


def make_gradio_run(root: Path, peaks_gib: list[list[float]], outcomes: list[str] | None = None) -> Path:
    """A Gradio session on len(peaks_gib[0]) GPUs: request k (from 1) starts at k * GRADIO_REQUEST_S after a
    40 s load; GPU g sits at 30 GiB between requests and climbs to peaks_gib[k-1][g] 20 s into request k. The
    app was stopped with Ctrl-C after the last request (the Gradio entry never exits on its own)."""
    logs = root / "logs"
    logs.mkdir(parents=True)
    end = GRADIO_REQUEST_S * (len(peaks_gib) + 1)
    t = np.arange(0, end, 0.5)
    frames = []
    for g in range(len(peaks_gib[0])):
        used = np.full(t.shape, 30.0 * 1024)
        for k, peaks in enumerate(peaks_gib, 1):
            spike = (t >= k * GRADIO_REQUEST_S + 15) & (t < k * GRADIO_REQUEST_S + 25)
            used[spike] = peaks[g] * 1024
        frames.append(
            pd.DataFrame(
                {
                    "time": pd.Timestamp("2026-11-20T09:00:00Z") + pd.to_timedelta(t, unit="s"),
                    "elapsed_s": t,
                    "gpu": g,
                    "uuid": f"GPU-{g:08d}-0000-0000-0000-000000000000",
                    "memory_used_mib": used.round(0),
                    "memory_total_mib": 81559,
                    "utilization_pct": 97,
                }
            )
        )
    pd.concat(frames).sort_values(["elapsed_s", "gpu"], kind="stable").to_csv(logs / "gpu_memory.csv", index=False)
    pd.DataFrame([("load", 0, 40)], columns=["phase", "start_s", "end_s"]).to_csv(logs / "phases.csv", index=False)
    outcomes = outcomes or ["done"] * (len(peaks_gib) - 1) + ["open"]
    pd.DataFrame(
        [
            (k, k * GRADIO_REQUEST_S, k * GRADIO_REQUEST_S + 40, outcome)
            for k, outcome in zip(range(1, len(peaks_gib) + 1), outcomes)
        ],
        columns=["request", "start_s", "end_s", "outcome"],
    ).to_csv(logs / "requests.csv", index=False)
    gpus = len(peaks_gib[0])
    plan = {
        "schema": "avatardoctor.plan/1",
        "mode": "tpp" if gpus > 1 else "single",
        "nproc": gpus,
        "argv": ["--server_port", "7860"],
        "config": {"mode": "tpp" if gpus > 1 else "single", "nproc": gpus, "size": "720*400", "infer_frames": 48},
        "prediction": {
            "verdict": "fits",
            "gpus": [
                {"index": g, "peak_gib": 41.2, "usable_gib": GRADIO_USABLE_GIB, "phase": "denoise"} for g in range(gpus)
            ],
        },
    }
    (root / "plan.json").write_text(json.dumps(plan))
    debug = {"schema": "avatardoctor.debug/1", "outcome": "interrupted", "durations": {"total_s": end}, "clips_done": 1}
    (root / "debug_info.json").write_text(json.dumps(debug))
    return root
