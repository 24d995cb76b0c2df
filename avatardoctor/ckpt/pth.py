""".pth checkpoints (torch.save's zip format), inspected as zip archives and never unpickled.

A torch.save archive holds `<name>/data.pkl` (the pickled structure: unpickling it runs code, so it
is never loaded) and one stored entry `<name>/data/<key>` per tensor storage; the entries' sizes sum
to the parameter bytes.
"""

from __future__ import annotations

import lzma
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zlib_ng.zlib_ng import crc32  # zlib's CRC-32 at ~6x the speed of zlib.crc32: the same value

from avatardoctor.ckpt.safetensors_file import CkptFileError, open_download

ZIP_MAGIC = b"PK\x03\x04"
CRC_CHUNK = 2**20  # bytes read (or decompressed) at a time while checking an archive
LOCAL_HEADER_BYTES = 30  # a local file header before its name and extra field
UTF8_NAME_FLAG = 0x800
# Encrypted (bit 0), compressed patched data (bit 5), strong encryption (bit 6): zipfile reads none of
# them as plain stored data, so such entries are left to zipfile to judge.
UNREADABLE_FLAGS = 0x1 | 0x20 | 0x40
# What zipfile raises for a damaged directory: NotImplementedError for a "zip version" it does not know,
# ValueError (UnicodeDecodeError) for a name flagged UTF-8 that is not.
DIRECTORY_ERRORS = (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError)


@dataclass(frozen=True)
class PthArchive:
    path: Path
    storages: int
    data_bytes: int  # the storages' bytes: the parameters, in whatever dtype they were saved
    file_bytes: int


