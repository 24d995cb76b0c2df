"""Run the live communication test with torchrun and turn whatever happens into an answer.

torchrun is started as `python -m torch.distributed.run` (the same interpreter, the same launch path
and the same supervisor as a Live Avatar run: avatardoctor.jobs) with a deadline: a rank that never
joins, a held port, a crashed rank or a hang is classified within the timeout, never waited on. This
module does not import torch; the ranks do.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from avatardoctor.files import FileTooLarge, read_limited, read_tail
from avatardoctor.jobs import Job, torchrun_argv
from avatardoctor.units import MIB, plural

WORKER = ["-m", "avatardoctor.nccltest.worker"]
STAGES = ("start", "init", "allreduce", "ring", "bandwidth", "p2p", "done")
GRACE_S = 5.0
DEBUG_PATTERN = re.compile(
    r"NCCL (WARN|INFO (Bootstrap|NET/|Channel \d+/0|.*via (P2P|SHM|NET)))|[Gg]loo|Connection refused|Address already in use|timed out|Timeout"
)


@dataclass
class NcclTest:
    backend: str
    nproc: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    timeout_s: float = 60.0
    sizes: tuple[int, ...] = (1024, 65536, 1048576, 16777216)
    entry: list[str] = field(default_factory=lambda: list(WORKER))  # tests swap in a misbehaving worker
    budget_s: float = 30.0  # time allowed for the measurements after init
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class NcclOutcome:
    ok: bool
    failure: str | None  # "port-in-use", "rank-missing", "rank-crashed", "wrong-result", "timeout", "launch"
    summary: str
    remedy: str | None
    ranks: dict[int, dict]  # rank -> its last progress document
    allreduce: list[dict]  # nccl-tests rows from rank 0: bytes, time_us, algbw_gbs, busbw_gbs
    sendrecv: list[dict]
    p2p_gbs: list[list[float | None]] | None
    debug_lines: list[str]
    exit_code: int | None
    seconds: float

    @property
    def busbw_gbs(self) -> float | None:
        """all_reduce bus bandwidth at the largest size: the figure to compare nodes by."""
        return self.allreduce[-1]["busbw_gbs"] if self.allreduce else None


def command(test: NcclTest, out: Path) -> list[str]:
    return torchrun_argv(
        test.nproc,
        test.master_port,
        *test.entry,
        "--out",
        str(out),
        "--backend",
        test.backend,
        "--timeout",
        str(test.timeout_s),
        "--sizes",
        ",".join(map(str, test.sizes)),
        nnodes=test.nnodes,
        node_rank=test.node_rank,
        master_addr=test.master_addr,
    )


def _read_ranks(out: Path) -> dict[int, dict]:
    ranks = {}
    for path in out.glob("rank*.json"):
        try:
            doc = json.loads(read_limited(path, 4 * MIB))
            ranks[int(doc["rank"])] = doc
        except (ValueError, KeyError, OSError, FileTooLarge):
            continue
    return ranks


def run_test(test: NcclTest) -> NcclOutcome:
    env = {**os.environ, **test.env}
    if test.backend == "nccl":
        env.setdefault("NCCL_DEBUG", "INFO")  # the lines that explain a failure
    if test.master_addr in ("127.0.0.1", "localhost"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="avatardoctor-nccl-") as tmp:
        out, log = Path(tmp), Path(tmp) / "torchrun.log"
        try:
            with open(log, "w") as log_file:
                job = Job(command(test, out), env=env, stdout=log_file, grace_s=GRACE_S)
                try:
                    code = job.wait(test.timeout_s + test.budget_s)  # init's own timeout, plus the measurements
                finally:
                    job.close()
        except OSError as e:
            return NcclOutcome(
                False,
                "launch",
                f"torchrun could not start: {e}",
                "install torch (the [torch] extra)",
                {},
                [],
                [],
                None,
                [],
                None,
                0.0,
            )
        text = read_tail(log, 2 * MIB).decode(errors="replace")
        ranks = _read_ranks(out)
    return classify(test, code, text, ranks, time.monotonic() - started)


def classify(test: NcclTest, code: int | None, log: str, ranks: dict[int, dict], seconds: float) -> NcclOutcome:
    world = test.nproc * test.nnodes
    local = range(test.node_rank * test.nproc, (test.node_rank + 1) * test.nproc)
    debug = [line.strip() for line in log.splitlines() if DEBUG_PATTERN.search(line)][-20:]
    rank0 = ranks.get(0, {})
    measured = dict(
        ranks=ranks,
        allreduce=rank0.get("allreduce", []),
        sendrecv=rank0.get("sendrecv", []),
        p2p_gbs=rank0.get("p2p_gbs"),
        debug_lines=debug,
        exit_code=code,
        seconds=round(seconds, 1),
    )
    reached = {r: ranks.get(r, {}).get("stage", "start") for r in local}
    behind = sorted(r for r, s in reached.items() if s != "done")
    if code == 0 and not behind:
        return NcclOutcome(
            True,
            None,
            f"{plural(world, 'rank')} talked ({test.backend}): all_reduce correct, the rank-to-rank ring intact",
            None,
            **measured,
        )
    if "Address already in use" in log or "EADDRINUSE" in log:
        return NcclOutcome(
            False,
            "port-in-use",
            f"master port {test.master_port} is held: torchrun's store could not listen",
            "--master-port with a free port (net.master_port suggests one)",
            **measured,
        )
    wrong = [d["error"] for d in ranks.values() if not d.get("ok", True) and d.get("error")]
    if wrong:
        return NcclOutcome(
            False,
            "wrong-result",
            wrong[0],
            "a broken transport: try NCCL_P2P_DISABLE=1, then check the PCIe ACS/IOMMU settings",
            **measured,
        )
    crashed = [r for r in behind if code not in (None, 0)]
    if code is None:
        stuck = ", ".join(f"rank {r} at {reached[r]}" for r in behind)
        missing = world > test.nproc or any(reached[r] in ("start", "init") for r in behind)
        what = "rank-missing" if missing else "timeout"
        summary = f"no answer within {test.timeout_s:.0f} s: {stuck}" + (
            " (a rank or node never joined)" if missing else ""
        )
        remedy = (
            "start every node, and check that --master-addr reaches node 0 on --master-port (firewall?)"
            if missing
            else "run with NCCL_DEBUG=INFO; on PCIe servers a hang at the first send/recv is often ACS/IOMMU: try NCCL_P2P_DISABLE=1"
        )
        return NcclOutcome(False, what, summary, remedy, **measured)
    first = crashed[0] if crashed else None
    summary = (
        f"rank {first} exited (code {code}) at {reached.get(first, '?')}"
        if first is not None
        else f"torchrun exited with code {code}"
    )
    return NcclOutcome(
        False,
        "rank-crashed",
        summary,
        "see the lines below; run `avatardoctor nccl` with NCCL_DEBUG=INFO for more",
        **measured,
    )
