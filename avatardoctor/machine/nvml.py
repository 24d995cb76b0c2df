"""The live backend: one NVML pass over every GPU. The only module that imports pynvml.

A failing NVML call leaves that one field unknown (None) instead of failing the snapshot, as nvitop
does; NVML missing altogether (no driver, no device node, a container started without GPUs) gives a
Machine with `nvml_error` set, which the gpu.driver check reports with a remedy.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import psutil
import pynvml

from avatardoctor.machine.host import local_host
from avatardoctor.machine.model import Gpu, GpuPair, GpuProcess, Machine, Pcie

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


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _try(fn, *args):
    """One NVML field: its value, or None where this driver or device cannot give it."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _bus_key(bus_id: str) -> str:
    # NVML writes the PCI domain with 4 or 8 digits depending on the call; compare bus:device.function.
    return ":".join(_text(bus_id).lower().split(":")[-2:])


def describe_nvml_error(err: Exception) -> str:
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver is visible in this environment"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return "the NVIDIA kernel driver is not loaded"
    if isinstance(err, pynvml.NVMLError_NoPermission):
        return "no permission to open the NVIDIA device nodes (/dev/nvidia*)"
    return f"NVML failed to start: {err}"


class NvmlBackend:
    def snapshot(self) -> Machine:
        host = local_host()
        base = dict(source="nvml", host=host, hostname=socket.gethostname())
        base["recorded_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            return Machine(**base, nvml_error=describe_nvml_error(err))
        try:
            return self._read(base)
        finally:
            _try(pynvml.nvmlShutdown)

    def _read(self, base: dict) -> Machine:
        count = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
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
        return Machine(
            **base,
            gpus=tuple(gpus),
            pairs=tuple(pairs),
            driver_version=_text(pynvml.nvmlSystemGetDriverVersion()),
            cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            nvml_version=_text(_try(pynvml.nvmlSystemGetNVMLVersion) or "") or None,
            memory_info_version=min(memory_versions) if memory_versions else None,
        )

    def _gpu(self, index: int, h) -> tuple[Gpu, int, list[tuple[str, int]]]:
        mem, version = _try(pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2), 2
        if mem is None:  # drivers before R510 have no v2; v1 counts reserved memory as used
            mem, version = pynvml.nvmlDeviceGetMemoryInfo(h), 1
        processes = []
        for kind, fn in (
            ("compute", pynvml.nvmlDeviceGetComputeRunningProcesses),
            ("graphics", pynvml.nvmlDeviceGetGraphicsRunningProcesses),
        ):
            for p in _try(fn, h) or []:
                processes.append(GpuProcess(p.pid, kind, p.usedGpuMemory, _process_name(p.pid)))
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
        cc = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        persistence = _try(pynvml.nvmlDeviceGetPersistenceMode, h)
        gpu = Gpu(
            index=index,
            name=_text(pynvml.nvmlDeviceGetName(h)),
            uuid=_text(pynvml.nvmlDeviceGetUUID(h)),
            pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(h).busId),
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
            processes=tuple(processes),
            nvlink_remote_bus_ids=tuple(bus for bus, _ in gpu_links),
        )
        return gpu, version, gpu_links

    def _pair(self, a: int, b: int, handles, gpus, links) -> GpuPair:
        ha, hb = handles[a], handles[b]
        level = _LEVELS.get(_try(pynvml.nvmlDeviceGetTopologyCommonAncestor, ha, hb))  # None: unknown
        read = _P2P.get(_try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_READ), "unknown")
        write = _P2P.get(_try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_WRITE), "unknown")
        target = _bus_key(gpus[b].pci_bus_id)
        nvlinks = sum(1 for bus, _ in links[a] if _bus_key(bus) == target)
        if not nvlinks:
            # Through NVSwitch every link ends at a switch; nvidia-smi then shows NV<links> for any
            # pair that NVML says can talk over NVLink.
            nvlink_p2p = _try(pynvml.nvmlDeviceGetP2PStatus, ha, hb, _P2P_NVLINK)
            if nvlink_p2p == pynvml.NVML_P2P_STATUS_OK:
                via_switch = [sum(1 for _, kind in links[g] if kind == _NVLINK_SWITCH) for g in (a, b)]
                nvlinks = min(via_switch)
        return GpuPair(a, b, "PIX" if level == "X" else level, read, write, nvlinks)  # X: one board, two GPUs


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):  # gone, or a host PID not visible inside this container
        return None
