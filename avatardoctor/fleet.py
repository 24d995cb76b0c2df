"""The fleet view: `check --json` reports from many nodes merged into one table, with the outliers named.

read_nodes (bounded reading) -> merge_fleet (pure: rows and outlier rules) -> fleet_document / render_fleet.
A file that cannot be read becomes an "unreadable" row, so one truncated report never hides the rest.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from avatardoctor import __version__, exitcodes
from avatardoctor.files import UnreadableJson, read_json
from avatardoctor.machine.model import MachineFormatError, machine_from_dict
from avatardoctor.units import GIB, MIB, gib

SCHEMA = "avatardoctor.fleet/1"
CHECK_SCHEMA = "avatardoctor.check/1"
MAX_FILE_BYTES = 16 * MIB  # a report is ~30 KiB; the limit stops a wrong file (a log, a tarball) being read whole
LOW_VRAM_SHARE = 0.9  # a node's least free GPU under 90% of the fleet median: something holds memory there
SLOW_BUSBW_SHARE = 0.5  # all_reduce busbw under half the fleet median: a degraded link or a bad NCCL setting
MIN_NODES_FOR_MEDIAN = 3  # with fewer figures the median cannot tell the odd node from the usual one


class UnreadableReport(ValueError):
    """Why a file is not a `check --json` report; str() is the reason shown in its row."""


@dataclass(frozen=True)
class ForeignProcess:
    gpu: int
    pid: int
    name: str | None
    used_bytes: int | None

    def describe(self) -> str:
        held = gib(self.used_bytes) if self.used_bytes is not None else "memory unknown"
        return f"GPU {self.gpu} PID {self.pid} ({self.name or 'name not visible'}, {held})"


@dataclass(frozen=True)
class Node:
    file: str
    hostname: str  # machine.hostname, or the file's stem when the report has none
    verdict: str  # "ready", "not-ready" or "unreadable"
    error: str | None = None  # why the file is unreadable
    gpus: int = 0
    gpu_models: dict[str, int] = field(default_factory=dict)  # NVML name -> count
    free_bytes_min: int | None = None
    free_bytes_total: int | None = None
    failing: tuple[str, ...] = ()  # ids of the checks that failed
    driver_version: str | None = None
    busbw_gbs: float | None = None  # nccl.live all_reduce busbw at the largest size
    processes: tuple[ForeignProcess, ...] = ()  # every process on any GPU: before a job, all are foreign


@dataclass(frozen=True)
class Outlier:
    node: str
    kind: str  # unreadable, not-ready, duplicate, foreign-process, driver, gpu-model, low-vram, slow-busbw
    message: str


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[Node, ...]
    outliers: tuple[Outlier, ...]

    @property
    def ready(self) -> bool:
        return bool(self.nodes) and all(n.verdict == "ready" for n in self.nodes)

    @property
    def exit_code(self) -> int:
        if any(n.verdict == "unreadable" for n in self.nodes):
            return exitcodes.USAGE
        return exitcodes.READY if self.ready else exitcodes.NOT_READY


def read_report(path: Path) -> Any:
    """The parsed JSON of one file, read with a size bound; raises UnreadableReport."""
    try:
        return read_json(path, MAX_FILE_BYTES, "a `check --json` report")
    except UnreadableJson as err:
        raise UnreadableReport(str(err)) from None


def _busbw(live: dict | None) -> float | None:
    data = live.get("data") if live else None
    value = data.get("busbw_gbs") if isinstance(data, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)  # measured
    return None


def node_from_report(doc: Any, file: str) -> Node:
    """One row from a parsed `avatardoctor.check/1` document (full, or without machine.pairs)."""
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != CHECK_SCHEMA:
        raise UnreadableReport(
            f"schema is {schema!r:.60}, expected {CHECK_SCHEMA!r} (write it with `avatardoctor check --json`)"
        )
    if doc.get("verdict") not in ("ready", "not-ready"):
        raise UnreadableReport(f"verdict must be ready or not-ready, not {doc.get('verdict')!r:.40}")
    checks = doc.get("checks")
    if not isinstance(checks, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in checks):
        raise UnreadableReport("checks must be a list of objects with an id")
    if not isinstance(doc.get("machine"), dict):
        raise UnreadableReport("machine must be an object")
    try:
        machine = machine_from_dict(doc["machine"], source=f"recorded:{file}")
    except MachineFormatError as err:
        raise UnreadableReport(f"machine.{err}") from None
    free = [g.free_bytes for g in machine.gpus]
    return Node(
        file=file,
        hostname=machine.hostname or Path(file).stem,
        verdict=doc["verdict"],
        gpus=len(machine.gpus),
        gpu_models=dict(Counter(g.name for g in machine.gpus)),
        free_bytes_min=min(free, default=None),
        free_bytes_total=sum(free) if free else None,
        failing=tuple(c["id"] for c in checks if c.get("status") == "fail"),
        driver_version=machine.driver_version,
        busbw_gbs=_busbw(next((c for c in checks if c["id"] == "nccl.live"), None)),
        processes=tuple(
            ForeignProcess(g.index, p.pid, p.name, p.used_bytes) for g in machine.gpus for p in g.processes
        ),
    )


def read_nodes(paths: Sequence[Path]) -> list[Node]:
    """One row per file, in the order given; a bad file is an unreadable row naming the reason."""
    nodes = []
    for path in paths:
        try:
            nodes.append(node_from_report(read_report(path), str(path)))
        except UnreadableReport as err:
            nodes.append(Node(file=str(path), hostname=path.stem, verdict="unreadable", error=str(err)))
    return nodes


def _odd_values(nodes: list[Node], kind: str, what: str, value_of: Callable[[Node], str | None]) -> list[Outlier]:
    """Nodes whose value differs from the fleet's most common one; with no majority, every node."""
    valued = [(n, v) for n in nodes if (v := value_of(n))]
    counts = Counter(v for _, v in valued)
    if len(counts) < 2:
        return []
    (usual, count), (_, runner_up) = counts.most_common(2)
    if runner_up == count:  # a tie: no value is the odd one, so name them all
        spread = ", ".join(f"{v} on {c}" for v, c in counts.most_common())
        return [Outlier(n.hostname, kind, f"{what} {v}, and no majority in the fleet ({spread})") for n, v in valued]
    return [
        Outlier(n.hostname, kind, f"{what} {v}, where {count} of {len(valued)} nodes have {usual}")
        for n, v in valued
        if v != usual
    ]


