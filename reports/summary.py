"""What a report says, computed once (run once, render many): per-GPU measured vs predicted peaks,
the failure and its remedy, the configuration, durations and throughput. summary.json is this."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from avatardoctor.reports.runfolder import RunFolder
from avatardoctor.reports.timeline import Timeline

SCHEMA = "avatardoctor.report/1"
CONFIG_KEYS = ("mode", "nproc", "size", "infer_frames", "num_clip", "sample_steps", "fp8", "offload_model",
               "offload_kv_cache", "t5_cpu", "dit_fsdp", "t5_fsdp", "num_gpus_dit")  # fmt: skip


def _round(x, digits=2):
    return None if x is None or pd.isna(x) else round(float(x), digits)


def phase_at(phases: pd.DataFrame, t: float) -> str | None:
    hits = phases[(phases["start_s"] <= t) & (t <= phases["end_s"])]
    return str(hits["phase"].iloc[-1]) if len(hits) else None


def gpu_rows(timeline: Timeline, run: RunFolder | None) -> list[dict]:
    rows = []
    phases = run.phases if run else pd.DataFrame(columns=["phase", "start_s", "end_s"])
    predicted = run.predicted if run else {}
    for gpu in timeline.gpus:
        s = timeline.samples[timeline.samples["gpu"] == gpu]
        peak = s.loc[s["used_mib"].idxmax()]
        measured = peak.used_mib / 1024
        pred = predicted.get(gpu, {})
        usable = pred.get("usable_gib")
        total = s["total_mib"].max() / 1024 if s["total_mib"].notna().any() else None
        rows.append(
            {
                "gpu": gpu,
                "name": timeline.gpu_names.get(gpu),
                "samples": int(len(s)),
                "measured_peak_gib": _round(measured),
                "peak_at_s": _round(peak.elapsed_s, 1),
                "peak_phase": phase_at(phases, peak.elapsed_s),
                "predicted_peak_gib": _round(pred.get("peak_gib")),
                "predicted_phase": pred.get("phase"),
                "delta_gib": _round(measured - pred["peak_gib"]) if pred.get("peak_gib") is not None else None,
                "usable_gib": _round(usable),
                "total_gib": _round(total),
                "headroom_gib": _round(usable - measured) if usable is not None else None,
            }
        )
    return rows


def build_summary(source: Path, kind: str, timeline: Timeline, run: RunFolder | None = None) -> dict:
    debug = run.debug if run else {}
    config = (run.plan.get("config") if run else None) or {}
    span = float(timeline.samples["elapsed_s"].max() - timeline.samples["elapsed_s"].min()) if len(timeline.samples) else None
    durations = debug.get("durations") if isinstance(debug.get("durations"), dict) else {}
    total_s = durations.get("total_s", span)
    clips = debug.get("clips_done")
    per_minute = clips / (total_s / 60) if isinstance(clips, (int, float)) and total_s else None
    failure = debug.get("failure") if isinstance(debug.get("failure"), dict) else None
    return {
        "schema": SCHEMA,
        "source": {"kind": kind, "path": str(source)},
        "outcome": debug.get("outcome"),
        "failure": failure,
        "config": {k: config[k] for k in CONFIG_KEYS if k in config},
        "prompt": next((a for p, a in zip(run.plan.get("argv", []), run.plan.get("argv", [])[1:]) if p == "--prompt"), None) if run else None,
        "durations": {**durations, "total_s": _round(total_s, 1)},
        "clips_done": clips,
        "clips_per_minute": _round(per_minute),
        "start": timeline.start.isoformat() if timeline.start else None,
        "gpus": gpu_rows(timeline, run),
        "phases": [] if run is None else [
            {"phase": str(r.phase), "start_s": _round(r.start_s, 1), "end_s": _round(r.end_s, 1)} for r in run.phases.itertuples()
        ],
        "notes": list(dict.fromkeys((run.notes if run else timeline.notes))),
    }
