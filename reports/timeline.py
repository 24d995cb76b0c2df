"""A memory timeline: what every report is drawn from, whatever it was read from (a run folder's
logs/gpu_memory.csv, or a plain nvidia-smi CSV log), plus notes on what had to be assumed."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

COLUMNS = ("elapsed_s", "gpu", "used_mib", "total_mib")
MAX_GPU_INDEX = 1023  # NVML numbers a node's GPUs from 0; no node has a thousand
MAX_MIB = 2.0**30  # 1 PiB: no GPU (or host) holds more; larger is a damaged value
MAX_SECONDS = 1e9  # 30 years: a larger elapsed time is a damaged value
MAX_LABEL_CHARS = 80  # a GPU name or phase longer than this is cut: it is a title, not a document
GPU_ID = re.compile(r"[0-9]{1,4}|cpu[0-9]{0,2}")  # cpu: a job's processes; cpu<r>: rank r's (the demo's)


def gpu_id(value) -> str | None:
    """A GPU as reports name it ("0", "1", ..., "cpu", or "cpu0", ... for a rank on the CPU) from an index in a
    file; None if it is none."""
    if isinstance(value, bool):
        return None
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    if not GPU_ID.fullmatch(text):
        return None
    if text.startswith("cpu"):
        return text if text == "cpu" else f"cpu{int(text[3:])}"
    return str(int(text)) if int(text) <= MAX_GPU_INDEX else None


def label(value) -> str:
    """Text from a file shown as a name or title: one line, at most MAX_LABEL_CHARS."""
    text = " ".join(str(value).split())
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def device_order(gpu: str) -> tuple[int, int, str]:
    """GPUs by number, then the job's processes (cpu), then its ranks by number (cpu0, cpu1, ... cpu10)."""
    if gpu.isdigit():
        return (0, int(gpu), "")
    return (1, int(gpu[3:]) if gpu[3:].isdigit() else -1, gpu)


@dataclass
class Timeline:
    # One row per sample: elapsed_s (float, seconds since the first sample), gpu (str: "0", "1", ...
    # or "cpu"), used_mib (float, NaN where not available), total_mib (float, NaN where unknown).
    # Sorted by gpu, elapsed_s.
    samples: pd.DataFrame
    gpu_names: dict[str, str] = field(default_factory=dict)  # gpu -> "NVIDIA H800" / uuid, when known
    start: datetime | None = None  # wall-clock time of elapsed_s == 0, when known
    notes: list[str] = field(default_factory=list)  # assumptions and skipped input, for the reader
    # Each device's sample count where the log was long enough to be kept as an Envelope (then `samples` holds
    # the samples it kept, each with its bucket's highest total_mib); empty when every sample is in `samples`.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def gpus(self) -> list[str]:
        return sorted(self.samples["gpu"].unique(), key=device_order)

    def by_gpu(self) -> dict[str, pd.DataFrame]:
        """Each GPU's samples (gpu may be a categorical column: only GPUs with samples)."""
        return {str(g): frame for g, frame in self.samples.groupby("gpu", sort=False, observed=True)}

    @classmethod
    def empty(cls, notes: list[str]) -> Timeline:
        return cls(
            pd.DataFrame({c: pd.Series(dtype="float64" if c != "gpu" else "object") for c in COLUMNS}), notes=notes
        )


STREAM_SAMPLES = 1_000_000  # past this many samples a log is kept as an Envelope: ~55 MB of nvidia-smi log
ENVELOPE_BUCKETS = 1024  # time buckets per device: one per pixel column of a 10-inch figure at 100 dpi
ENVELOPE_BATCH = 2**18  # samples gathered before they are folded in: a sort per chunk would cost more than its parse
FIRST_WIDTH_S = 1e-3  # nvidia-smi's timestamps are ms; buckets start no narrower


