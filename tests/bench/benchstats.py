"""What every benchmark prints of its repeated rounds: min / median / max (tests/bench is on sys.path when a
benchmark runs as a script)."""

from __future__ import annotations

import statistics


def spread(values: list[float], fmt: str) -> str:
    """min / median / max of the rounds, each formatted with the format spec fmt (".2f", "+.3f", ".2%")."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))
