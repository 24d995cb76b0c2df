"""Phases and clip progress from Live Avatar's console output, read line by line as it arrives.

The texts are upstream's, both entries' (docs/upstream.md, "Log markers"). Nothing is kept
per line: a few counters per rank and one row per phase, so a week-long log costs what a minute does.

Phases are contiguous: one ends where the next begins, and a phase whose first sign comes late (a
clip's first tqdm bar arrives only when the bar's line ends) starts where the previous one ended.

- load: "Creating WanS2V pipeline.", the "INFO: loading ..." lines (T5, VAE), "Creating WanModel from"
- lora merge: "Use LoRA:" / "Downloading from HF Hub" until "LoRA merged successfully."
- fp8: upstream prints nothing for it; with a LoRA and `fp8=True` in the "Generation job args:" line
  it is the stretch from "LoRA merged successfully." to "Generating video ...". Without a LoRA it is
  not separable from load.
- text encoding: "Generating video ..." until "complete prepare conditional inputs" (audio and
  reference-image encoding included)
- clip N denoise: clip 1 from "complete prepare conditional inputs" (KV-cache prefill and the
  torch.compile warm-up included), each next clip from the end of the previous one
- decode: from the end of the last clip to "denoising video done" (ranks wait at a barrier for the
  VAE, so the first such line ends it)
- save: until "rank N done" of the saving rank (the last rank; rank 0's "Finished." comes before
  the VAE rank has written the video, so it ends save only in a single-GPU run)

Counting clips: a tqdm bar without a description (the denoising loop's; "Loading checkpoint shards:"
has one) starts at its `0/T` drawing, drawn once per bar, and ends at its `T/T` drawing, drawn once
or twice (last step, then close): a rank never has more ended bars than started ones, so the second
is ignored. A clip is `infer_frames // 12` bars (4 for the scripts' 48 frames: 3-latent-frame blocks)
on one rank: rank 0, or the first rank seen, when the lines carry rank prefixes; without them (plain
torchrun mixes every rank's output) all bars count together and are divided by nproc, since every
rank draws every bar. At "denoising video done" every started clip is done, and clip_total becomes
that number (upstream caps --num_clip by the audio's length).

Requests: the Gradio entry serves one generation after another in one process (docs/upstream.md, "Gradio
entry"), and the stages above are its first request only. Each request is timed apart: it starts at
"] Generating video..." (rank 0, when its INFO lines print) or at "complete prepare conditional inputs" (a
print, every rank, once per request), and that line from another rank, before any denoising bar of the request
has ended, is the same request. It ends at "Inference completed, synchronized with all ranks" / "Video saved
successfully:" (INFO, usually hidden), "Error during generation:" (logging.error: printed; the request
failed, the process serves on), or where the next one starts. The CLI entry's one generation is one request.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

# torch's own "[rank2]: " (its space is part of it), and torchrun --tee's "[default2]:" (TailLog's header, no
# space: what follows is the rank's own text, a traceback frame's indentation included)
RANK_PREFIX = re.compile(r"\[(?:rank(\d+)\]: ?|default(\d+)\]:)")
BAR = re.compile(r"\s*(\d{1,3})%\|[^|]*\|\s*(\d+)/(\d+)\b")
JOB_ARGS = "Generation job args:"
STAGES = ("load", "lora merge", "fp8", "text encoding", "denoise", "decode", "save", "done")
# The CLI entry's texts, then the gradio entry's where they differ (docs/upstream.md, "Log markers"; the
# gradio entry's INFO lines may not print at all, its prints and tqdm bars always do).
LOAD_MARKERS = ("Creating WanS2V pipeline.", "INFO: loading ", "Creating WanModel from", "Initializing pipeline...")
LORA_MARKERS = ("Use LoRA:", "Downloading from HF Hub", "Loading LoRA: path=")
GENERATING_MARKERS = ("Generating video ...", "] Generating video...")
GENERATED_MARKERS = ("denoising video done", "] Denoising video done")
GRADIO_SAVED_MARKERS = ("Video saved successfully:", "Inference completed, synchronized with all ranks")
CONDITIONS_READY = "complete prepare conditional inputs"  # every rank, once per generation
RANK_DONE = re.compile(r"rank (\d+) done")
REQUEST_START_MARKERS = ("] Generating video...", CONDITIONS_READY)
REQUEST_DONE_MARKERS = ("Inference completed, synchronized with all ranks", "Video saved successfully:")
REQUEST_FAILED_MARKER = "Error during generation:"
MAX_RANK_CLIPS = 10_000  # per rank (80 KB): 5 hours of video at 48 frames a clip


def split_rank(text: str) -> tuple[int | None, str]:
    """Strip leading rank prefixes ("[default2]:[rank2]: ..." is rank 2) and say which rank spoke."""
    rank = None
    while text.startswith("[") and (match := RANK_PREFIX.match(text)):
        if rank is None or match[1] is not None:  # the global rank wins over torchrun's local one
            rank = int(match[1] or match[2])
        text = text[match.end() :]
    return rank, text


def segments(line: str) -> Iterator[tuple[int | None, str]]:
    """The pieces of one line with their ranks: tqdm redraws with carriage returns, so one line can
    hold many drawings, and with plain torchrun, pieces written by several ranks."""
    line_rank, line = split_rank(line)
    for piece in line.split("\r"):
        rank, text = split_rank(piece)
        if text.strip():
            yield (line_rank if rank is None else rank), text


class LogTracker:
    def __init__(self, nproc: int, num_clip_expected: int | None = None):
        self.nproc = max(1, nproc)
        self.clip_total = num_clip_expected  # an upper bound until "denoising video done"
        self.clips_done = 0
        self.current_phase: str | None = None  # the phase under way, the last one ended, or "done"
        self.last_output_s: float | None = None
        self.ranks_seen: set[int] = set()
        self.fp8 = False  # from the job args line
        self.bars_per_clip = 4
        self._phases: list[list] = []  # [name, start_s, end_s or None while open]
        self._stage = -1  # index in STAGES of the furthest stage reached: repeats from other ranks change nothing
        self._bars: dict[int | None, list[int]] = {}  # rank -> [bars started, bars ended]
        self._clip_opened = 0
        self._requests: list[list] = []  # [start_s, end_s or None while open, outcome]
        self._request_progressed = False  # a denoising bar of the open request has ended
        self._rank_clip_ends: dict[int, list[float]] = {}  # rank -> each clip's end (s), the first generation's
        self._rank_clips_start: dict[int, float] = {}  # rank -> when it said CONDITIONS_READY first

    def feed(self, line: str, elapsed_s: float) -> None:
        self.last_output_s = elapsed_s
        for rank, text in segments(line):
            if rank is not None:
                self.ranks_seen.add(rank)
            if bar := BAR.match(text):
                self._on_bar(rank, int(bar[2]), int(bar[3]), elapsed_s)
            else:
                if rank is not None and CONDITIONS_READY in text:
                    self._rank_clips_start.setdefault(rank, elapsed_s)
                self._on_text(text, elapsed_s)

    def phases(self) -> list[tuple[str, float, float]]:
        """Every phase seen, in order; an open one ends at the last line's time."""
        last = self.last_output_s or 0.0
        return [(name, start, max(start, last) if end is None else end) for name, start, end in self._phases]

    def requests(self) -> list[tuple[float, float, str]]:
        """Every request seen, in order, with its outcome ("done", "failed", or "open" at the log's end)."""
        last = self.last_output_s or 0.0
        return [(start, max(start, last) if end is None else end, outcome) for start, end, outcome in self._requests]

    def rank_clips(self) -> list[tuple[int, int, float, float]]:
        """(rank, clip, start_s, end_s) of every clip a rank-prefixed bar ended, rank by rank in clip order;
        empty when the bars carry no rank prefix."""
        pipeline_start = next((start for name, start, _ in self.phases() if name.startswith("clip ")), 0.0)
        rows = []
        for rank in sorted(self._rank_clip_ends):
            start = self._rank_clips_start.get(rank, pipeline_start)
            for clip, end in enumerate(self._rank_clip_ends[rank], 1):
                rows.append((rank, clip, min(start, end), end))
                start = end
        return rows

    def write_requests_csv(self, path: Path) -> None:
        rows = [
            [n, f"{start:.3f}", f"{end:.3f}", outcome] for n, (start, end, outcome) in enumerate(self.requests(), 1)
        ]
        _write_csv(path, ["request", "start_s", "end_s", "outcome"], rows)

    def write_phases_csv(self, path: Path) -> None:
        _write_csv(path, ["phase", "start_s", "end_s"], [[n, f"{s:.3f}", f"{e:.3f}"] for n, s, e in self.phases()])

    def clip_spans(self) -> list[tuple[float, float]]:
        """(start_s, end_s) of each clip's denoising, in clip order."""
        return [(start, end) for name, start, end in self.phases() if is_clip(name)]

    # ------------------------------------------------------------------------------------- internals

    def _on_text(self, text: str, t: float) -> None:
        self._track_request(text, t)
        if JOB_ARGS in text:
            self._read_job_args(text)
        elif any(marker in text for marker in LOAD_MARKERS):
            self._enter("load", t)
        elif any(marker in text for marker in LORA_MARKERS):
            self._enter("lora merge", t)
        elif "LoRA merged successfully." in text:
            self._enter("fp8", t, opens_phase=self.fp8)
        elif any(marker in text for marker in GENERATING_MARKERS):
            self._enter("text encoding", t)
        elif CONDITIONS_READY in text:
            if self._enter("denoise", t, "clip 1 denoise"):
                self._clip_opened = 1
        elif any(marker in text for marker in GENERATED_MARKERS):
            self._generation_done(t)
        elif self._video_written(text):
            self._enter("done", t, opens_phase=False)

    def _track_request(self, text: str, t: float) -> None:
        open_request = self._requests[-1] if self._requests and self._requests[-1][1] is None else None
        if any(marker in text for marker in REQUEST_START_MARKERS):
            if open_request is None or self._request_progressed:
                self._end_request("done", t)
                self._requests.append([t, None, "open"])
                self._request_progressed = False
        elif REQUEST_FAILED_MARKER in text:
            self._end_request("failed", t)
        elif any(marker in text for marker in REQUEST_DONE_MARKERS):
            self._end_request("done", t)

    def _end_request(self, outcome: str, t: float) -> None:
        if self._requests and self._requests[-1][1] is None:
            self._requests[-1][1:] = [t, outcome]

    def _video_written(self, text: str) -> bool:
        """The saving rank (the last one) says it is done; in a single-GPU run "Finished." says it too."""
        done = RANK_DONE.match(text)
        return (
            (done is not None and int(done[1]) == self.nproc - 1)
            or (self.nproc == 1 and text.rstrip().endswith("INFO: Finished."))
            or any(marker in text for marker in GRADIO_SAVED_MARKERS)
        )

    def _read_job_args(self, text: str) -> None:
        self.fp8 = "fp8=True" in text
        if frames := re.search(r"\binfer_frames=(\d+)", text):
            self.bars_per_clip = max(1, int(frames[1]) // 12)

    def _on_bar(self, rank: int | None, n: int, total: int, t: float) -> None:
        if total <= 0:
            return
        counts = self._bars.setdefault(rank, [0, 0])
        if n == 0:
            counts[0] += 1
        elif n == total and counts[1] < counts[0]:
            counts[1] += 1
            self._request_progressed = True
            if rank is not None and counts[1] % self.bars_per_clip == 0:
                self._rank_clip_ended(rank, t)
        else:
            return
        started, ended = self._bars_on_one_rank()
        clip_started = -(-started // self.bars_per_clip)
        if clip_started > self._clip_opened and self._stage <= STAGES.index("denoise"):
            self._stage = STAGES.index("denoise")
            self._open(f"clip {clip_started} denoise", t)
            self._clip_opened = clip_started
        done = ended // self.bars_per_clip
        if done > self.clips_done:
            self.clips_done = done
            if done >= self._clip_opened:
                self._close(t)
            if self.clip_total is not None and done >= self.clip_total:
                self._enter("decode", t)

    def _rank_clip_ended(self, rank: int, t: float) -> None:
        """One more clip done on this rank, timed while the first generation runs (the phases' span)."""
        ends = self._rank_clip_ends.setdefault(rank, [])
        if self._stage < STAGES.index("save") and len(ends) < MAX_RANK_CLIPS:
            ends.append(t)

    def _bars_on_one_rank(self) -> tuple[int, int]:
        ranks = [r for r in self._bars if r is not None]
        if ranks:
            started, ended = self._bars[0 if 0 in ranks else ranks[0]]
            return started, ended
        started, ended = self._bars.get(None, (0, 0))
        return -(-started // self.nproc), ended // self.nproc

    def _generation_done(self, t: float) -> None:
        if self._stage < STAGES.index("decode"):
            started, _ = self._bars_on_one_rank()
            self.clips_done = max(self.clips_done, -(-started // self.bars_per_clip))
            self.clip_total = self.clips_done
            self._enter("decode", t)
        self._enter("save", t)

    def _enter(self, stage: str, t: float, name: str | None = None, opens_phase: bool = True) -> bool:
        """Move on to a later stage; a stage already reached (another rank saying it) changes nothing."""
        index = STAGES.index(stage)
        if index <= self._stage:
            return False
        self._stage = index
        if opens_phase:
            self._open(name or stage, t)
        else:
            self._close(t)
            if stage == "done":
                self.current_phase = "done"
        return True

    def _open(self, name: str, t: float) -> None:
        start = t
        if self._phases:
            self._close(t)
            start = min(t, self._phases[-1][2])  # contiguous: it began where the previous one ended
        self._phases.append([name, start, None])
        self.current_phase = name

    def _close(self, t: float) -> None:
        if self._phases and self._phases[-1][2] is None:
            self._phases[-1][2] = t


def is_clip(phase: str) -> bool:
    return phase.startswith("clip ") and phase.endswith(" denoise")


def write_rank_clips_csv(path: Path, rank_clips: list[tuple[int, int, float, float]]) -> None:
    """logs/rank_clips.csv from (rank, clip, start_s, end_s) rows: the log's rank-prefixed bars
    (LogTracker.rank_clips), else each rank's own record of its clips (the shim)."""
    rows = [[rank, clip, f"{start:.3f}", f"{end:.3f}"] for rank, clip, start, end in rank_clips]
    _write_csv(path, ["rank", "clip", "start_s", "end_s"], rows)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
