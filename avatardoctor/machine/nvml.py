"""The live backend and the sampler's reader: every NVML call avatardoctor makes. The only module that
imports pynvml.

A failing NVML call leaves that one field unknown (None) instead of failing the snapshot, as nvitop
does; NVML missing altogether (no driver, no device node, a container started without GPUs), a GPU
whose name, identity or memory NVML refuses, or a GPU in MIG mode gives a Machine with `nvml_error`
set, which the gpu.driver check reports.

Drivers differ in which C functions they have: memory info v2 and the _v3 process lists arrived in
R510. The binding's unversioned names call the newest function and, on an older driver, raise
NVMLLibraryMismatchError, which is not an NVMLError; so the versioned names are called, newest first.
tests/fake_pynvml plays each driver generation under the real binding.
"""

from __future__ import annotations

import ctypes
import socket
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import psutil
import pynvml

from avatardoctor.machine.host import local_host
from avatardoctor.machine.kernellog import bus_key, read_kernel_xids
from avatardoctor.machine.model import Gpu, GpuPair, GpuProcess, Health, Machine, Pcie

_LEVELS = {
    pynvml.NVML_TOPOLOGY_INTERNAL: "X",
    pynvml.NVML_TOPOLOGY_SINGLE: "PIX",
    pynvml.NVML_TOPOLOGY_MULTIPLE: "PXB",
    pynvml.NVML_TOPOLOGY_HOSTBRIDGE: "PHB",
    pynvml.NVML_TOPOLOGY_NODE: "NODE",
    pynvml.NVML_TOPOLOGY_SYSTEM: "SYS",
}
_P2P = {
    pynvml.NVML_P2P_STATUS_OK: "ok",
    pynvml.NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED: "chipset_not_supported",
    pynvml.NVML_P2P_STATUS_GPU_NOT_SUPPORTED: "gpu_not_supported",
    pynvml.NVML_P2P_STATUS_IOH_TOPOLOGY_NOT_SUPPORTED: "topology_not_supported",
    pynvml.NVML_P2P_STATUS_DISABLED_BY_REGKEY: "disabled_by_regkey",
    pynvml.NVML_P2P_STATUS_NOT_SUPPORTED: "not_supported",
    pynvml.NVML_P2P_STATUS_UNKNOWN: "unknown",
}
_NVLINK_SWITCH = 2  # nvmlNvLinkDeviceType: 0 GPU, 1 IBM NPU, 2 NVSwitch
# nvidia-ml-py defines NVML_P2P_CAPS_INDEX_READ as the tuple (0,) (a stray comma); ctypes would
# reject it, so the capability indices are spelled out.
_P2P_READ, _P2P_WRITE, _P2P_NVLINK = 0, 1, 2
_PROCESS_LISTS = (  # newest first; a process with both contexts ("C+G") is in both lists
    ("compute", ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2")),
    ("graphics", ("nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2")),
)


class NvmlUnavailable(RuntimeError):
    """NVML cannot start or sees no GPU."""


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _try(fn, *args):
    """One NVML field: its value, or None where this driver or device cannot give it."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _newest(names: tuple[str, ...], *args):
    """The answer of the newest of these versioned calls that this driver has; None if it refuses."""
    for name in names:
        try:
            return getattr(pynvml, name)(*args)
        except pynvml.NVMLError_FunctionNotFound:  # a driver older than this version of the call
            continue
        except pynvml.NVMLError:
            return None
    return None


def _memory(handle, v2: bool = True):
    """(memory info, 2 or 1): v2 where the driver has it (R510+), else v1, which counts driver-reserved
    memory as used; (None, 1) where NVML refuses both (a MIG-mode GPU without the privileges)."""
    if v2:
        memory = _try(pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2)
        if memory is not None:
            return memory, 2
    return _try(pynvml.nvmlDeviceGetMemoryInfo, handle), 1


def _processes(handle) -> dict[int, tuple[str, int | None]]:
    """{pid: (kind, used bytes or None)}: a process with both contexts is counted once, as compute.
    The binding gives None for NVML_VALUE_NOT_AVAILABLE (MIG, some containers)."""
    found: dict[int, tuple[str, int | None]] = {}
    for kind, names in _PROCESS_LISTS:
        for p in _newest(names, handle) or []:
            found.setdefault(int(p.pid), (kind, p.usedGpuMemory))
    return found


_THROTTLE_BITS = (  # nvmlClocksThrottleReason*: the slowdowns that say something is wrong (model.THROTTLE_REASONS)
    (pynvml.nvmlClocksThrottleReasonSwPowerCap, "power cap"),
    (pynvml.nvmlClocksThrottleReasonHwSlowdown, "HW slowdown"),
    (pynvml.nvmlClocksThrottleReasonSwThermalSlowdown, "SW thermal"),
    (pynvml.nvmlClocksThrottleReasonHwThermalSlowdown, "HW thermal"),
    (pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown, "HW power brake"),
)


def _health(handle) -> Health:
    """ECC, retired pages, remapped rows and throttling, each field None where the GPU or driver cannot say."""
    ecc = [
        _try(pynvml.nvmlDeviceGetTotalEccErrors, handle, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter)
        for counter in (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC)
    ]
    pending = _try(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    remapped = _try(pynvml.nvmlDeviceGetRemappedRows, handle)  # (corrected, uncorrected, pending, failed)
    reasons = _throttle(handle)
    events = _try(pynvml.nvmlDeviceGetSupportedEventTypes, handle)
    return Health(
        ecc_volatile_uncorrected=None if ecc[0] is None else int(ecc[0]),
        ecc_aggregate_uncorrected=None if ecc[1] is None else int(ecc[1]),
        retired_pages_pending=None if pending is None else bool(pending),
        remapped_rows_pending=None if remapped is None else bool(remapped[2]),
        remapped_rows_failed=None if remapped is None else bool(remapped[3]),
        throttle=reasons,
        xid_events=None if events is None else bool(events & pynvml.nvmlEventTypeXidCriticalError),
    )


def _throttle(handle) -> tuple[str, ...] | None:
    reasons = _newest(("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), handle)
    return None if reasons is None else tuple(name for bit, name in _THROTTLE_BITS if int(reasons) & bit)


def _repair_pending(handle) -> bool | None:
    """A retired page or remapped row waiting for a reset (whichever this GPU's generation has)."""
    remapped = _try(pynvml.nvmlDeviceGetRemappedRows, handle)
    if remapped is not None:
        return bool(remapped[2])
    pending = _try(pynvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    return None if pending is None else bool(pending)


def _mig_enabled(handle) -> bool:
    mode = _try(pynvml.nvmlDeviceGetMigMode, handle)  # NotSupported before Ampere and on GeForce
    return bool(mode) and mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE


def describe_nvml_error(err: Exception) -> str:
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is visible in this environment"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return "the NVIDIA kernel driver is not loaded"
    if isinstance(err, pynvml.NVMLError_NoPermission):
        return "no permission to open the NVIDIA device nodes (/dev/nvidia*)"
    return f"NVML failed to start: {err}"


class _Unreadable(Exception):
    """A GPU whose identity or memory NVML will not give: the snapshot says so instead of guessing."""


class NvmlBackend:
    def snapshot(self) -> Machine:
        base = Machine(
            source="nvml",
            host=local_host(),
            hostname=socket.gethostname(),
            recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            return replace(base, nvml_error=describe_nvml_error(err))
        try:
            return self._read(base)
        except _Unreadable as err:
            return replace(base, nvml_error=str(err))
        finally:
            _try(pynvml.nvmlShutdown)

    def _read(self, base: Machine) -> Machine:
        try:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as err:
            raise _Unreadable(f"NVML started but cannot list the GPUs: {err}") from None
        memory_versions = set()
        gpus, links = [], []
        for i, h in enumerate(handles):
            gpu, version, gpu_links = self._gpu(i, h)
            gpus.append(gpu)
            links.append(gpu_links)
            memory_versions.add(version)
        pairs = []
        for a in range(count):
            for b in range(a + 1, count):
                pairs.append(self._pair(a, b, handles, gpus, links))
        cuda = _try(pynvml.nvmlSystemGetCudaDriverVersion_v2)
        return replace(
            base,
            kernel_xids=read_kernel_xids(gpus),
            gpus=tuple(gpus),
            pairs=tuple(pairs),
            driver_version=driver,
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            nvml_version=_text(_try(pynvml.nvmlSystemGetNVMLVersion) or "") or None,
            memory_info_version=min(memory_versions) if memory_versions else None,
        )

    def _gpu(self, index: int, h) -> tuple[Gpu, int, list[tuple[str, int]]]:
        try:
            name = _text(pynvml.nvmlDeviceGetName(h))
            uuid = _text(pynvml.nvmlDeviceGetUUID(h))
            bus_id = _text(pynvml.nvmlDeviceGetPciInfo(h).busId)
            cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        except pynvml.NVMLError as err:
            raise _Unreadable(f"NVML cannot identify GPU {index}: {err}") from None
        if _mig_enabled(h):
            # CUDA then shows only the GPU's MIG instances, never the whole GPU the facts below describe.
            raise _Unreadable(
                f"GPU {index} ({name}) is in MIG mode: CUDA sees only its MIG instances and Live Avatar needs "
                f"whole GPUs (`sudo nvidia-smi -i {index} -mig 0`, then reset the GPU)"
            )
        mem, version = _memory(h)
        if mem is None:
            raise _Unreadable(f"NVML refuses GPU {index}'s memory information ({name})")
        gpu_links = []  # (remote bus, remote device type) per active NVLink
        for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
            state = _try(pynvml.nvmlDeviceGetNvLinkState, h, link)
            if state is None:  # no NVLink on this GPU, or past its last link
                break
            if state:
                remote = _try(pynvml.nvmlDeviceGetNvLinkRemotePciInfo, h, link)
                kind = _try(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType, h, link)
                if remote is not None:
                    gpu_links.append((_text(remote.busId), kind))
        persistence = _try(pynvml.nvmlDeviceGetPersistenceMode, h)
        gpu = Gpu(
            index=index,
            name=name,
            uuid=uuid,
            pci_bus_id=bus_id,
            compute_capability=(int(cc[0]), int(cc[1])),
            total_bytes=int(mem.total),
            used_bytes=int(mem.used),
            free_bytes=int(mem.free),
            reserved_bytes=int(mem.reserved) if version == 2 else None,
            persistence_mode=None if persistence is None else bool(persistence),
            pcie=Pcie(
                gen_current=_try(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h),
                gen_max=_try(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h),
                width_current=_try(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h),
                width_max=_try(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h),
            ),
            processes=tuple(
                GpuProcess(pid, kind, used, _process_name(pid)) for pid, (kind, used) in _processes(h).items()
            ),
            nvlink_remote_bus_ids=tuple(bus for bus, _ in gpu_links),
            health=_health(h),
        )
        return gpu, version, gpu_links

    def _pair(self, a: int, b: int, handles, gpus, links) -> GpuPair:
        ha, hb = handles[a], handles[b]
        level = _LEVELS.get(_try(pynvml.nvmlDeviceGetTopologyCommonAncestor, ha, hb))  # None: unknown
        read = _P2P.get(_try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_READ), "unknown")
        write = _P2P.get(_try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_WRITE), "unknown")
        target = bus_key(gpus[b].pci_bus_id)
        nvlinks = sum(1 for bus, _ in links[a] if bus_key(bus) == target)
        if not nvlinks:
            # Through NVSwitch every link ends at a switch; nvidia-smi then shows NV<links> for any
            # pair that NVML says can talk over NVLink.
            nvlink_p2p = _try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_NVLINK)
            if nvlink_p2p == pynvml.NVML_P2P_STATUS_OK:
                via_switch = [sum(1 for _, kind in links[g] if kind == _NVLINK_SWITCH) for g in (a, b)]
                nvlinks = min(via_switch)
        return GpuPair(a, b, "PIX" if level == "X" else level, read, write, nvlinks)  # X: one board, two GPUs


# ---- the sampler's reader: the same facts, a few of them, many times a second -----------------------


@dataclass(frozen=True)
class MemoryReading:
    index: int  # NVML index
    uuid: str
    used_bytes: int | None  # None where NVML refused this sample
    total_bytes: int | None
    utilization_pct: int | None  # None where NVML cannot tell (MIG mode)


@dataclass(frozen=True)
class ProcessMemory:
    index: int  # the GPU's NVML index
    pid: int
    name: str | None  # None where the PID is not visible from here
    used_bytes: int | None


@dataclass(frozen=True)
class HealthReading:
    index: int  # the GPU's NVML index
    temperature_c: int | None
    power_w: float | None
    throttle: tuple[str, ...] | None  # slowdowns active now (model.THROTTLE_REASONS' names)
    ecc_volatile_uncorrected: int | None
    repair_pending: bool | None  # a retired page or remapped row waiting for a reset
    xid_watched: bool  # NVML reports this GPU's Xids as events (not every GPU or driver can)
    xids: tuple[int, ...]  # the Xids NVML reported for this GPU since the previous reading


MAX_EVENTS_PER_READING = 64  # a GPU in an Xid storm must not hold up the sampler


class NvmlMemoryReader:
    """Memory, utilisation and processes of chosen GPUs, read again and again (runner/sampler.py's NVML path),
    and their health once a second: temperature, power, throttling, ECC, pending repairs and the Xids NVML reports
    as events (an event set registered for nvmlEventTypeXidCriticalError where the GPU supports it).

    One nvmlInit for the reader's life and one nvmlShutdown at close(), however often close() is called.
    """

    def __init__(self, gpu_indices: list[int] | None = None):
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(describe_nvml_error(err)) from err
        self._open = True
        self._events = None
        count = _try(pynvml.nvmlDeviceGetCount)
        if not count:
            self.close()
            raise NvmlUnavailable("NVML sees no GPU")
        indices = list(range(count)) if gpu_indices is None else gpu_indices
        try:
            handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices}
            self._gpus = [(i, h, _text(pynvml.nvmlDeviceGetUUID(h))) for i, h in handles.items()]
        except pynvml.NVMLError as err:  # a wrong index is the caller's mistake, not a reason to fall back
            self.close()
            raise ValueError(f"NVML cannot open GPUs {indices} (it sees {count}): {err}") from err
        self._on_v1: set[int] = set()  # GPUs whose memory is read with v1
        self._events, self._watched = self._watch_xids()

    def _watch_xids(self):
        """(the event set, {handle value: index} of the GPUs registered), or (None, {}) where NVML has no events."""
        wanted = [
            (index, handle)
            for index, handle, _ in self._gpus
            if (_try(pynvml.nvmlDeviceGetSupportedEventTypes, handle) or 0) & pynvml.nvmlEventTypeXidCriticalError
        ]
        events = _try(pynvml.nvmlEventSetCreate) if wanted else None
        if events is None:
            return None, {}
        watched = {}
        for index, handle in wanted:
            try:
                pynvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, events)
            except pynvml.NVMLError:  # refused for this GPU (a vGPU, a container without the privilege)
                continue
            watched[_handle_value(handle)] = index
        return events, watched

    def _xids(self) -> dict[int, list[int]]:
        """{GPU index: the Xids reported since the last call}, without waiting (a 0 ms wait)."""
        found: dict[int, list[int]] = {}
        for _ in range(MAX_EVENTS_PER_READING * max(1, len(self._watched)) if self._events is not None else 0):
            data = _try(pynvml.nvmlEventSetWait_v2, self._events, 0)  # NVMLError_Timeout: nothing more now
            if data is None:
                break
            index = self._watched.get(_handle_value(data.device))
            if index is not None and data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                found.setdefault(index, []).append(int(data.eventData))
        return found

    def health(self) -> list[HealthReading]:
        xids = self._xids()
        watched = set(self._watched.values())
        readings = []
        for index, handle, _ in self._gpus:
            ecc = _try(
                pynvml.nvmlDeviceGetTotalEccErrors,
                handle,
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_VOLATILE_ECC,
            )
            temperature = _try(pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU)
            milliwatts = _try(pynvml.nvmlDeviceGetPowerUsage, handle)
            readings.append(
                HealthReading(
                    index,
                    None if temperature is None else int(temperature),
                    None if milliwatts is None else milliwatts / 1000,
                    _throttle(handle),
                    None if ecc is None else int(ecc),
                    _repair_pending(handle),
                    index in watched,
                    tuple(xids.get(index, ())),
                )
            )
        return readings

    def memory(self) -> list[MemoryReading]:
        readings = []
        for index, handle, uuid in self._gpus:
            memory, version = _memory(handle, v2=index not in self._on_v1)
            if memory is not None and version == 1:
                # Once v1 answers where v2 did not, the GPU stays on v1: its timeline never mixes the two meanings.
                self._on_v1.add(index)
            rates = _try(pynvml.nvmlDeviceGetUtilizationRates, handle)
            readings.append(
                MemoryReading(
                    index,
                    uuid,
                    None if memory is None else int(memory.used),
                    None if memory is None else int(memory.total),
                    None if rates is None else int(rates.gpu),
                )
            )
        return readings

    def processes(self) -> list[ProcessMemory]:
        return [
            ProcessMemory(index, pid, _process_name(pid), used)
            for index, handle, _ in self._gpus
            for pid, (_, used) in _processes(handle).items()
        ]

    def close(self) -> None:
        if self._open:  # nvmlInit counts references: shut down exactly once
            self._open = False
            if self._events is not None:
                _try(pynvml.nvmlEventSetFree, self._events)
            _try(pynvml.nvmlShutdown)


def _handle_value(handle) -> int:
    """A device handle's address: the event data's handle is another ctypes object for the same device."""
    return ctypes.cast(handle, ctypes.c_void_p).value or 0


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):  # gone, or a host PID not visible inside this container
        return None
