"""A run's folder: where every stage of `avatardoctor run` writes (docs/run-folder.md).

A new folder per attempt, never an earlier one reused: `runs/<YYYYmmdd-HHMMSS>-<mode>/`, with
`-2`, `-3`... appended when two attempts start within one second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def plan_json(self) -> Path:
        return self.root / "plan.json"

    @property
    def debug_json(self) -> Path:
        return self.root / "debug_info.json"

    @property
    def inference_log(self) -> Path:
        return self.logs / "inference.log"

    @property
    def gpu_memory_csv(self) -> Path:
        return self.logs / "gpu_memory.csv"

    @property
    def gpu_processes_csv(self) -> Path:
        return self.logs / "gpu_processes.csv"

    @property
    def phases_csv(self) -> Path:
        return self.logs / "phases.csv"

    @property
    def ranks(self) -> Path:
        return self.logs / "ranks"


def new_run_folder(out_dir: Path, mode: str, now: datetime | None = None) -> RunFolder:
    """Create a fresh folder for one attempt; an existing one is never written into."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        root = out_dir / (f"{stamp}-{mode}" if n == 1 else f"{stamp}-{mode}-{n}")
        try:
            os.mkdir(root)  # atomic: two runners never share a folder
        except FileExistsError:
            continue
        folder = RunFolder(root)
        folder.ranks.mkdir(parents=True)
        return folder
    raise FileExistsError(f"{out_dir}: no free run folder name for {stamp}-{mode}")