class Envelope:
    """A long log's samples kept bounded, whatever its length. Each device's samples fall into time buckets
    of one width, doubled (adjacent buckets merged) whenever the log outgrows ENVELOPE_BUCKETS of them; of
    each bucket only its first, lowest, highest, last and last readable samples are kept, real samples at
    their real times, with the bucket's highest total_mib. So what a report states stays exact: each
    device's sample count (`counts`), peak and its time (the first of equal peaks), first and last sample,
    highest total, and, because a bucket never spans one of the `cuts`, the last readable sample at or
    before each `at_or_before` time (a failure's) and the peak between consecutive `from_` times (requests).
    The plots draw the kept samples: every peak and trough survives."""

    COLUMNS = ("elapsed_s", "gpu", "used_mib", "total_mib", "order")

    def __init__(self, at_or_before: Iterable[float] = (), from_: Iterable[float] = ()):
        self.at_or_before = np.sort(np.asarray(list(at_or_before), dtype="float64"))
        self.from_ = np.sort(np.asarray(list(from_), dtype="float64"))
        self.base: float | None = None
        self.width = FIRST_WIDTH_S
        self.counts = np.zeros(0, dtype=np.int64)  # samples per device code
        self.kept = {c: np.zeros(0, dtype="float64" if c != "gpu" else np.int64) for c in self.COLUMNS}
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.seen = 0

    def add(self, elapsed_s: np.ndarray, gpu: np.ndarray, used_mib: np.ndarray, total_mib: np.ndarray) -> None:
        """Samples in file order (elapsed_s not NaN), gpu a device code 0, 1, ..."""
        n = len(elapsed_s)
        if not n:
            return
        gpu = gpu.astype(np.int64)
        counts = np.bincount(gpu)
        if len(counts) > len(self.counts):
            self.counts = np.pad(self.counts, (0, len(counts) - len(self.counts)))
        self.counts[: len(counts)] += counts
        if self.base is None:  # buckets as wide as the first batch's span would need to reach ENVELOPE_BUCKETS
            self.base = float(elapsed_s.min())
            self.width = max(FIRST_WIDTH_S, float(elapsed_s.max() - self.base) / ENVELOPE_BUCKETS)
        order = np.arange(self.seen, self.seen + n, dtype="float64")  # file order: the first of equal peaks
        self.seen += n
        self.pending.append(
            {"elapsed_s": elapsed_s, "gpu": gpu, "used_mib": used_mib, "total_mib": total_mib, "order": order}
        )
        self.pending_rows += n
        if self.pending_rows >= max(ENVELOPE_BATCH, len(self.kept["gpu"])):
            self._fold()

    def _fold(self) -> None:
        if not self.pending:
            return
        rows = {c: np.concatenate([self.kept[c], *(p[c] for p in self.pending)]) for c in self.COLUMNS}
        self.pending, self.pending_rows = [], 0
        assert self.base is not None
        bucket = np.floor((rows["elapsed_s"] - self.base) / self.width).astype(np.int64)
        doublings = 0
        while (bucket.max() >> doublings) - (bucket.min() >> doublings) >= ENVELOPE_BUCKETS:
            doublings += 1
        self.width *= 2**doublings
        bucket >>= doublings  # floor(x / 2w) == floor(floor(x / w) / 2): merging is exact
        t = rows["elapsed_s"]
        segment = np.searchsorted(self.at_or_before, t, side="left") + np.searchsorted(self.from_, t, side="right")
        by = np.lexsort((rows["order"], t, rows["gpu"]))  # bucket and segment only grow with time
        gpu, bucket, segment = rows["gpu"][by], bucket[by], segment[by]
        rows = {c: v[by] for c, v in rows.items()}
        starts = np.flatnonzero(
            np.concatenate(
                ([True], (gpu[1:] != gpu[:-1]) | (bucket[1:] != bucket[:-1]) | (segment[1:] != segment[:-1]))
            )
        )
        ends = np.append(starts[1:], len(gpu)) - 1
        used = rows["used_mib"]
        readable = ~np.isnan(used)
        group = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(gpu))))
        highest = np.maximum.reduceat(np.where(readable, used, -np.inf), starts)
        lowest = np.minimum.reduceat(np.where(readable, used, np.inf), starts)

        def first_of(mask: np.ndarray) -> np.ndarray:  # each group's first row where mask holds (every group has one)
            at = np.flatnonzero(mask)
            return at[np.searchsorted(at, starts)]

        readable_at = np.flatnonzero(readable)
        last_readable = readable_at[np.maximum(np.searchsorted(readable_at, ends, side="right") - 1, 0)]
        keep = np.unique(
            np.concatenate(
                (
                    starts,
                    ends,
                    first_of(np.where(readable, used, -np.inf) == highest[group]),
                    first_of(np.where(readable, used, np.inf) == lowest[group]),
                    last_readable[last_readable >= starts] if len(readable_at) else starts,
                )
            )
        )
        rows["total_mib"] = np.fmax.reduceat(rows["total_mib"], starts)[group]
        self.kept = {c: v[keep] for c, v in rows.items()}

    def samples(self) -> dict[str, np.ndarray]:
        """The kept samples by device code, then time (then file order)."""
        self._fold()
        return {c: self.kept[c] for c in ("elapsed_s", "gpu", "used_mib", "total_mib")}

    def note(self, name: str) -> str:
        return (
            f"{name} has {int(self.counts.sum()):,} samples: drawn as each device's lowest "
            f"and highest per {self.width:.3g} s; peaks, sample counts, first and last samples are exact"
        )
