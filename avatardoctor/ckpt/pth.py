""".pth checkpoints (torch.save's zip format), inspected as zip archives and never unpickled.

A torch.save archive holds `<name>/data.pkl` (the pickled structure: unpickling it runs code, so it
is never loaded) and one stored entry `<name>/data/<key>` per tensor storage; the entries' sizes sum
to the parameter bytes.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from avatardoctor.ckpt.safetensors_file import CkptFileError, open_download

ZIP_MAGIC = b"PK\x03\x04"


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
        except (zipfile.BadZipFile, ValueError, EOFError):
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


def first_bad_crc(path: Path) -> str | None:
    """Read every entry and check its zip CRC-32: the name of the first damaged entry, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"(unreadable: {e})"