def _below_median(
    nodes: list[Node],
    kind: str,
    what: str,
    share: float,
    value_of: Callable[[Node], float | None],
    show: Callable[[float], str],
) -> list[Outlier]:
    valued = [(n, v) for n in nodes if (v := value_of(n)) is not None]
    if len(valued) < MIN_NODES_FOR_MEDIAN:
        return []
    median = statistics.median(v for _, v in valued)
    return [
        Outlier(n.hostname, kind, f"{what} {show(v)}, under {share:.0%} of the fleet median {show(median)}")
        for n, v in valued
        if v < share * median
    ]


def _per_node(nodes: list[Node]) -> list[Outlier]:
    """What each report says about its own node: unreadable, not ready, processes on its GPUs."""
    found = []
    for n in nodes:
        if n.verdict == "unreadable":
            found.append(Outlier(n.hostname, "unreadable", f"{n.file}: {n.error}"))
        elif n.verdict == "not-ready":
            found.append(
                Outlier(
                    n.hostname, "not-ready", "not ready" + (f": failed {', '.join(n.failing)}" if n.failing else "")
                )
            )
        if n.processes:
            found.append(
                Outlier(
                    n.hostname,
                    "foreign-process",
                    "other processes hold GPU memory: " + "; ".join(p.describe() for p in n.processes),
                )
            )
    return found


def _duplicates(nodes: list[Node]) -> list[Outlier]:
    files: dict[str, list[str]] = {}
    for n in nodes:
        files.setdefault(n.hostname, []).append(n.file)
    return [
        Outlier(host, "duplicate", f"{len(fs)} reports from one host ({', '.join(fs)}): a rerun, or a copied file?")
        for host, fs in files.items()
        if len(fs) > 1
    ]


