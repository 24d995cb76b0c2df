"""A memory timeline: what every report is drawn from, whatever it was read from (a run folder's
logs/gpu_memory.csv, or a plain nvidia-smi CSV log), plus notes on what had to be assumed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd

COLUMNS = ("elapsed_s", "gpu", "used_mib", "total_mib")


@dataclass
class Timeline:
    # One row per sample: elapsed_s (float, seconds since the first sample), gpu (str: "0", "1", ...
    # or "cpu"), used_mib (float), total_mib (float, NaN where unknown). Sorted by gpu, elapsed_s.
    samples: pd.DataFrame
    gpu_names: dict[str, str] = field(default_factory=dict)  # gpu -> "NVIDIA H800" / uuid, when known
    start: datetime | None = None  # wall-clock time of elapsed_s == 0, when known
    notes: list[str] = field(default_factory=list)  # assumptions and skipped input, for the reader

    @property
    def gpus(self) -> list[str]:
        return sorted(self.samples["gpu"].unique(), key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))

    @classmethod
    def empty(cls, notes: list[str]) -> Timeline:
        return cls(pd.DataFrame({c: pd.Series(dtype="float64" if c != "gpu" else "object") for c in COLUMNS}), notes=notes)
