"""safetensors files by their header alone: 8-byte little-endian length, then JSON naming every
tensor's dtype, shape and byte range. Read with bounds (the files are untrusted downloads) and
written for skeleton checkpoints, where the data may be left as a sparse hole.

Hand-written rather than through the safetensors library: verifying needs the raw offsets and
exact sizes (to say "truncated: N bytes of M"), and a full-size skeleton cannot hold 30 GiB of
tensors in memory to hand to the library.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

HEADER_LIMIT = 100_000_000  # bytes; the safetensors reference implementation's own limit
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
METADATA_KEY = "__metadata__"


class CkptFileError(Exception):
    """A file that is not what it should be. str() names the file and what is wrong."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path.name}: {problem}")
        self.path, self.problem = path, problem


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # data_offsets, relative to the end of the header
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsFile:
    path: Path
    header_bytes: int
    tensors: tuple[TensorEntry, ...]  # in data order
    metadata: dict[str, str] | None
    file_bytes: int

    @property
    def data_bytes(self) -> int:
        return self.tensors[-1].end if self.tensors else 0


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"the name {duplicate!r} appears twice")
    return dict(pairs)


def _tensor(name: str, spec: object, fail: Callable[[str], Exception]) -> TensorEntry:
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise fail(f"tensor {name!r}: an entry needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise fail(f"tensor {name!r}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise fail(f"tensor {name!r}: shape must be a list of non-negative integers, not {str(shape)[:40]}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise fail(f"tensor {name!r}: data_offsets must be [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end:
        raise fail(f"tensor {name!r}: data_offsets [{begin}, {end}] are not an ascending byte range")
    entry = TensorEntry(name, dtype, tuple(shape), begin, end)
    expected = entry.numel * DTYPE_SIZES[dtype]
    if entry.nbytes != expected:
        raise fail(f"tensor {name!r}: {entry.nbytes:,} bytes of data, but {dtype} {list(shape)} needs {expected:,}")
    return entry


@contextmanager
def open_download(path: Path) -> Iterator[tuple[BinaryIO, int]]:
    """Open a downloaded file for reading: (file, size), with every way it can fail, including
    while it is read, turned into a CkptFileError naming it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CkptFileError(path, "empty file (0 bytes): the download did not happen or was cut off")
            yield f, size
    except IsADirectoryError:
        raise CkptFileError(path, "a directory where a file should be") from None
    except OSError as e:
        raise CkptFileError(path, f"cannot read ({e.strerror})") from None


def read_header(path: Path) -> SafetensorsFile:
    """Parse and validate a safetensors header; raise CkptFileError naming the first problem."""

    def fail(problem: str) -> CkptFileError:
        return CkptFileError(path, problem)

    with open_download(path) as (f, size):
        if size < 8:
            raise fail(f"truncated: {size} bytes, less than the 8-byte header length")
        header_len = int.from_bytes(f.read(8), "little")
        if header_len > HEADER_LIMIT:
            raise fail(f"header length {header_len:,} is over the 100 MB limit: not a safetensors file, or damaged")
        if 8 + header_len > size:
            raise fail(f"truncated: {size:,} bytes of at least {8 + header_len:,} (the header alone)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise fail("header JSON is nested too deeply: not a safetensors header") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"header is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise fail("header JSON is not an object")
    metadata = header.pop(METADATA_KEY, None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise fail("__metadata__ must map strings to strings")
    tensors = sorted((_tensor(n, s, fail) for n, s in header.items()), key=lambda t: (t.begin, t.end))
    position = 0
    for i, t in enumerate(tensors):
        if t.begin < position:
            raise fail(f"tensor {t.name!r} overlaps tensor {tensors[i - 1].name!r} (bytes {t.begin:,}-{t.end:,})")
        if t.begin > position:
            raise fail(f"a gap of {t.begin - position:,} bytes before tensor {t.name!r}: offsets must be contiguous")
        position = t.end
    expected = 8 + header_len + position
    if size < expected:
        raise fail(f"truncated: {size:,} bytes of {expected:,}")
    if size > expected:
        raise fail(f"{size - expected:,} extra bytes after the last tensor ({size:,} bytes, expected {expected:,})")
    return SafetensorsFile(path, header_len, tuple(tensors), metadata, size)


def header_for(tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """The header bytes (padded to 8 bytes, as the library writes) and the data length, for
    tensors laid out one after another in the given order."""
    header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
    position = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [position, position + nbytes]}
        position += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return raw, position


def write_safetensors(
    path: Path,
    tensors: list[tuple[str, str, tuple[int, ...]]],
    data: Callable[[int], bytes] | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write a safetensors file. data(n) gives n bytes of tensor data; None leaves the data as a
    sparse hole (the file has its full size but occupies almost no disk)."""
    header, data_len = header_for(tensors, metadata)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        if data is None:
            f.truncate(8 + len(header) + data_len)
            return
        for _, dtype, shape in tensors:
            f.write(data(math.prod(shape) * DTYPE_SIZES[dtype]))