def merge_fleet(nodes: Sequence[Node]) -> Fleet:
    """Rows sorted by hostname (both rows of a duplicate kept), and the outliers in row order."""
    rows = sorted(nodes, key=lambda n: (n.hostname, n.file))
    readable = [n for n in rows if n.verdict != "unreadable"]
    outliers = _per_node(rows) + _duplicates(rows)
    outliers += _odd_values(readable, "driver", "driver", lambda n: n.driver_version)
    outliers += _odd_values(readable, "gpu-model", "GPUs", lambda n: " + ".join(sorted(n.gpu_models)))
    outliers += _below_median(readable, "low-vram", "least free GPU", LOW_VRAM_SHARE, lambda n: n.free_bytes_min, gib)
    outliers += _below_median(
        readable, "slow-busbw", "all_reduce busbw", SLOW_BUSBW_SHARE, lambda n: n.busbw_gbs, lambda x: f"{x:.1f} GB/s"
    )
    position = {n.hostname: i for i, n in enumerate(rows)}
    return Fleet(tuple(rows), tuple(sorted(outliers, key=lambda o: position[o.node])))


def fleet_document(fleet: Fleet) -> dict[str, Any]:
    """The `avatardoctor.fleet/1` JSON: sizes in bytes, busbw in GB/s (1e9 bytes/s, as nccl-tests)."""
    return {
        "schema": SCHEMA,
        "avatardoctor_version": __version__,
        "verdict": "ready" if fleet.ready else "not-ready",
        "nodes": [asdict(n) for n in fleet.nodes],
        "outliers": [asdict(o) for o in fleet.outliers],
    }


VERDICT_STYLES = {"ready": "green", "not-ready": "red", "unreadable": "red"}


def render_fleet(fleet: Fleet, console: Console) -> None:
    """The per-node table, the outliers one per line, and the fleet's verdict."""
    table = Table(
        title=f"Fleet: {len(fleet.nodes)} report{'s' if len(fleet.nodes) != 1 else ''}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # Names and figures never wrap (a cut driver version would hide the odd one); models and reasons fold.
    table.add_column("node", no_wrap=True)
    table.add_column("GPUs", overflow="fold")
    table.add_column("free GiB\nleast / total", justify="right", no_wrap=True)
    table.add_column("driver", no_wrap=True)
    table.add_column("busbw\nGB/s", justify="right", no_wrap=True)
    table.add_column("verdict", overflow="fold", min_width=12)
    for n in fleet.nodes:
        models = ", ".join(f"{count} x {name.removeprefix('NVIDIA ')}" for name, count in n.gpu_models.items()) or "-"
        free = (
            f"{n.free_bytes_min / GIB:.2f} / {n.free_bytes_total / GIB:.2f}"
            if n.free_bytes_min is not None and n.free_bytes_total is not None  # both or neither (node_from_report)
            else "-"
        )
        busbw = f"{n.busbw_gbs:.1f}" if n.busbw_gbs is not None else "-"
        why = n.error or ", ".join(n.failing)
        verdict = Text(n.verdict + (f": {why}" if why else ""), style=VERDICT_STYLES[n.verdict])
        table.add_row(n.hostname, models, free, n.driver_version or "-", busbw, verdict)
    console.print(table)
    if fleet.outliers:
        console.print(Text(f"Outliers ({len(fleet.outliers)}):", style="bold"))
        for o in fleet.outliers:
            style = "red" if o.kind in ("unreadable", "not-ready") else "yellow"
            console.print(Text(f"  [!] {o.node}: {o.message}", style=style), soft_wrap=True)
    not_ready = [n.hostname for n in fleet.nodes if n.verdict != "ready"]
    if not_ready:
        console.print(
            Text(
                f"Fleet not ready: {len(not_ready)} of {len(fleet.nodes)} nodes ({', '.join(not_ready)}).",
                style="bold red",
            ),
            soft_wrap=True,
        )
    else:
        console.print(
            Text(
                f"Fleet ready: all {len(fleet.nodes)} nodes ready{', with outliers' if fleet.outliers else ''}.",
                style="bold green",
            ),
            soft_wrap=True,
        )
