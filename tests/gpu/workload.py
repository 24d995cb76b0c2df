"""The sampler step's workload (tests/gpu/gpu_acceptance.py): known GPU allocations, each held still.

    python tests/gpu/workload.py 0,1,4,16 HOLD_S        (on cuda:0; the caller sets CUDA_VISIBLE_DEVICES)

One JSON line per event on stdout: {"event": "start", "at": T} before torch is imported (until then the
process holds no GPU memory: the baseline), then for each step of GIB gibibytes, once it has been held
still, {"event": "hold", "gib": GIB, "reserved_bytes": torch.cuda.memory_reserved(), "from": T0, "to": T1},
times from time.monotonic() (one clock for every process on the machine). Step 0 creates the CUDA
context and one 2 MiB block. Only torch.empty after that: no kernel is launched, so no lazily loaded
CUDA module can grow the context between steps.
"""

from __future__ import annotations

import json
import sys
import time


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    steps = [int(x) for x in sys.argv[1].split(",")]
    hold_s = float(sys.argv[2])
    say(event="start", at=time.monotonic())
    import torch

    context = torch.empty(1, device="cuda")  # the context, and the allocator's first 2 MiB block
    for gib in steps:
        block = torch.empty(gib * 2**30, dtype=torch.uint8, device="cuda") if gib else None
        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved()
        start = time.monotonic()
        time.sleep(hold_s)
        say(event="hold", gib=gib, reserved_bytes=reserved, **{"from": start, "to": time.monotonic()})
        del block
        torch.cuda.empty_cache()  # the next step's reservation is its own, not this one's plus it
        torch.cuda.synchronize()
    del context


if __name__ == "__main__":
    main()
