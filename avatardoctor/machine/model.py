"""The facts about a machine that the checks read: GPUs, their links, the driver, the host.

One snapshot type for every source (live NVML, a recorded JSON file, the catalogue), and one JSON
form (`avatardoctor.machine/1`) that `machine record` writes and `--machine FILE` replays.
Sizes are bytes, as NVML gives them; text conversion happens only when rendering.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, overload

from avatardoctor import __version__

SCHEMA = "avatardoctor.machine/1"

# nvidia-smi topo -m legend, nearest first. NVML's nvmlDeviceGetTopologyCommonAncestor levels map
# onto these (INTERNAL->X, SINGLE->PIX, MULTIPLE->PXB, HOSTBRIDGE->PHB, NODE->NODE, SYSTEM->SYS).
TOPOLOGY_LEVELS = ("X", "PIX", "PXB", "PHB", "NODE", "SYS")

# nvmlDeviceGetP2PStatus results, by name.
P2P_STATUSES = (
    "ok",
    "chipset_not_supported",
    "gpu_not_supported",
    "topology_not_supported",
    "disabled_by_regkey",
    "not_supported",
    "unknown",
)


class MachineFormatError(ValueError):
    """A machine description that does not follow the schema; the message names the field."""


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    kind: str  # "compute" or "graphics"
    used_bytes: int | None  # None where NVML cannot tell (e.g. Windows WDDM, some containers)
    name: str | None = None  # None where the PID is not visible from here (host PID in a container)


@dataclass(frozen=True)
class Pcie:
    gen_current: int | None = None
    gen_max: int | None = None
    width_current: int | None = None
    width_max: int | None = None


@dataclass(frozen=True)
class Health:
    """What DCGM's health watches flag, as NVML gives it; None where this GPU or driver cannot say (GeForce has
    no ECC; page retirement is pre-Ampere, row remapping Ampere and later)."""

    ecc_volatile_uncorrected: int | None = None  # since the driver last loaded
    ecc_aggregate_uncorrected: int | None = None  # over the GPU's life
    retired_pages_pending: bool | None = None  # a retirement that waits for a GPU reset
    remapped_rows_pending: bool | None = None  # a row remapping that waits for a GPU reset
    remapped_rows_failed: bool | None = None  # a remapping that could not be made: the card needs service
    throttle: tuple[str, ...] | None = None  # slowdowns active now (THROTTLE_REASONS' names)
    xid_events: bool | None = None  # NVML can report this GPU's Xids as events (nvmlEventTypeXidCriticalError)


# The clock slowdowns that say something is wrong (idle, application clocks and sync boost do not).
THROTTLE_REASONS = ("power cap", "HW slowdown", "SW thermal", "HW thermal", "HW power brake")

# NVIDIA's Xid catalogue (https://docs.nvidia.com/deploy/xid-errors/index.html): what the driver's Xid codes mean.
# XID_APPLICATION: raised by a program's own fault (a bad kernel, a killed context); the GPU is fine.
XID_APPLICATION = {
    13: "graphics engine exception (a program's kernel faulted)",
    31: "GPU memory page fault (a program's illegal address)",
    43: "GPU stopped processing a channel (the program was stopped)",
    45: "preemptive cleanup after a program ended",
}
# XID_HARDWARE: the GPU, its memory or its link failed; each with what to do, as the catalogue's resolution says.
XID_HARDWARE = {
    48: "a double-bit ECC error: reset the GPU (`nvidia-smi -r -i N`); if it returns, the card needs service",
    61: "an internal micro-controller breakpoint: reset the GPU (`nvidia-smi -r -i N`) or reboot",
    62: "an internal micro-controller halt: reset the GPU (`nvidia-smi -r -i N`) or reboot",
    63: "a page retirement or row remapping is pending: reset the GPU to apply it (`nvidia-smi -r -i N`)",
    64: "a page retirement or row remapping failed: the card needs service",
    74: "an NVLink error: check the links (`nvidia-smi nvlink -e`), reset the GPUs; if it returns, service",
    79: "the GPU fell off the bus: check its power, cooling and seating; the host needs a reboot",
    92: "a high single-bit ECC error rate: the card needs service",
    94: "a contained ECC error: the process was ended; reset the GPU when idle",
    95: "an uncontained ECC error: reset the GPU (`nvidia-smi -r -i N`) before the next run",
    119: "the GPU's system processor (GSP) timed out: reset the GPU or reboot",
    120: "the GPU's system processor (GSP) failed: reset the GPU or reboot",
}


def xid_meaning(xid: int) -> str:
    """What one Xid code says, in words (the catalogue's meaning; codes outside both tables are looked up there)."""
    known = XID_HARDWARE.get(xid) or XID_APPLICATION.get(xid)
    return f"Xid {xid}: {known}" if known else f"Xid {xid} (see https://docs.nvidia.com/deploy/xid-errors/)"


@dataclass(frozen=True)
class XidEvent:
    """One Xid the kernel log recorded."""

    xid: int
    pci_bus_id: str  # as the driver wrote it ("0000:18:00")
    gpu: int | None  # the NVML index with that bus id; None where no GPU of this snapshot has it
    since_boot_s: float | None  # the kernel's timestamp; None where the line carries none
    message: str  # the rest of the line, cut to MAX_XID_MESSAGE characters


MAX_XID_MESSAGE = 200


@dataclass(frozen=True)
class KernelXids:
    """The Xids since boot, from the kernel log; `unreadable` says why there are none to read (dmesg refused)."""

    source: str  # where they were read: /dev/kmsg, dmesg, or the file AVATARDOCTOR_KERNEL_LOG names
    events: tuple[XidEvent, ...] = ()
    unreadable: str | None = None


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML index (PCI bus order), not a CUDA ordinal
    name: str
    uuid: str
    pci_bus_id: str
    compute_capability: tuple[int, int]
    total_bytes: int
    used_bytes: int
    free_bytes: int
    reserved_bytes: int | None = None  # driver-reserved; known only with NVML memory info v2
    persistence_mode: bool | None = None
    pcie: Pcie = field(default_factory=Pcie)
    processes: tuple[GpuProcess, ...] = ()
    nvlink_remote_bus_ids: tuple[str, ...] = ()  # one entry per active NVLink
    health: Health = field(default_factory=Health)

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


@dataclass(frozen=True)
class GpuPair:
    a: int
    b: int
    level: str | None  # one of TOPOLOGY_LEVELS (never "X": a pair is two GPUs); None where NVML cannot tell
    p2p_read: str  # one of P2P_STATUSES
    p2p_write: str
    nvlinks: int = 0


def p2p_ok(pair: GpuPair | None) -> bool:
    """Peer-to-peer reads and writes both work between the pair (None: no facts, so no)."""
    return pair is not None and pair.p2p_read == "ok" and pair.p2p_write == "ok"


@dataclass(frozen=True)
class Host:
    cpu_count: int | None = None
    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    swap_total_bytes: int | None = None
    shm_total_bytes: int | None = None
    shm_free_bytes: int | None = None


@dataclass(frozen=True)
class Machine:
    source: str  # "nvml", "recorded:<file>" or "catalogue:<spec>"
    gpus: tuple[Gpu, ...] = ()
    pairs: tuple[GpuPair, ...] = ()
    host: Host = field(default_factory=Host)  # all None for catalogue boxes: no host to describe
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # the CUDA version the driver supports, e.g. "12.4"
    nvml_version: str | None = None
    memory_info_version: int | None = None  # 2 where reserved memory is reported apart, else 1
    hostname: str | None = None
    recorded_at: str | None = None
    nvml_error: str | None = None  # why there are no GPU facts (no driver, no device, ...)
    kernel_xids: KernelXids | None = None  # None: the kernel log was not looked at (catalogue, older recordings)

    def pair(self, a: int, b: int) -> GpuPair | None:
        lo, hi = min(a, b), max(a, b)
        for p in self.pairs:
            if (p.a, p.b) == (lo, hi):
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for g in d["gpus"]:
            g["compute_capability"] = list(g["compute_capability"])
            g["processes"] = list(g["processes"])
            g["nvlink_remote_bus_ids"] = list(g["nvlink_remote_bus_ids"])
        d["gpus"] = list(d["gpus"])
        d["pairs"] = list(d["pairs"])
        if d["kernel_xids"] is not None:
            d["kernel_xids"]["events"] = list(d["kernel_xids"]["events"])
        return {"schema": SCHEMA, "avatardoctor_version": __version__, **d}


# ---- reading the JSON form, with every field checked ------------------------------------------


class _Fields:
    """Typed access to one JSON object; errors name the field's path ("gpus[2].total_bytes")."""

    def __init__(self, obj: Any, where: str):
        if not isinstance(obj, dict):
            raise MachineFormatError(f"{where or 'top level'} must be an object")
        self.obj, self.where = obj, where

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self.obj or self.obj[key] is None:
            if optional:
                return None
            raise MachineFormatError(f"{self._path(key)} is missing")
        return self.obj[key]

    # The methods below are named after the JSON types they read, so within this class `int`, `str` and
    # `bool` name them: the builtins are spelled builtins.int and so on. optional=True admits a missing
    # or null field (None); without it the field is required, so the value is never None.
    @overload
    def int(self, key: builtins.str, optional: Literal[False] = False, minimum: builtins.int = 0) -> builtins.int: ...
    @overload
    def int(self, key: builtins.str, optional: Literal[True], minimum: builtins.int = 0) -> builtins.int | None: ...
    def int(self, key: builtins.str, optional: builtins.bool = False, minimum: builtins.int = 0) -> builtins.int | None:
        v = self._get(key, optional)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise MachineFormatError(f"{self._path(key)} must be an integer >= {minimum}, not {v!r:.40}")
        return v

    @overload
    def str(
        self, key: builtins.str, optional: Literal[False] = False, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str: ...
    @overload
    def str(
        self, key: builtins.str, optional: Literal[True], choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str | None: ...
    def str(
        self, key: builtins.str, optional: builtins.bool = False, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str | None:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, str) or len(v) > 4096:
            raise MachineFormatError(f"{self._path(key)} must be a string")
        if choices and v not in choices:
            raise MachineFormatError(f"{self._path(key)} must be one of {', '.join(choices)}, not {v!r:.40}")
        return v

    @overload
    def bool(self, key: builtins.str, optional: Literal[False] = False) -> builtins.bool: ...
    @overload
    def bool(self, key: builtins.str, optional: Literal[True]) -> builtins.bool | None: ...
    def bool(self, key: builtins.str, optional: builtins.bool = False) -> builtins.bool | None:
        v = self._get(key, optional)
        if v is None:
            return None
        if not isinstance(v, bool):
            raise MachineFormatError(f"{self._path(key)} must be true or false")
        return v

    def list(self, key: builtins.str) -> list[Any]:
        v = self._get(key, optional=True)
        if v is None:
            return []
        if not isinstance(v, list):
            raise MachineFormatError(f"{self._path(key)} must be a list")
        return v

    def object(self, key: builtins.str) -> _Fields:
        v = self._get(key, optional=True)
        return _Fields({} if v is None else v, self._path(key))


def _gpu_from(obj: Any, where: str) -> Gpu:
    f = _Fields(obj, where)
    index, name, uuid, bus_id = f.int("index"), f.str("name"), f.str("uuid"), f.str("pci_bus_id")
    cc = f.list("compute_capability")
    if len(cc) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 100 for x in cc):
        raise MachineFormatError(f"{where}.compute_capability must be [major, minor]")
    processes = []
    for i, p in enumerate(f.list("processes")):
        pf = _Fields(p, f"{where}.processes[{i}]")
        processes.append(
            GpuProcess(
                pid=pf.int("pid"),
                kind=pf.str("kind", choices=("compute", "graphics")),
                used_bytes=pf.int("used_bytes", optional=True),
                name=pf.str("name", optional=True),
            )
        )
    remotes = f.list("nvlink_remote_bus_ids")
    if not all(isinstance(r, str) for r in remotes):
        raise MachineFormatError(f"{where}.nvlink_remote_bus_ids must be a list of PCI bus ids")
    pcie = f.object("pcie")
    health = f.object("health")
    throttle = health.list("throttle") if health.obj.get("throttle") is not None else None
    if throttle is not None and not all(t in THROTTLE_REASONS for t in throttle):
        raise MachineFormatError(f"{where}.health.throttle must list some of: {', '.join(THROTTLE_REASONS)}")
    gpu = Gpu(
        index=index,
        name=name,
        uuid=uuid,
        pci_bus_id=bus_id,
        compute_capability=(cc[0], cc[1]),
        total_bytes=f.int("total_bytes", minimum=1),
        used_bytes=f.int("used_bytes"),
        free_bytes=f.int("free_bytes"),
        reserved_bytes=f.int("reserved_bytes", optional=True),
        persistence_mode=f.bool("persistence_mode", optional=True),
        pcie=Pcie(
            gen_current=pcie.int("gen_current", optional=True),
            gen_max=pcie.int("gen_max", optional=True),
            width_current=pcie.int("width_current", optional=True),
            width_max=pcie.int("width_max", optional=True),
        ),
        processes=tuple(processes),
        nvlink_remote_bus_ids=tuple(remotes),
        health=Health(
            ecc_volatile_uncorrected=health.int("ecc_volatile_uncorrected", optional=True),
            ecc_aggregate_uncorrected=health.int("ecc_aggregate_uncorrected", optional=True),
            retired_pages_pending=health.bool("retired_pages_pending", optional=True),
            remapped_rows_pending=health.bool("remapped_rows_pending", optional=True),
            remapped_rows_failed=health.bool("remapped_rows_failed", optional=True),
            throttle=None if throttle is None else tuple(throttle),
            xid_events=health.bool("xid_events", optional=True),
        ),
    )
    if gpu.free_bytes > gpu.total_bytes or gpu.used_bytes > gpu.total_bytes:
        raise MachineFormatError(f"{where}: used and free memory cannot exceed total_bytes")
    return gpu


def _kernel_xids_from(top: _Fields, indices: set[int]) -> KernelXids | None:
    if top.obj.get("kernel_xids") is None:
        return None
    k = top.object("kernel_xids")
    events = []
    for i, e in enumerate(k.list("events")):
        ef = _Fields(e, f"kernel_xids.events[{i}]")
        gpu = ef.int("gpu", optional=True)
        if gpu is not None and gpu not in indices:
            raise MachineFormatError(f"kernel_xids.events[{i}].gpu must be a GPU index of this machine")
        at = ef.obj.get("since_boot_s")
        if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at < 1e10):
            raise MachineFormatError(f"kernel_xids.events[{i}].since_boot_s must be seconds since boot")
        events.append(
            XidEvent(
                ef.int("xid"),
                ef.str("pci_bus_id"),
                gpu,
                None if at is None else float(at),
                ef.str("message", optional=True) or "",
            )
        )
    return KernelXids(k.str("source"), tuple(events), k.str("unreadable", optional=True))


def machine_from_dict(obj: Any, source: str) -> Machine:
    """Build a Machine from its JSON form; raises MachineFormatError naming the first bad field."""
    top = _Fields(obj, "")
    schema = top.str("schema")
    if schema != SCHEMA:
        raise MachineFormatError(f"schema is {schema!r:.60}, expected {SCHEMA!r}")
    gpus = tuple(_gpu_from(g, f"gpus[{i}]") for i, g in enumerate(top.list("gpus")))
    if len({g.index for g in gpus}) != len(gpus):
        raise MachineFormatError("gpus: two GPUs share one index")
    indices = {g.index for g in gpus}
    pairs = []
    for i, p in enumerate(top.list("pairs")):
        pf = _Fields(p, f"pairs[{i}]")
        a, b = pf.int("a"), pf.int("b")
        if a == b or a not in indices or b not in indices:
            raise MachineFormatError(f"pairs[{i}] must name two different GPU indices of this machine")
        pairs.append(
            GpuPair(
                a=min(a, b),
                b=max(a, b),
                level=pf.str("level", optional=True, choices=TOPOLOGY_LEVELS[1:]),
                p2p_read=pf.str("p2p_read", choices=P2P_STATUSES),
                p2p_write=pf.str("p2p_write", choices=P2P_STATUSES),
                nvlinks=pf.int("nvlinks", optional=True) or 0,
            )
        )
    h = top.object("host")
    return Machine(
        kernel_xids=_kernel_xids_from(top, indices),
        source=source,
        gpus=gpus,
        pairs=tuple(pairs),
        host=Host(
            cpu_count=h.int("cpu_count", optional=True),
            ram_total_bytes=h.int("ram_total_bytes", optional=True),
            ram_available_bytes=h.int("ram_available_bytes", optional=True),
            swap_total_bytes=h.int("swap_total_bytes", optional=True),
            shm_total_bytes=h.int("shm_total_bytes", optional=True),
            shm_free_bytes=h.int("shm_free_bytes", optional=True),
        ),
        driver_version=top.str("driver_version", optional=True),
        cuda_driver_version=top.str("cuda_driver_version", optional=True),
        nvml_version=top.str("nvml_version", optional=True),
        memory_info_version=top.int("memory_info_version", optional=True),
        hostname=top.str("hostname", optional=True),
        recorded_at=top.str("recorded_at", optional=True),
        nvml_error=top.str("nvml_error", optional=True),
    )
