"""What a report says, computed once (run once, render many): per-GPU measured vs predicted peaks,
the failure and its remedy, the configuration, durations and throughput. summary.json is this."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from avatardoctor import __version__
from avatardoctor.reports.health import health_events
from avatardoctor.reports.runfolder import RunDebug, RunPlan, RunRecord
from avatardoctor.reports.timeline import Timeline
from avatardoctor.runner.folder import RunFolder
from avatardoctor.runner.growth import MIN_REQUESTS, WARN_WITHIN, gpu_growth
from avatardoctor.runner.speed import per_rank_note, published, rank_speed, speed

SCHEMA = "avatardoctor.report/1"
COMPARE_SCHEMA = "avatardoctor.compare/1"  # `report --compare`: two summaries side by side


def _round(x, digits=2):
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def phase_at(phases: pd.DataFrame, t: float) -> str | None:
    hits = phases[(phases["start_s"] <= t) & (t <= phases["end_s"])]
    return str(hits["phase"].iloc[-1]) if len(hits) else None


def used_at_failure_gib(samples: pd.DataFrame, failure: dict | None, gpu: str) -> float | None:
    """What the GPU that failed held at the failure, with the allocation it was refused: the last sample
    at or before the failure plus tried_to_allocate_mib. None for any other GPU, or without those facts."""
    failure = failure or {}
    at, tried = failure.get("at_elapsed_s"), failure.get("tried_to_allocate_mib")
    if str(failure.get("gpu")) != gpu or not isinstance(at, (int, float)):
        return None
    before = samples[(samples["elapsed_s"] <= at) & samples["used_mib"].notna()]
    if not len(before):
        return None
    return (float(before["used_mib"].iloc[-1]) + (tried if isinstance(tried, (int, float)) else 0.0)) / 1024


def gpu_rows(timeline: Timeline, run: RunRecord | None) -> list[dict]:
    """Per GPU; headroom is usable minus the measured peak, except on the GPU that failed: there it is taken
    at the failure (what it held then plus the allocation it was refused), which is what ran out."""
    rows = []
    phases = run.phases if run else pd.DataFrame(columns=["phase", "start_s", "end_s"])
    predicted = run.predicted if run else {}
    failure = run.debug.failure if run else None
    by_gpu = timeline.by_gpu()
    for gpu in timeline.gpus:
        s = by_gpu[gpu]
        peak = s.loc[s["used_mib"].idxmax()] if s["used_mib"].notna().any() else None  # all [N/A]: no peak
        measured = None if peak is None else peak.used_mib / 1024
        pred = predicted.get(gpu)
        predicted_peak, usable = (pred.peak_gib, pred.usable_gib) if pred else (None, None)
        total = s["total_mib"].max() / 1024 if s["total_mib"].notna().any() else None
        at_failure = used_at_failure_gib(s, failure, gpu)
        needed = at_failure if at_failure is not None else measured
        rows.append(
            {
                "gpu": gpu,
                "name": timeline.gpu_names.get(gpu),
                "samples": int(len(s)),
                "measured_peak_gib": _round(measured),
                "peak_at_s": None if peak is None else _round(peak.elapsed_s, 1),
                "peak_phase": None if peak is None else phase_at(phases, peak.elapsed_s),
                "predicted_peak_gib": _round(predicted_peak),
                "predicted_phase": pred.phase if pred else None,
                "delta_gib": (
                    _round(measured - predicted_peak) if measured is not None and predicted_peak is not None else None
                ),
                "usable_gib": _round(usable),
                "total_gib": _round(total),
                "headroom_gib": _round(usable - needed) if needed is not None and usable is not None else None,
                "headroom_at": None
                if needed is None or usable is None
                else "failure"
                if at_failure is not None
                else "peak",
            }
        )
    return rows


def run_speed(timeline: Timeline, run: RunRecord | None) -> dict | None:
    """Load, warm-up and steady-state speed from the phases, beside upstream's published figure for this box, and
    each rank's from its clips where the log named ranks."""
    if run is None or run.phases.empty:
        return None
    frames = run.plan.config.get("infer_frames")
    frames = frames if isinstance(frames, int) and not isinstance(frames, bool) and frames > 0 else 48  # the scripts'
    found = speed([(str(r.phase), float(r.start_s), float(r.end_s)) for r in run.phases.itertuples()], frames)
    if found is None:
        return None
    nproc = run.plan.config.get("nproc")
    names = list(run.debug.gpu_names.values())  # the models NVML named, not the CSV's uuids
    clips = run.rank_clips
    rows = [] if clips is None else clips.itertuples(index=False, name=None)
    per_rank = rank_speed([(int(r), int(c), float(s), float(e)) for r, c, s, e in rows], frames)
    return {
        **found,
        "published": published(names, nproc if isinstance(nproc, int) else len(names)),
        "per_rank": per_rank,
        "per_rank_note": per_rank_note(clips is not None, per_rank),
    }


