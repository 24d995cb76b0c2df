"""Byte units. Data stays in bytes (as NVML gives it); text is GiB or MiB, always labelled."""

MIB = 2**20
GIB = 2**30


def gib(n_bytes: float, digits: int = 2) -> str:
    return f"{n_bytes / GIB:.{digits}f} GiB"


def mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.0f} MiB"
