"""Speed the way Live Avatar's users compare it, from a run's phase timeline (logs/phases.csv).

The load (everything from the launch to the first clip), the first clip (it carries the KV-cache prefill and the first
torch.compile pass: the warm-up), then the steady state: seconds per clip over clips 2 to N, and frames
generated per second of wall time (a clip is `infer_frames` frames) beside the video's own rate
(upstream.VIDEO_FPS, cfg.sample_fps), which is what "real time" means. The published figure for the same
class of box is shown beside it, with its source.

Per rank, the same figures from logs/rank_clips.csv (runner/logparse.py): each rank's clip 1 starts when that rank
finished preparing its inputs and each clip ends at that rank's last bar of it. In TPP the ranks are pipeline
stages (rank i runs step i of every block), so their steady states agree and the slowest rank is the pipeline's.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from avatardoctor.runner.logparse import is_clip
from avatardoctor.upstream import PUBLISHED_SPEEDS, VIDEO_FPS


def clip_seconds(phases: Sequence[tuple[str, float, float]]) -> list[float]:
    """Each clip's denoising time, in clip order."""
    return [end - start for name, start, end in phases if is_clip(name)]


def _clips(first_clip_at: float, clips: list[float], infer_frames: int) -> dict:
    """Load, warm-up and steady state from each clip's seconds (clip 1 first)."""
    steady = clips[1:]
    per_clip = statistics.median(steady) if steady else None  # the median: one stalled clip does not move it
    fps = infer_frames / per_clip if per_clip else None
    return {
        "load_s": round(first_clip_at, 2),  # from the launch (phases count from it): start-up included
        "first_clip_s": round(clips[0], 2),
        "clip_s": [round(c, 2) for c in clips],
        "steady_clips": len(steady),
        "steady_s_per_clip": None if per_clip is None else round(per_clip, 3),
        "fps": None if fps is None else round(fps, 2),
    }


def speed(phases: Sequence[tuple[str, float, float]], infer_frames: int) -> dict | None:
    """The speed fields of summary.json (seconds, frames per second); None before the first clip."""
    clips = clip_seconds(phases)
    if not clips:
        return None
    found = _clips(next(start for name, start, _ in phases if name.startswith("clip ")), clips, infer_frames)
    fps = found["fps"]
    return {
        **found,
        "frames_per_clip": infer_frames,
        "video_fps": VIDEO_FPS,
        "realtime_factor": None if fps is None else round(fps / VIDEO_FPS, 3),
    }


def rank_speed(rank_clips: Sequence[tuple[int, int, float, float]], infer_frames: int) -> list[dict]:
    """summary.json's speed.per_rank from (rank, clip, start_s, end_s) rows: each rank's load, warm-up clip and
    steady state, rank by rank."""
    by_rank: dict[int, list[tuple[int, float, float]]] = {}
    for rank, clip, start, end in sorted(rank_clips):
        by_rank.setdefault(rank, []).append((clip, start, end))
    return [
        {"rank": rank, **_clips(clips[0][1], [end - start for _, start, end in clips], infer_frames)}
        for rank, clips in by_rank.items()
    ]


def per_rank_note(rank_clips_recorded: bool, per_rank: list[dict]) -> str | None:
    """Why a run with clips has no per-rank figures; None when it has them."""
    if not rank_clips_recorded:
        return "no logs/rank_clips.csv (recorded before per-rank timing): the figures are the pipeline's only"
    if not per_rank:
        return (
            "the log's progress bars carry no rank prefix (torchrun without --tee mixes the ranks' output) and no "
            "rank recorded its own clips (run and demo do, through their shim; not with --no-shim), so no bar can "
            "be given to a rank: the figures are the pipeline's only; torchrun --tee 3 prefixes each line"
        )
    return None


def published(gpu_names: Sequence[str], nproc: int) -> list[dict]:
    """Upstream's published figures for this class of box (every GPU that model, that many processes)."""
    return [
        {"fps": fps, "source": source}
        for model, ranks, fps, source in PUBLISHED_SPEEDS
        if gpu_names and all(model in name for name in gpu_names) and nproc == ranks
    ]
