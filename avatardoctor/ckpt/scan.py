"""Read a checkpoint folder's structure (headers, index, archive directories; never tensor data) into
facts the ckpt.* checks judge. Every problem names its file."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from avatardoctor.ckpt import layout
from avatardoctor.ckpt.compare import ReferenceDiff, compare_tensors
from avatardoctor.ckpt.components import (
    ComponentSummary,
    Size,
    dit_shape,
    dit_units,
    reference_summary,
    reference_tensors,
    size_of,
)
from avatardoctor.ckpt.index import ShardIndex, index_problems, read_index
from avatardoctor.ckpt.pth import read_pth
from avatardoctor.ckpt.safetensors_file import (
    CkptFileError,
    SafetensorsFile,
    read_header,
)
from avatardoctor.files import UnreadableJson, read_json

if TYPE_CHECKING:  # a type only: deep.py imports this module to hash a scan's files
    from avatardoctor.ckpt.deep import DeepFacts

CONFIG_LIMIT = 2**20


@dataclass
class ComponentScan:
    key: str
    label: str
    files: list[str] = field(default_factory=list)  # relative paths that were inspected or expected
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each names its file
    size: Size | None = None
    diff: ReferenceDiff | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems


@dataclass
class CheckpointScan:
    given: str  # as the user wrote it
    root: Path  # as the launch will see it
    root_problem: str | None = None
    layout: str = "unknown"  # "upstream", "seed" or "unknown"
    components: dict[str, ComponentScan] = field(default_factory=dict)
    index: ShardIndex | None = None
    index_problems: list[str] = field(default_factory=list)
    shard_tensors: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    deep: DeepFacts | None = None  # after `ckpt verify --deep`

    @property
    def files(self) -> list[Path]:
        """Every file the checkpoint should hold that exists (for content hashing)."""
        seen = [f for c in self.components.values() for f in c.files if f not in c.missing]
        return [self.root / f for f in dict.fromkeys(seen) if _is_regular(self.root / f)]

    @cached_property
    def summary(self) -> ComponentSummary | None:
        """Component sizes from this checkpoint's own headers, once the DiT is whole (computed once:
        every prediction reads it)."""
        dit, t5, vae = (self.components.get(k) for k in ("dit", "t5", "vae"))
        if not (dit and dit.ok and dit.size and not self.index_problems):
            return None
        shape = dit_shape(self.shard_tensors)
        if shape is None:  # no attention weights (an empty index, say): nothing to predict from
            return None
        ref = reference_summary()
        w2v = self.components.get("wav2vec2")
        return ComponentSummary(
            source=f"checkpoint {self.root}",
            dit=dit.size,
            dit_units=dit_units(self.shard_tensors),
            dit_shape=shape,
            t5=t5.size if t5 and t5.ok and t5.size else ref.t5,
            t5_root=ref.t5_root,  # a .pth gives storage sizes, not names: the reference's split
            vae=vae.size if vae and vae.ok and vae.size else ref.vae,
            wav2vec2=w2v.size if w2v and w2v.ok and w2v.size else ref.wav2vec2,
        )


def resolve_ckpt_dir(given: str | Path, start_dir: Path) -> Path:
    """The folder as the launch will open it: a relative path is relative to where it starts."""
    return Path(os.path.normpath(start_dir / given))


def _is_regular(path: Path) -> bool:
    """A regular file (through symlinks); False, not PermissionError, when a folder on the way is closed."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _absent(path: Path) -> bool:
    """Nothing there. Not the same as "cannot look": a folder on the way that cannot be searched
    (permission denied) hides the file, and saying "missing" would send the user to download it again."""
    try:
        os.lstat(path)
    except OSError as e:
        return e.errno in (errno.ENOENT, errno.ENOTDIR)
    return False


