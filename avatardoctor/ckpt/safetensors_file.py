"""safetensors files by their header alone: 8-byte little-endian length, then JSON naming every
tensor's dtype, shape and byte range. Read with bounds (the files are untrusted downloads) and
written for skeleton checkpoints, where the data may be left as a sparse hole.

Hand-written rather than through the safetensors library: verifying needs the raw offsets and
exact sizes (to say "truncated: N bytes of M"), and a full-size skeleton cannot hold 30 GiB of
tensors in memory to hand to the library.

It accepts exactly the headers the library's own loader (safetensors 0.8, serde_json underneath)
accepts, except that a name given twice is refused (the library keeps the last silently: which
tensor a loader sees then depends on its JSON parser). tests/test_ckpt.py checks this against
`safetensors.safe_open` on generated files. Everything is linear in the header's length.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

HEADER_LIMIT = 100_000_000  # bytes; the safetensors reference implementation's own limit
DTYPE_BITS = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}  # every dtype of safetensors 0.8, in bits: F4 and F6 pack several elements per byte
U64_MAX = 2**64 - 1  # shapes and offsets are Rust usizes: larger is refused, as the loader does
LONGEST_U64 = len(str(U64_MAX))
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a \ud800 escape that is not half of a pair: not UTF-8
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


def data_bytes(dtype: str, shape: Iterable[int]) -> int:
    """The bytes a tensor of this dtype and shape holds (sub-byte dtypes pack; whole bytes assumed)."""
    return math.prod(shape) * DTYPE_BITS[dtype] // 8


def _short(value: object, limit: int = 80) -> str:
    """repr(value), cut to limit characters: a message names a tensor, it does not copy a 1 MB name."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _HeaderProblem(ValueError):
    """Raised from inside the JSON parser's hooks: the header is refused as the loader refuses it."""


def _object(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object, refusing a repeated name and the lone surrogates serde_json refuses (linear time)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # the first name seen twice
            if key in seen:
                raise _HeaderProblem(f"the name {_short(key)} appears twice")
            seen.add(key)
    for key, value in pairs:
        if LONE_SURROGATE.search(key) or (isinstance(value, str) and LONE_SURROGATE.search(value)):
            raise _HeaderProblem(f"a lone UTF-16 surrogate escape in {_short(key)}: not valid UTF-8 text")
    return obj


def _json_int(text: str) -> int | float:
    """An integer as serde_json reads it: outside i64/u64 (and -0) it is a float, so never a size."""
    if len(text.lstrip("-")) <= LONGEST_U64 and text != "-0":
        value = int(text)
        if -(2**63) <= value <= U64_MAX:
            return value
    return _json_float(text)


def _json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _HeaderProblem(f"number out of range ({text[:20]}...)")
    return value


def _json_constant(name: str) -> float:
    raise _HeaderProblem(f"{name} is not JSON")


def _numel(shape: list[int]) -> int | None:
    """The element count, or None where the loader's usize arithmetic overflows (it multiplies in order)."""
    n = 1
    for d in shape:
        n *= d
        if n > U64_MAX:
            return None
    return n


def _tensor(name: str, spec: object, fail: Callable[[str], Exception]) -> TensorEntry:
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
        raise fail(
            f"tensor {_short(name)}: an entry needs dtype, shape and data_offsets"
        )  # others are ignored, as the loader does
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise fail(f"tensor {_short(name)}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d <= U64_MAX for d in shape):
        raise fail(f"tensor {_short(name)}: shape must be a list of non-negative integers, not {str(shape)[:40]}")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and 0 <= o <= U64_MAX for o in offsets)
    ):
        raise fail(f"tensor {_short(name)}: data_offsets must be [begin, end], non-negative integers")
    begin, end = offsets
    if begin > end:
        raise fail(f"tensor {_short(name)}: data_offsets [{begin}, {end}] are not an ascending byte range")
    numel = _numel(shape)
    if numel is None or numel * DTYPE_BITS[dtype] > U64_MAX:
        raise fail(f"tensor {_short(name)}: shape {str(shape)[:60]} overflows a 64-bit size")
    if numel * DTYPE_BITS[dtype] % 8:
        raise fail(f"tensor {_short(name)}: {numel:,} {dtype} elements do not fill whole bytes")
    entry = TensorEntry(name, dtype, tuple(shape), begin, end)
    expected = data_bytes(dtype, shape)
    if entry.nbytes != expected:
        raise fail(
            f"tensor {_short(name)}: {entry.nbytes:,} bytes of data, but {dtype} {_short(list(shape))} needs {expected:,}"
        )
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
        header = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object,
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
    except RecursionError:
        raise fail("header JSON is nested too deeply: not a safetensors header") from None
    except _HeaderProblem as e:
        raise fail(f"header refused: {e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise fail(f"header is not valid JSON ({str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise fail("header JSON is not an object")
    metadata = header.pop(METADATA_KEY, None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise fail("__metadata__ must map strings to strings")
    tensors = sorted((_tensor(n, s, fail) for n, s in header.items()), key=lambda t: (t.begin, t.end))
    position = 0
    for i, t in enumerate(tensors):
        if t.begin < position:
            raise fail(
                f"tensor {_short(t.name)} overlaps tensor {_short(tensors[i - 1].name)} (bytes {t.begin:,}-{t.end:,})"
            )
        if t.begin > position:
            raise fail(
                f"a gap of {t.begin - position:,} bytes before tensor {_short(t.name)}: offsets must be contiguous"
            )
        position = t.end
    expected = 8 + header_len + position
    if size < expected:
        raise fail(f"truncated: {size:,} bytes of {expected:,}")
    if size > expected:
        raise fail(f"{size - expected:,} extra bytes after the last tensor ({size:,} bytes, expected {expected:,})")
    return SafetensorsFile(path, header_len, tuple(tensors), metadata, size)


def header_for(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
) -> tuple[bytes, int]:
    """The header bytes (padded to 8 bytes, as the library writes) and the data length, for
    tensors laid out one after another in the given order."""
    header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
    position = 0
    for name, dtype, shape in tensors:
        nbytes = data_bytes(dtype, shape)
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
            f.write(data(data_bytes(dtype, shape)))