def read_pth(path: Path) -> PthArchive:
    def fail(problem: str) -> CkptFileError:
        return CkptFileError(path, problem)

    with open_download(path) as (f, size):
        magic = f.read(4)
        try:
            with zipfile.ZipFile(f) as archive:
                infos = archive.infolist()
        except DIRECTORY_ERRORS:
            if magic == ZIP_MAGIC:
                raise fail(
                    f"truncated or damaged: a zip archive without its central directory ({size:,} bytes): "
                    "the download stopped early?"
                ) from None
            raise fail("not a zip archive: torch.save writes zip archives (a legacy or foreign file?)") from None
    pickles = [i for i in infos if i.filename.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise fail("a zip archive, but not torch.save's: no single <name>/data.pkl entry")
    prefix = pickles[0].filename[: -len("data.pkl")] + "data/"
    storages = [i for i in infos if i.filename.startswith(prefix) and not i.is_dir()]
    for info in storages:
        if info.header_offset + info.compress_size > size:
            raise fail(f"truncated: entry {info.filename} ends past the file's {size:,} bytes")
    return PthArchive(path, len(storages), sum(i.file_size for i in storages), size)


def first_damaged_entry(path: Path) -> str | None:
    """Read every entry, checking its zip CRC-32: what is wrong with the first damaged one, or None.
    An entry that cannot be decompressed at all (corrupt deflate data, encrypted, a compression
    method Python's zipfile lacks) is damaged too: torch.load could not read it either."""
    try:
        with open(path, "rb", buffering=0) as f:
            check = CrcCheck(path, f)
            while chunk := f.read(CRC_CHUNK):
                check.update(memoryview(chunk))
    except OSError as e:
        return f"unreadable as a zip archive ({str(e)[:80]})"
    return check.finish()


class CrcCheck:
    """first_damaged_entry for an archive whose bytes the caller reads anyway (`ckpt verify --deep`
    hashes them): fed the whole file in order, it checks each stored entry's local header and CRC-32
    from those same bytes, so the archive is read once, not twice. Only the zip directory (read here,
    at the start) and entries it cannot vouch for (damaged, deflated, encrypted: never torch.save's)
    are read again, by zipfile, so that what it says wrong is exactly what zipfile says."""

    def __init__(self, path: Path, f: BinaryIO):
        """f: the open archive; read for its directory, then left at its start."""
        self.path, self.length, self.unreadable = path, 0, None
        try:
            with zipfile.ZipFile(f) as archive:
                self.infos = archive.infolist()
        except (*DIRECTORY_ERRORS, OSError) as e:
            self.infos, self.unreadable = [], f"unreadable as a zip archive ({str(e)[:80]})"
        f.seek(0)
        self.entries = [_StoredEntry(info) for info in self.infos]
        self.waiting = sorted((e for e in self.entries if e.verdict is None), key=lambda e: e.at, reverse=True)
        self.reading: list[_StoredEntry] = []

    def update(self, chunk: memoryview) -> None:
        """The archive's next bytes."""
        start, self.length = self.length, self.length + len(chunk)
        while self.waiting and self.waiting[-1].at < self.length:
            self.reading.append(self.waiting.pop())
        for entry in self.reading:
            entry.update(start, chunk)
        self.reading = [e for e in self.reading if e.verdict is None]

    def finish(self) -> str | None:
        """After the last byte: what is wrong with the first damaged entry, or None."""
        if self.unreadable:
            return self.unreadable
        suspects = [i for i, e in zip(self.infos, self.entries) if not e.sound(self.length)]
        if not suspects:
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                for info in suspects:
                    problem = _entry_problem(archive, info)
                    if problem:
                        return f"entry {info.filename} {problem}"
        except (*DIRECTORY_ERRORS, OSError) as e:
            return f"unreadable as a zip archive ({str(e)[:80]})"
        return None


class _StoredEntry:
    """One entry's local header and stored data as they stream past. verdict: None while bytes are
    still wanted; True when the header and CRC-32 match the directory; False when zipfile must judge
    (anything but a plain stored entry, or a mismatch)."""

    def __init__(self, info: zipfile.ZipInfo):
        self.info = info
        self.at = info.header_offset  # the offset of the next byte wanted
        self.end = self.at + LOCAL_HEADER_BYTES  # ... and of the byte after the last one wanted for now
        self.header = bytearray()
        self.data_end: int | None = None
        self.crc = 0
        plain = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & UNREADABLE_FLAGS
        self.verdict: bool | None = None if plain and info.header_offset >= 0 else False

    def update(self, start: int, chunk: memoryview) -> None:
        while self.verdict is None and self.at < start + len(chunk):
            piece = chunk[self.at - start : min(self.end, start + len(chunk)) - start]
            self.at += len(piece)
            if self.data_end is None:
                self.header += piece
            else:
                self.crc = crc32(piece, self.crc)
            if self.at == self.end:
                self._next()

    def _next(self) -> None:
        """The wanted bytes are in: move on to the name, to the data, or to a verdict."""
        if self.data_end is not None:
            self.verdict = self.crc == self.info.CRC
            return
        if len(self.header) == LOCAL_HEADER_BYTES:
            signature, flags, name_length, extra_length = struct.unpack_from("<4s2xH18xHH", self.header)
            if signature != ZIP_MAGIC:
                self.verdict = False
                return
            self.flags, self.extra_length = flags, extra_length
            self.end += name_length
            if name_length:
                return
        try:
            name = self.header[LOCAL_HEADER_BYTES:].decode("utf-8" if self.flags & UTF8_NAME_FLAG else "cp437")
        except UnicodeDecodeError:
            name = None
        if name != self.info.orig_filename:
            self.verdict = False  # zipfile refuses a local name that differs from the directory's
            return
        self.at = self.end + self.extra_length
        self.data_end = self.at + self.info.compress_size
        self.end = self.at + min(self.info.compress_size, self.info.file_size)  # what zipfile's CRC covers
        if self.at == self.end:
            self._next()

    def sound(self, length: int) -> bool:
        """Whether zipfile would read this entry without complaint from an archive of `length` bytes."""
        return bool(self.verdict) and self.data_end is not None and self.data_end <= length


def _entry_problem(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    try:
        with archive.open(info) as entry:
            while entry.read(CRC_CHUNK):
                pass
    except zipfile.BadZipFile as e:
        return "fails its CRC-32" if "CRC" in str(e) else f"is damaged ({str(e)[:80]})"
    except NotImplementedError:
        return f"uses compression method {info.compress_type}, which no torch.load can read"
    except RuntimeError as e:  # zipfile's word for an encrypted entry
        return "is encrypted: torch.save never encrypts" if info.flag_bits & 0x1 else f"cannot be read ({str(e)[:80]})"
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as e:
        return f"holds corrupt compressed data ({str(e)[:80]})"
    return None
