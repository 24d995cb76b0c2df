"""Checksum manifests as `sha256sum` writes them, so `sha256sum -c` checks ours and we read its.

A line is `<64 hex digits>  <path>` (two spaces: text mode) or `<64 hex digits> *<path>` (binary
mode, the same bytes on Linux), the path relative to the checkpoint folder. A name holding a
backslash or a newline is escaped (`\\\\`, `\\n`) on a line that starts with a backslash, as
sha256sum does. We also take blank lines, `#` comments and CRLF line ends. A manifest is user
input: it is read with bounds, and every problem is one line naming the file and the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from avatardoctor.errors import InputError
from avatardoctor.files import FileTooLarge, read_limited, write_new_file
from avatardoctor.units import MIB, mib

READ_FLAG = "--manifest"
WRITE_FLAG = "--write-manifest"

# A checkpoint's manifest is a few KiB; these only stop a wrong file (a shard, /dev/zero) from
# being read into memory or scanned for minutes.
MAX_BYTES = 16 * MIB
MAX_LINE_CHARS = 4096
MAX_ENTRIES = 100_000

_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_ESCAPE = re.compile(r"\\(.?)", re.DOTALL)
_UNESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}  # coreutils 9.2+ also escapes a carriage return


class _LineError(ValueError):
    """A problem with one manifest line; read_manifest adds the file and the line number."""


def read_manifest(path: Path) -> dict[str, str]:
    """{relative POSIX path: lowercase sha256 hex} from a sha256sum file; InputError if it is not one."""
    try:
        data = read_limited(path, MAX_BYTES)
    except OSError as err:
        raise InputError(f"{READ_FLAG} {path}: cannot read ({err.strerror})") from None
    except FileTooLarge:
        raise InputError(
            f"{READ_FLAG} {path}: over {mib(MAX_BYTES)}, not a checksum list (is it the right file?)"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{READ_FLAG} {path}: line {line_no}: not UTF-8 text (is it the right file?)") from None

    entries: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_no, line in enumerate(text.split("\n"), start=1):
        try:
            entry = _parse_line(line.removesuffix("\r"))
            if entry is None:
                continue
            name, digest = entry
            if name in first_seen:
                raise _LineError(f"{name!r} is listed twice (first on line {first_seen[name]})")
            if len(entries) == MAX_ENTRIES:
                raise _LineError(f"more than {MAX_ENTRIES:,} entries; a checkpoint has a few dozen files")
        except _LineError as err:
            raise InputError(f"{READ_FLAG} {path}: line {line_no}: {err}") from None
        entries[name] = digest
        first_seen[name] = line_no
    return entries


def _parse_line(line: str) -> tuple[str, str] | None:
    """(normalised path, lowercase digest), or None for a blank or comment line."""
    if len(line) > MAX_LINE_CHARS:
        raise _LineError(f"longer than {MAX_LINE_CHARS} characters")
    if not line.strip() or line.startswith("#"):
        return None
    escaped = line.startswith("\\")
    digest, _, rest = line.removeprefix("\\").partition(" ")
    if not _SHA256_HEX.fullmatch(digest):
        raise _LineError(f"expected a sha256 digest (64 hex digits) first, found {digest[:70]!r}")
    if rest[:1] not in (" ", "*"):
        raise _LineError("expected two spaces or ' *' between the digest and the path, as sha256sum writes")
    name = _unescape(rest[1:]) if escaped else rest[1:]
    return _inside_checkpoint(name), digest.lower()


def _unescape(name: str) -> str:
    def one(escape: re.Match) -> str:
        if escape.group(1) not in _UNESCAPES:
            raise _LineError(f"unknown escape {escape.group(0)!r} in the path")
        return _UNESCAPES[escape.group(1)]

    return _ESCAPE.sub(one, name)


def _inside_checkpoint(name: str) -> str:
    """The path as a normalised relative POSIX path, refusing any that could leave the folder."""
    if not name:
        raise _LineError("no path after the digest")
    if "\0" in name:
        raise _LineError("the path contains a NUL character")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise _LineError(f"{name!r} is absolute; paths must be relative to the checkpoint folder")
    if ".." in path.parts:
        raise _LineError(f"{name!r} climbs out of the checkpoint folder ('..')")
    if path == PurePosixPath("."):
        raise _LineError(f"{name!r} is the folder itself, not a file")
    return path.as_posix()


def write_manifest(digests: Mapping[str, str], path: Path, force: bool = False) -> None:
    """Write {relative POSIX path: sha256 hex} sorted by path, exactly as `sha256sum` would, so
    `sha256sum -c FILE` run inside the checkpoint folder checks it. Never overwrites without force."""
    lines = [_manifest_line(name, digest) for name, digest in sorted(digests.items())]
    write_new_file(path, "".join(lines), WRITE_FLAG, force)


def _manifest_line(name: str, digest: str) -> str:
    if "\\" in name or "\n" in name:  # sha256sum's escaping, which sha256sum -c undoes
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {name}\n"


def relative_digests(digests: Mapping[Path, str], root: Path) -> dict[str, str]:
    """Manifest keys for files hashed under root: their paths relative to it, in POSIX form."""
    return {path.relative_to(root).as_posix(): digest for path, digest in digests.items()}


FindingKind = Literal["wrong-content", "missing", "unlisted"]


@dataclass(frozen=True)
class Finding:
    """One difference between a manifest and the checkpoint on disk.

    wrong-content: both have the file, the digests differ (same size or not: a corrupt or different
    file). missing: in the manifest, not hashed on disk. unlisted: on disk, not in the manifest;
    only a warning, as extra files (a README, a cache folder) do not break a load.
    """

    path: str
    kind: FindingKind
    expected: str | None  # the manifest's digest; None when unlisted
    actual: str | None  # the digest on disk; None when missing

    @property
    def is_warning(self) -> bool:
        return self.kind == "unlisted"


def compare(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[Finding]:
    """The differences, sorted by path; both sides keyed by relative POSIX path, digests lowercase.

    Files that failed to hash (HashResult.errors) are the caller's to report as such; drop them from
    `expected` too, or they come back here as missing.
    """
    findings = []
    for name in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(name), actual.get(name)
        if want == got:
            continue
        kind: FindingKind = "unlisted" if want is None else "missing" if got is None else "wrong-content"
        findings.append(Finding(name, kind, want, got))
    return findings
