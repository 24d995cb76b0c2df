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
