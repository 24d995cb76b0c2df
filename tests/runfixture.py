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
