"""The nccl step's reference (tests/gpu/gpu_acceptance.py): plain torch.distributed all_reduce on NCCL,
timed as nccl-tests and avatardoctor's worker time it (two warm-up calls, then the median of ITERS
calls, each followed by a device synchronise), but written apart from avatardoctor.nccltest, so that a
mistake in either shows as a disagreement.

    torchrun --nproc_per_node N tests/gpu/allreduce_reference.py --out FILE --sizes 1024,... --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sizes", required=True)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    world = dist.get_world_size()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        data = torch.ones(max(size // 4, 1), device=device)
        for _ in range(2):
            dist.all_reduce(data)
        torch.cuda.synchronize(device)
        seconds = []
        for _ in range(args.iters):
            start = time.perf_counter()
            dist.all_reduce(data)
            torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        nbytes = data.numel() * data.element_size()
        algbw = nbytes / median / 1e9  # GB/s, as nccl-tests
        rows.append(
            {"bytes": nbytes, "time_us": median * 1e6, "algbw_gbs": algbw, "busbw_gbs": algbw * 2 * (world - 1) / world}
        )
    if dist.get_rank() == 0:
        args.out.write_text(json.dumps({"world_size": world, "allreduce": rows}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
