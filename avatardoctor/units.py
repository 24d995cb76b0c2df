"""Byte units. Data stays in bytes (as NVML gives it); text is GiB or MiB, always labelled."""

MIB = 2**20
GIB = 2**30


def gib(n_bytes: float, digits: int = 2) -> str:
    return f"{n_bytes / GIB:.{digits}f} GiB"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.0f} MiB"


def file_size(n_bytes: int) -> str:
    """A file's size in the unit that shows it: KiB under 1 MiB, MiB under 1 GiB, else GiB."""
    if n_bytes < MIB:
        return f"{n_bytes / 1024:.1f} KiB"
    return mib(n_bytes) if n_bytes < GIB else gib(n_bytes)


def plural(count: int, word: str) -> str:
    """'1 process', '2 processes', '3 rules': counts read as English, never '1 GPUs'."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}{'es' if word.endswith(('s', 'sh', 'ch', 'x')) else 's'}"
