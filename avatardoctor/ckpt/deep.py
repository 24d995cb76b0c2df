"""The deep verification's facts: the sha256 of every file in the checkpoint folder and the zip
CRC-32 of every .pth entry, from one read of each byte. Reads all 45 GB: run on request only."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from avatardoctor.ckpt.hashing import HashResult, hash_with_progress
from avatardoctor.ckpt.manifest import read_manifest
from avatardoctor.ckpt.pth import first_damaged_entry
from avatardoctor.ckpt.scan import CheckpointScan


@dataclass(frozen=True)
class DeepFacts:
    hashed: HashResult
    manifest: dict[str, str] | None  # relative POSIX path -> sha256, from --manifest
    manifest_path: Path | None
    crc: dict[str, str | None]  # relative archive path -> what is wrong with its first damaged entry, None when sound


def gather_deep(scan: CheckpointScan, manifest_path: Path | None, console: Console) -> DeepFacts:
    manifest = read_manifest(manifest_path) if manifest_path else None  # a bad manifest fails before 45 GB of reading
    files, unlistable = _every_file(scan.root)  # every file, not only those the layout names
    archives = {f for f in scan.files if f.suffix in (".pth", ".bin")}
    hashed = hash_and_check_crc(files, archives, console)
    crc = {}
    for path in sorted(archives):
        name = path.relative_to(scan.root).as_posix()
        if path in hashed.checked:
            crc[name] = hashed.checked[path]
        elif path in hashed.errors:
            crc[name] = f"unreadable as a zip archive ({hashed.errors[path]})"
        else:  # not reached by the walk (inside a symlinked folder): read here, its only read
            crc[name] = first_damaged_entry(path)
    return DeepFacts(replace(hashed, errors=hashed.errors | unlistable), manifest, manifest_path, crc)


def hash_and_check_crc(files: list[Path], archives: set[Path], console: Console) -> HashResult:
    """The sha256 of every file and the CRC-32 check of the archives among them (HashResult.checked),
    from one read of each byte, behind one progress bar."""
    return hash_with_progress(files, console, crc=archives)


def _every_file(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """Every file under root (symlinks to files included, symlinked folders not followed), and each
    folder that cannot be listed with why: a permission problem is reported, never a traceback."""
    files: list[Path] = []
    unlistable: dict[Path, str] = {}

    def note(err: OSError) -> None:
        unlistable[Path(err.filename)] = f"a folder that cannot be listed ({err.strerror})"

    for folder, _, names in os.walk(root, onerror=note):
        files += (Path(folder, name) for name in names)
    return sorted(files), unlistable
