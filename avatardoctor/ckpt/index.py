"""A sharded checkpoint's index (`*.safetensors.index.json`): which shard holds each tensor.

The index is checked against the shards' own headers: a tensor the index promises but no shard
holds fails at load time, minutes in; here it fails in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avatardoctor.ckpt.safetensors_file import LONE_SURROGATE, CkptFileError, SafetensorsFile
from avatardoctor.files import UnreadableJson, read_json

INDEX_LIMIT = 64 * 2**20  # a 1,260-tensor index is 110 KB


@dataclass(frozen=True)
class ShardIndex:
    path: Path
    weight_map: dict[str, str]  # tensor name -> shard file name
    total_size: int | None

    @property
    def shards(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def _escapes(name: str) -> bool:
    p = PurePosixPath(name)
    return p.is_absolute() or ".." in p.parts or "\\" in name or name in ("", ".")


def read_index(path: Path) -> ShardIndex:
    def fail(problem: str) -> CkptFileError:
        return CkptFileError(path, problem)

    try:
        doc = read_json(path, INDEX_LIMIT, "a safetensors index")
    except UnreadableJson as err:
        raise fail(str(err)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise fail("no weight_map object: not a safetensors index")
    weight_map = doc["weight_map"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise fail("weight_map must map tensor names to shard file names")
    if any(LONE_SURROGATE.search(k) or LONE_SURROGATE.search(v) for k, v in weight_map.items()):
        raise fail(
            "weight_map holds a lone UTF-16 surrogate escape (\\udXXX): not valid UTF-8, no file can have that name"
        )
    for shard in sorted(set(weight_map.values())):
        if _escapes(shard):
            raise fail(f"shard name {shard[:80]!r} points outside the checkpoint folder")
        if "\0" in shard:  # no file name holds one: os.stat would raise ValueError
            raise fail(f"shard name {shard[:80]!r} contains a NUL character")
    metadata = doc.get("metadata") or {}
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if total is not None and (type(total) is not int or total < 0):
        raise fail("metadata.total_size must be a non-negative integer")
    return ShardIndex(path, weight_map, total)


def index_problems(index: ShardIndex, shards: dict[str, SafetensorsFile]) -> list[str]:
    """Disagreements between the index and the headers of the shards that could be read."""
    problems = []
    holders: dict[str, list[str]] = {}
    for shard_name, shard in shards.items():
        for t in shard.tensors:
            holders.setdefault(t.name, []).append(shard_name)
    for name, where in sorted(holders.items()):
        if len(where) > 1:
            problems.append(f"tensor {name!r} is in {len(where)} shards: {', '.join(sorted(where))}")
        elif name not in index.weight_map:
            problems.append(f"{where[0]} holds tensor {name!r}, which the index does not list")
    for name, shard_name in sorted(index.weight_map.items()):
        if shard_name in shards and shard_name not in holders.get(name, []):
            problems.append(f"the index puts tensor {name!r} in {shard_name}, which does not hold it")
    if index.total_size is not None and len(shards) == len(index.shards):
        actual = sum(t.nbytes for s in shards.values() for t in s.tensors)
        if actual != index.total_size:
            problems.append(f"metadata.total_size is {index.total_size:,} bytes, the shards hold {actual:,}")
    return problems
