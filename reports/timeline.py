"""A memory timeline: what every report is drawn from, whatever it was read from (a run folder's
logs/gpu_memory.csv, or a plain nvidia-smi CSV log), plus notes on what had to be assumed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

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
