""".pth checkpoints (torch.save's zip format), inspected as zip archives and never unpickled.

A torch.save archive holds `<name>/data.pkl` (the pickled structure: unpickling it runs code, so it
is never loaded) and one stored entry `<name>/data/<key>` per tensor storage; the entries' sizes sum
to the parameter bytes.
"""

from __future__ import annotations

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from avatardoctor.ckpt.safetensors_file import CkptFileError, open_download

ZIP_MAGIC = b"PK\x03\x04"
CRC_CHUNK = 2**20  # bytes decompressed at a time while checking an entry
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
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                problem = _entry_problem(archive, info)
                if problem:
                    return f"entry {info.filename} {problem}"
    except (*DIRECTORY_ERRORS, OSError) as e:
        return f"unreadable as a zip archive ({str(e)[:80]})"
    return None


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
