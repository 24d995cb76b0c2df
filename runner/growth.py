"""Memory growth across a Gradio session's requests (logs/requests.csv), per GPU.

Upstream's README warns of OOM "after multiple runs in the Gradio Web UI" (docs/upstream.md, "Gradio entry"):
what one request leaves behind, the next starts from. Each request's peak is the most the GPU held from that
request's start until the next one's (the last: until the samples end), so memory kept between requests counts.
The trend is the least-squares slope of those peaks over the request number, in GiB per request, from
MIN_REQUESTS requests on; projected from the last request, it says how many more requests reach the limit
(usable where the plan predicted it, else the card's total), and the report warns when that is WARN_WITHIN or fewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MIN_REQUESTS = 3  # two peaks make a line through any noise
WARN_WITHIN = 10  # requests: a session of this many more is an ordinary afternoon
FLAT_GIB_PER_REQUEST = 0.01  # below this the peaks are steady: no projection


def slope(peaks: Sequence[float]) -> float:
    """Least-squares GiB per request over request numbers 1..N."""
    n = len(peaks)
    mean_x, mean_y = (n + 1) / 2, sum(peaks) / n
    spread = sum((x - mean_x) ** 2 for x in range(1, n + 1))
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(range(1, n + 1), peaks)) / spread


def gpu_growth(peaks: Sequence[float | None], limit_gib: float | None) -> dict | None:
    """One GPU's trend and the requests left before its limit; None with fewer than MIN_REQUESTS measured peaks.

    The projection starts from the higher of the last request's peak and the fitted line there, so a last
    request that happened to peak low does not buy requests."""
    measured = [p for p in peaks if p is not None]
    if len(measured) < MIN_REQUESTS:
        return None
    gib_per_request = slope(measured)
    fitted_last = sum(measured) / len(measured) + gib_per_request * (len(measured) - 1) / 2
    start = max(measured[-1], fitted_last)
    left = None
    if limit_gib is not None and gib_per_request >= FLAT_GIB_PER_REQUEST:
        left = max(0, math.ceil((limit_gib - start) / gib_per_request))
    return {
        "gib_per_request": round(gib_per_request, 3),
        "requests_fitted": len(measured),
        "limit_gib": None if limit_gib is None else round(limit_gib, 2),
        "requests_to_limit": left,
        "warn": left is not None and left <= WARN_WITHIN,
    }