def file_problem(path: Path) -> str | None:
    """Why a required file cannot be used, or None when it is a readable, non-empty file."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symlink loop"
        if e.errno == errno.EACCES:
            return "unreadable (permission denied on a folder on the way)"
        if os.path.lexists(path):
            return "a broken symlink"
        return None if e.errno == errno.ENOENT else f"cannot read ({e.strerror})"
    if os.path.isdir(path):
        return "a directory where a file should be"
    if not os.access(path, os.R_OK):
        return "unreadable (permission denied)"
    if st.st_size == 0:
        return "empty (0 bytes)"
    return None


def _present(scan: ComponentScan, root: Path, rel: str) -> bool:
    """Record a required file as missing or broken; True when it can be opened."""
    scan.files.append(rel)
    path = root / rel
    if _absent(path):
        scan.missing.append(rel)
        return False
    problem = file_problem(path)
    if problem:
        scan.problems.append(f"{rel}: {problem}")
        return False
    return True


def _scan_config(scan: ComponentScan, root: Path) -> None:
    if _present(scan, root, layout.CONFIG):
        path = root / layout.CONFIG
        try:
            read_json(path, CONFIG_LIMIT, "a model config")
        except UnreadableJson as err:
            scan.problems.append(f"{layout.CONFIG}: {err}")


def _scan_dit(ckpt: CheckpointScan, scan: ComponentScan, index_name: str) -> None:
    root = ckpt.root
    if not _present(scan, root, index_name):
        return
    try:
        ckpt.index = read_index(root / index_name)
    except CkptFileError as e:
        scan.problems.append(str(e))
        return
    headers: dict[str, SafetensorsFile] = {}
    for shard in ckpt.index.shards:
        if _present(scan, root, shard):
            try:
                headers[shard] = read_header(root / shard)
            except CkptFileError as e:
                scan.problems.append(f"{shard}: {e.problem}")
    ckpt.index_problems = index_problems(ckpt.index, headers)
    ckpt.shard_tensors = [(t.name, t.dtype, t.shape) for h in headers.values() for t in h.tensors]
    if scan.ok:
        scan.size = size_of(ckpt.shard_tensors)
        actual = {name: (dtype, shape) for name, dtype, shape in ckpt.shard_tensors}
        scan.diff = compare_tensors(actual, reference_tensors("dit"))


def _scan_pth(scan: ComponentScan, root: Path, rel: str, reference: Size) -> None:
    if not _present(scan, root, rel):
        return
    try:
        archive = read_pth(root / rel)
    except CkptFileError as e:
        scan.problems.append(f"{rel}: {e.problem}")
        return
    # Only the bytes are known without unpickling; params assume the reference's dtype.
    itemsize = reference.bytes // reference.params
    scan.size = Size(archive.data_bytes // itemsize, archive.data_bytes)


def _scan_folder(scan: ComponentScan, root: Path, component: layout.Component) -> None:
    for rel in component.files:
        _present(scan, root, rel)
    if not component.any_of:
        return
    present = [rel for rel in component.any_of if not _absent(root / rel)]
    if not present:
        scan.files.append(component.any_of[0])
        scan.missing.append(" or ".join(component.any_of))
        return
    weights = present[0]
    if not _present(scan, root, weights):
        return
    try:
        if weights.endswith(".safetensors"):
            header = read_header(root / weights)
            scan.size = size_of((t.name, t.dtype, t.shape) for t in header.tensors)
        elif weights.endswith(".bin"):
            archive = read_pth(root / weights)
            scan.size = Size(archive.data_bytes // 4, archive.data_bytes)  # saved as F32
    except CkptFileError as e:
        scan.problems.append(f"{weights}: {e.problem}")


def scan_checkpoint(given: str | Path, start_dir: Path) -> CheckpointScan:
    root = resolve_ckpt_dir(given, start_dir)
    ckpt = CheckpointScan(given=str(given), root=root)
    if not os.path.lexists(root):
        ckpt.root_problem = "not found"
        return ckpt
    if not os.path.isdir(root):
        ckpt.root_problem = file_problem(root) or "a file, not a folder"
        return ckpt
    if not os.access(root, os.R_OK | os.X_OK):
        ckpt.root_problem = "unreadable (permission denied)"
        return ckpt
    if os.path.lexists(root / layout.UPSTREAM_INDEX):
        ckpt.layout = "upstream"
    elif os.path.lexists(root / layout.SEED_INDEX):
        ckpt.layout = "seed"
    ref = reference_summary()
    for component in layout.COMPONENTS:
        scan = ckpt.components[component.key] = ComponentScan(component.key, component.label)
        if component.key == "config":
            _scan_config(scan, root)
        elif component.key == "dit":
            index = layout.SEED_INDEX if ckpt.layout == "seed" else layout.UPSTREAM_INDEX
            _scan_dit(ckpt, scan, index)
            if ckpt.layout == "seed":  # the seed's shards are verified, but the launch looks for upstream's
                scan.missing.append(layout.UPSTREAM_INDEX)
        elif component.key in ("t5", "vae"):
            _scan_pth(scan, root, component.files[0], ref.t5 if component.key == "t5" else ref.vae)
        else:
            _scan_folder(scan, root, component)
    return ckpt
