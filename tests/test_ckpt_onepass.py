"""`ckpt verify --deep` reads each byte once: the sha256 and the .pth CRC-32 checks share one read.

The hashing process reads files two ways, and reports both counts: what it read with read() by the
kernel's count (its /proc/self/io rchar, every byte any of its threads read) and what it hashed from
memory maps, which no read() call carries (its own count of the bytes it fed the hash from each map,
each map walked once). The streamed CRC check is held to zipfile's own verdict on randomly damaged
archives.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import threading
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from avatardoctor.ckpt import layout
from avatardoctor.ckpt.deep import gather_deep
from avatardoctor.ckpt.hashchild import CHUNK_BYTES, read_file
from avatardoctor.ckpt.pth import CrcCheck, _entry_problem, first_damaged_entry
from avatardoctor.ckpt.scan import scan_checkpoint
from avatardoctor.ckpt.skeleton import write_skeleton


def stored_archive(path: Path, sizes: list[int], seed: int = 0, method: int = zipfile.ZIP_STORED) -> Path:
    """A torch.save-shaped zip: <name>/data.pkl and one entry of random bytes per storage."""
    rng = random.Random(seed)
    name = path.stem
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr(f"{name}/data.pkl", b"\x80\x02}q\x00.")
        for i, size in enumerate(sizes):
            z.writestr(f"{name}/data/{i}", rng.randbytes(size))
    return path


def directory_bytes(path: Path) -> int:
    """What zipfile reads to list an archive's entries: the central directory and the end record."""
    with zipfile.ZipFile(path) as z:
        first_central = max(i.header_offset + 30 + len(i.filename) + i.compress_size for i in z.infolist())
    return path.stat().st_size - first_central + 64 * 2**10  # the end record may be searched for (64 KiB)


def zipfile_verdict(path: Path) -> str | None:
    """The reference: every entry read through zipfile, the first damaged one named."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                problem = _entry_problem(archive, info)
                if problem:
                    return f"entry {info.filename} {problem}"
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError) as e:
        return f"unreadable as a zip archive ({str(e)[:80]})"
    return None


def streamed_verdict(path: Path, chunk: int) -> str | None:
    with open(path, "rb", buffering=0) as f:
        check = CrcCheck(path, f)
        while data := f.read(chunk):
            check.update(memoryview(data))
    return check.finish()


def test_deep_verify_reads_each_byte_once(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    # A T5 archive big enough that a second read of it could not hide in the allowance for directories,
    # with storages smaller and larger than a read chunk, so entries straddle chunk boundaries.
    sizes = [3 * CHUNK_BYTES + 5, 7, 0, CHUNK_BYTES // 3, 2 * CHUNK_BYTES - 1] * 2
    stored_archive(root / layout.T5_FILE, sizes)
    archives = [root / layout.T5_FILE, root / layout.VAE_FILE]
    scan = scan_checkpoint(root, tmp_path)
    facts = gather_deep(scan, None, Console(file=io.StringIO()))
    read = facts.hashed.read_bytes + facts.hashed.mapped_bytes

    data = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert facts.crc == {layout.T5_FILE: None, layout.VAE_FILE: None}
    assert len(facts.hashed.digests) == sum(1 for p in root.rglob("*") if p.is_file())
    assert data <= read <= data + sum(map(directory_bytes, archives))
    assert facts.hashed.mapped_bytes >= (root / layout.T5_FILE).stat().st_size  # the big archive came from its map
    assert (root / layout.T5_FILE).stat().st_size > sum(map(directory_bytes, archives))  # a re-read would show


def test_a_damaged_entry_is_found_in_the_one_read(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    t5 = stored_archive(root / layout.T5_FILE, [2 * CHUNK_BYTES, CHUNK_BYTES + 3, 10])
    with zipfile.ZipFile(t5) as z:
        info = z.getinfo(f"{t5.stem}/data/1")
    with open(t5, "r+b") as f:  # the last byte of a storage that starts in one read chunk and ends in the next
        f.seek(info.header_offset + 30 + len(info.filename) + info.compress_size - 1)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    facts = gather_deep(scan_checkpoint(root, tmp_path), None, Console(file=io.StringIO()))
    assert facts.crc[layout.T5_FILE] == f"entry {t5.stem}/data/1 fails its CRC-32"
    assert facts.crc[layout.VAE_FILE] is None
    assert facts.hashed.digests[t5] == hashlib.sha256(t5.read_bytes()).hexdigest()


@pytest.mark.parametrize("mapped", [True, False], ids=["from-a-map", "with-read"])
def test_the_check_sees_exactly_the_hashed_bytes(tmp_path, mapped):
    class Collect:
        def __init__(self) -> None:
            self.seen = bytearray()

        def update(self, chunk: memoryview) -> None:
            self.seen += chunk

        def finish(self) -> str | None:
            return f"saw {len(self.seen)} bytes"

    for i, size in enumerate([0, 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 11]):
        path = tmp_path / f"f{i}"
        path.write_bytes(random.Random(i).randbytes(size))
        check = Collect()
        chunks: list[int] = []
        read = read_file(path, mapped, threading.Event(), chunks.append, lambda f: check)
        assert check.seen == path.read_bytes()
        assert read.finding == f"saw {size} bytes"
        assert read.digest == hashlib.sha256(path.read_bytes()).hexdigest()
        assert read.mapped == (size if mapped else 0)
        assert sum(chunks) == size and all(n <= CHUNK_BYTES for n in chunks)


def flip(raw: bytearray, offset: int, mask: int) -> None:
    raw[offset % len(raw)] ^= mask or 1


def truncate(raw: bytearray, offset: int, mask: int) -> None:
    del raw[offset % len(raw) :]


def local_name(raw: bytearray, offset: int, mask: int) -> None:
    """Change a byte of the first storage's name in its local header only (the directory keeps it)."""
    start = raw.index(b"PK\x03\x04", 1) + 30
    raw[start + offset % 4] ^= mask or 1


def local_signature(raw: bytearray, offset: int, mask: int) -> None:
    raw[raw.index(b"PK\x03\x04", 1) + offset % 4] ^= mask or 1


def stored_flags(raw: bytearray, offset: int, mask: int) -> None:
    """Mark the first storage encrypted or patched in both headers: zipfile must judge it."""
    local, central = raw.index(b"PK\x03\x04", 1), raw.index(b"PK\x01\x02", raw.index(b"PK\x01\x02") + 1)
    bit = (0x1, 0x20, 0x40)[offset % 3]
    struct.pack_into("<H", raw, local + 6, struct.unpack_from("<H", raw, local + 6)[0] | bit)
    struct.pack_into("<H", raw, central + 8, struct.unpack_from("<H", raw, central + 8)[0] | bit)


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6),
    deflated=st.booleans(),
    damage=st.sampled_from([None, flip, truncate, local_name, local_signature, stored_flags]),
    offset=st.integers(0, 2**31),
    mask=st.integers(0, 255),
    chunk=st.sampled_from([1, 7, 64, 4096, CHUNK_BYTES]),
)
def test_the_streamed_check_agrees_with_zipfile(tmp_path_factory, sizes, deflated, damage, offset, mask, chunk):
    path = tmp_path_factory.mktemp("zip") / "Wan2.1_VAE.pth"
    stored_archive(path, sizes, seed=offset, method=zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED)
    if damage is not None:
        raw = bytearray(path.read_bytes())
        damage(raw, offset, mask)
        path.write_bytes(bytes(raw))
    assert streamed_verdict(path, chunk) == zipfile_verdict(path)
    assert first_damaged_entry(path) == zipfile_verdict(path)