def request_rows(timeline: Timeline, run: RunRecord | None) -> list[dict]:
    """Each request the entry served, with each GPU's peak from its start until the next request's start
    (the last: until the samples end), so what a request leaves held counts against it."""
    if run is None or run.requests.empty:
        return []
    starts = run.requests["start_s"].to_numpy(dtype="float64")
    peaks: dict[str, list[float | None]] = {}
    for gpu, samples in timeline.by_gpu().items():  # sorted by time within each GPU (read_memory_csv)
        at = np.searchsorted(samples["elapsed_s"].to_numpy(), starts, side="left")
        used = samples["used_mib"].to_numpy()
        bounds = [*at, len(used)]
        peaks[gpu] = [_round(used[a:b].max() / 1024) if b > a else None for a, b in zip(bounds, bounds[1:])]
    return [
        {
            "request": n,
            "start_s": _round(r.start_s, 1),
            "end_s": _round(r.end_s, 1),
            "outcome": r.outcome,
            "peak_gib": {gpu: peaks[gpu][n - 1] for gpu in timeline.gpus if gpu in peaks},
        }
        for n, r in enumerate(run.requests.itertuples(), 1)
    ]


def memory_growth(requests: list[dict], gpus: list[dict]) -> dict | None:
    """Per GPU, the peaks' trend in GiB per request and the requests left before the limit (usable where the
    plan predicted it, else the card's total); None with fewer than MIN_REQUESTS requests."""
    if len(requests) < MIN_REQUESTS:
        return None
    rows = []
    for row in gpus:
        limit, kind = (row["usable_gib"], "usable") if row["usable_gib"] is not None else (row["total_gib"], "total")
        found = gpu_growth([r["peak_gib"].get(row["gpu"]) for r in requests], limit)
        if found is not None:
            rows.append({"gpu": row["gpu"], **found, "limit": None if limit is None else kind})
    return {"min_requests": MIN_REQUESTS, "warn_within": WARN_WITHIN, "gpus": rows}


def build_summary(source: Path, kind: str, timeline: Timeline, run: RunRecord | None = None) -> dict:
    debug, plan = (run.debug, run.plan) if run else (RunDebug(), RunPlan())
    span = (
        float(timeline.samples["elapsed_s"].max() - timeline.samples["elapsed_s"].min())
        if len(timeline.samples)
        else None
    )
    total_s = debug.durations.get("total_s", span)
    clips = debug.clips_done
    per_minute = clips / (total_s / 60) if clips is not None and total_s else None
    gpus = gpu_rows(timeline, run)
    requests = request_rows(timeline, run)
    notes = list(run.notes if run else timeline.notes)
    health = [] if run is None else health_events(RunFolder(run.path).gpu_health_csv, run.path, notes)
    return {
        "schema": SCHEMA,
        "avatardoctor_version": __version__,
        "source": {"kind": kind, "path": str(source)},
        "outcome": debug.outcome,
        "failure": debug.failure,
        "config": plan.config,
        "prompt": plan.prompt,
        "durations": {**debug.durations, "total_s": _round(total_s, 1)},
        "clips_done": clips,
        "clips_per_minute": _round(per_minute),
        "speed": run_speed(timeline, run),
        "start": timeline.start.isoformat() if timeline.start else None,
        "gpus": gpus,
        "requests": requests,
        "memory_growth": memory_growth(requests, gpus),
        "health_events": health,
        "phases": []
        if run is None
        else [
            {"phase": str(r.phase), "start_s": _round(r.start_s, 1), "end_s": _round(r.end_s, 1)}
            for r in run.phases.itertuples()
        ],
        "notes": list(dict.fromkeys(notes)),
    }
