"""A run's folder: where every stage of `avatardoctor run` writes (docs/run-folder.md).

A new folder per attempt, never an earlier one reused: `runs/<YYYYmmdd-HHMMSS>-<mode>/`, with
`-2`, `-3`... appended when two attempts start within one second.

Each folder holds a small pre-allocated `.reserve` while the job runs: when the disk fills, the
runner stops the job and writes debug_info.json into those blocks, so the outcome is still recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from avatardoctor.calibration import Measurement, import_measurements
from avatardoctor.errors import InputError

RESERVE_BYTES = 256 * 1024  # room for debug_info.json (the short form when the whole one is larger)


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
    def gpu_health_csv(self) -> Path:
        """Each GPU's health once a second (NVML runs only)."""
        return self.logs / "gpu_health.csv"

    @property
    def phases_csv(self) -> Path:
        return self.logs / "phases.csv"

    @property
    def requests_csv(self) -> Path:
        return self.logs / "requests.csv"

    @property
    def rank_clips_csv(self) -> Path:
        return self.logs / "rank_clips.csv"

    @property
    def measurements_json(self) -> Path:
        """Each GPU's measured peak in calibration's import format (NVML runs only)."""
        return self.logs / "measurements.json"

    @property
    def ranks(self) -> Path:
        return self.logs / "ranks"

    @property
    def reserve(self) -> Path:
        return self.root / ".reserve"

    def write_reserved(self, path: Path, data: bytes) -> None:
        """Write a small file into the reserve's blocks, already allocated, when it fits; the reserve is gone after."""
        if self.reserve.is_file() and len(data) <= self.reserve.stat().st_size:
            try:
                with open(self.reserve, "r+b") as f:  # overwriting allocated blocks needs no free space
                    f.write(data)
                    f.truncate(len(data))
                os.replace(self.reserve, path)
                return
            except OSError:  # a copy-on-write filesystem needs new blocks even to overwrite: free the reserve instead
                pass
        self.reserve.unlink(missing_ok=True)
        path.write_bytes(data)


def new_run_folder(out_dir: Path, mode: str, now: datetime | None = None) -> RunFolder:
    """Create a fresh folder for one attempt, with its reserve; an existing one is never written into.
    An --out-dir that cannot be created or written, or a disk without room for the reserve, is an
    InputError (nothing has been launched yet) and leaves no folder behind."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out-dir {out_dir}: cannot create it ({e.strerror}); choose a writable folder") from None
    for n in range(1, 1000):
        root = out_dir / (f"{stamp}-{mode}" if n == 1 else f"{stamp}-{mode}-{n}")
        try:
            os.mkdir(root)  # atomic: two runners never share a folder
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(
                f"--out-dir {out_dir}: cannot write there ({e.strerror}); choose a writable folder"
            ) from None
        folder = RunFolder(root)
        try:
            folder.ranks.mkdir(parents=True)
            # written, not fallocate()d (which some filesystems refuse), and random: a compressing one stores zeros in nothing
            folder.reserve.write_bytes(os.urandom(RESERVE_BYTES))
        except OSError as e:
            with contextlib.suppress(OSError):
                shutil.rmtree(root)
            raise InputError(
                f"--out-dir {out_dir}: cannot write a run folder there ({e.strerror}); "
                "free space or choose another folder"
            ) from None
        return folder
    raise InputError(f"--out-dir {out_dir}: no free run folder name for {stamp}-{mode}; remove old run folders")


def run_measurements(path: Path, say: Callable[[str], None]) -> list[Measurement]:
    """`calibrate RUN`: the measurements a run folder recorded (or a measurements file given directly);
    a folder without any (a CPU run, or one that did not end) is said and skipped."""
    file = RunFolder(path).measurements_json if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        say(f"{path}: no GPU measurements (recorded where NVML sampled the GPUs, for runs that ended)")
        return []
    return import_measurements(file, named="")
