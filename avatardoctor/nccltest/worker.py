"""One rank of the live communication test, run by torchrun: talk the way Live Avatar's TPP pipeline
talks, and measure it.

Stages, each recorded in OUT/rank<N>.json as it is reached, so a rank that hangs or dies still says
how far it got: init (the process group, with a timeout), allreduce (the sum of ranks must come
back), ring (rank i sends a latent-block-sized tensor to rank i+1, as TPP hands latents on),
bandwidth (all_reduce and send/recv over a range of sizes, reported as nccl-tests does), p2p (on
GPUs: copy bandwidth between every pair of this node's GPUs), done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


class Progress:
    def __init__(self, out: Path, rank: int):
        self.path = out / f"rank{rank}.json"
        self.doc: dict = {"rank": rank, "stage": "start", "ok": True}

    def stage(self, name: str, **facts) -> None:
        self.doc.update(stage=name, **facts)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc))
        os.replace(tmp, self.path)  # a reader never sees half a file


def timed(op, iters: int, sync) -> float:
    """Median seconds of one op, after two warm-up runs."""
    for _ in range(2):
        op()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        op()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth_rows(size: int, seconds: float, factor: float) -> dict:
    algbw = size / seconds / 1e9
    return {
        "bytes": size,
        "time_us": round(seconds * 1e6, 1),
        "algbw_gbs": round(algbw, 3),
        "busbw_gbs": round(algbw * factor, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backend", choices=("nccl", "gloo"), required=True)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--latent-bytes", type=int, default=811_008)  # 16 ch x 3 frames x 48 x 88, fp32
    parser.add_argument("--sizes", default="1024,65536,1048576,16777216")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    progress = Progress(args.out, rank)
    progress.stage("init", world_size=world, backend=args.backend)
    device = torch.device(f"cuda:{local}") if args.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    dist.init_process_group(args.backend, timeout=timedelta(seconds=args.timeout))

    progress.stage("allreduce")
    total = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(total)
    expected = world * (world + 1) / 2
    if total.item() != expected:
        progress.stage("allreduce", ok=False, error=f"all_reduce gave {total.item()}, expected {expected}")
        raise SystemExit(3)

    progress.stage("ring")
    latent = torch.full((args.latent_bytes // 4,), float(rank), device=device)
    if rank + 1 < world:
        dist.send(latent, rank + 1)
    if rank > 0:
        got = torch.empty_like(latent)
        dist.recv(got, rank - 1)
        if not torch.all(got == rank - 1):
            progress.stage("ring", ok=False, error=f"rank {rank} received corrupted latents from rank {rank - 1}")
            raise SystemExit(3)
    dist.barrier()

    progress.stage("bandwidth")
    allreduce, sendrecv = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        buf = torch.ones(max(size // 4, 1), device=device)
        seconds = timed(lambda: dist.all_reduce(buf), args.iters, sync)
        allreduce.append(bandwidth_rows(buf.numel() * 4, seconds, 2 * (world - 1) / world))
        if world > 1:

            def hand_on():  # the TPP hand-off, all pairs at once: even ranks send first to avoid a cycle
                ops = []
                if rank + 1 < world:
                    ops.append(dist.P2POp(dist.isend, buf, rank + 1))
                if rank > 0:
                    ops.append(dist.P2POp(dist.irecv, buf, rank - 1))
                for req in dist.batch_isend_irecv(ops):
                    req.wait()

            seconds = timed(hand_on, args.iters, sync)
            sendrecv.append(bandwidth_rows(buf.numel() * 4, seconds, 1.0))
        dist.barrier()
    progress.stage("bandwidth", allreduce=allreduce, sendrecv=sendrecv)

    if device.type == "cuda" and local == 0:
        progress.stage("p2p", p2p_gbs=p2p_matrix())
    dist.barrier()
    dist.destroy_process_group()
    progress.stage("done")


def p2p_matrix(size: int = 256 * 2**20) -> list[list[float | None]]:
    """GB/s of a device-to-device copy between every pair of this node's GPUs."""
    n = torch.cuda.device_count()
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    for a in range(n):
        src = torch.ones(size // 4, device=f"cuda:{a}")
        for b in range(n):
            dst = torch.empty(size // 4, device=f"cuda:{b}")

            def sync_both() -> None:
                torch.cuda.synchronize(a)
                torch.cuda.synchronize(b)

            seconds = timed(lambda: dst.copy_(src), 3, sync_both)
            matrix[a][b] = round(size / seconds / 1e9, 2)
    return matrix


if __name__ == "__main__":
    main()
