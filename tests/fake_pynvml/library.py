"""A fake libnvidia-ml.so.1 that the real nvidia-ml-py binding calls.

The fake sits at the hardware edge: below the binding, where the C library would be. So what
avatardoctor receives is what the real `pynvml` gives: its ctypes structures (c_nvmlMemory_t or
c_nvmlMemory_v2_t), its friendly process objects with usedGpuMemory None for
NVML_VALUE_NOT_AVAILABLE, its NVMLError subclasses (NVMLError_NotSupported, ...), its
NVMLError_FunctionNotFound for a symbol this driver lacks, and its NVMLLibraryMismatchError where an
unversioned binding name meets such a driver. Each C function here takes its arguments as the
binding passes them (ctypes objects, byref() pointers, plain ints) and returns an nvmlReturn_t.
"""

from __future__ import annotations

import collections
import ctypes
from dataclasses import dataclass, field

import pynvml

HANDLE_BASE = 0x1000  # device handles are opaque pointers; the fake's are HANDLE_BASE + index
EVENT_SET_BASE = 0x9000  # event sets too: EVENT_SET_BASE + the set's number


@dataclass
class Process:
    pid: int
    used_bytes: int | None  # None: NVML_VALUE_NOT_AVAILABLE
    gpu_instance: int = 0xFFFFFFFF  # set on MIG
    compute_instance: int = 0xFFFFFFFF


@dataclass
class NvLink:
    active: bool
    remote_bus_id: str  # the remote end's PCI bus id as nvmlDeviceGetNvLinkRemotePciInfo writes it
    remote_type: int  # nvmlNvLinkDeviceType: 0 GPU, 1 IBM NPU, 2 NVSwitch


@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus_id: str  # as nvmlDeviceGetPciInfo_v3 writes it: an 8-digit domain
    cc: tuple[int, int]
    total: int
    used: int  # without driver-reserved memory (v2's meaning); v1 answers used + reserved
    reserved: int
    compute: list[Process] = field(default_factory=list)
    graphics: list[Process] = field(default_factory=list)
    nvlinks: list[NvLink] | None = None  # None: no NVLink at all (nvmlDeviceGetNvLinkState: NotSupported)
    pcie: tuple[int, int, int, int] = (4, 4, 16, 16)  # gen current, gen max, width current, width max
    persistence: int = 1
    utilization: int = 0
    mig: int | None = None  # nvmlDeviceGetMigMode's current mode; None: NotSupported (GeForce, pre-Ampere)
    refuse: dict[str, int] = field(default_factory=dict)  # C function -> the error it returns for this GPU
    # Health, as DCGM watches it; None: this GPU cannot say (NotSupported), as GeForce for ECC.
    ecc_uncorrected: tuple[int, int] | None = None  # (volatile, aggregate) uncorrected ECC errors
    retired_pages_pending: int | None = None  # pre-Ampere page retirement: 1 pending a reset
    remapped_rows: tuple[int, int, int, int] | None = None  # Ampere+: corrected, uncorrected, pending, failed
    throttle_reasons: int = 0  # nvmlClocksThrottleReason* bits active now
    temperature_c: int = 40
    power_mw: int = 90_000
    # Xid events (nvmlEventTypeXidCriticalError): whether the GPU can report them, and the Xids it reports to an
    # event set once one is registered, each delivered once.
    event_types: int = pynvml.nvmlEventTypeXidCriticalError
    xids: list[int] = field(default_factory=list)


@dataclass
class FakeBox:
    """One machine with one driver: its GPUs, their topology, and the C functions the driver has."""

    driver: str
    cuda: int  # nvmlSystemGetCudaDriverVersion_v2, e.g. 12020
    gpus: list[FakeGpu]
    levels: dict[tuple[int, int], int] = field(default_factory=dict)  # pair -> NVML_TOPOLOGY_*
    p2p: dict[tuple[int, int, int], int] = field(default_factory=dict)  # (a, b, caps index) -> NVML_P2P_STATUS_*
    absent: frozenset[str] = frozenset()  # C symbols this driver does not export
    init_error: int | None = None  # what nvmlInitWithFlags returns instead of success

    @property
    def nvml_version(self) -> str:
        return f"{self.cuda // 1000}.{self.driver}"


class FakeLibrary:
    """What ctypes.CDLL("libnvidia-ml.so.1") would be: attribute lookup finds the C functions."""

    def __init__(self, box: FakeBox):
        self.box = box
        self.calls: collections.Counter[str] = collections.Counter()
        self.initialised = 0
        self.event_sets: dict[int, set[int]] = {}  # set token -> the GPU indices registered to it

    def __getattr__(self, symbol: str):
        implementation = getattr(_CFunctions, symbol, None) if symbol.startswith("nvml") else None
        if implementation is None or symbol in self.box.absent:
            raise AttributeError(symbol)  # the binding turns this into NVML_ERROR_FUNCTION_NOT_FOUND

        def c_function(*args):  # a plain function: the binding sets attributes (restype) on what it gets
            self.calls[symbol] += 1
            return implementation(self, *args)

        return c_function


def _out(ref):
    """The ctypes object a byref() argument points at."""
    return ref._obj


def _gpu(lib: FakeLibrary, handle) -> tuple[int, FakeGpu] | None:
    value = ctypes.cast(handle, ctypes.c_void_p).value or 0
    index = value - HANDLE_BASE
    return (index, lib.box.gpus[index]) if 0 <= index < len(lib.box.gpus) else None


def _device_call(fn):
    """A per-device C function: checks the library is initialised and the handle valid, applies the
    GPU's refusals, and passes the GPU on."""

    def call(lib: FakeLibrary, handle, *args):
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        found = _gpu(lib, handle)
        if found is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        index, gpu = found
        if fn.__name__ in gpu.refuse:
            return gpu.refuse[fn.__name__]
        return fn(lib, index, gpu, *args)

    call.__name__ = fn.__name__
    return call


def _set_pointer(target, value: int) -> None:
    """Write an opaque handle (a pointer the binding never dereferences) into a ctypes pointer object."""
    token = ctypes.c_void_p(value)
    ctypes.memmove(ctypes.addressof(target), ctypes.addressof(token), ctypes.sizeof(token))


def _write_text(buffer, size, text: str) -> int:
    encoded = text.encode()
    if len(encoded) + 1 > size.value:
        return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    buffer.value = encoded
    return pynvml.NVML_SUCCESS


def _process_list(processes: list[Process], count_ref, array) -> int:
    """nvmlDeviceGet*RunningProcesses: a first call with no array asks for the count."""
    count = _out(count_ref)
    if array is None:
        count.value = len(processes)
        return pynvml.NVML_SUCCESS if not processes else pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    if count.value < len(processes):
        count.value = len(processes)
        return pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    for slot, p in zip(array, processes):
        slot.pid = p.pid
        slot.usedGpuMemory = pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value if p.used_bytes is None else p.used_bytes
        slot.gpuInstanceId = p.gpu_instance
        slot.computeInstanceId = p.compute_instance
    count.value = len(processes)
    return pynvml.NVML_SUCCESS


class _CFunctions:
    """The C functions, by symbol name; each takes the library first, then the C arguments."""

    @staticmethod
    def nvmlInitWithFlags(lib: FakeLibrary, flags: int) -> int:
        if lib.box.init_error is not None:
            return lib.box.init_error
        lib.initialised += 1
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlShutdown(lib: FakeLibrary) -> int:
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        lib.initialised -= 1
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlErrorString(lib: FakeLibrary, result: int) -> bytes:
        return f"fake NVML error {result}".encode()

    @staticmethod
    def nvmlSystemGetDriverVersion(lib: FakeLibrary, buffer, size) -> int:
        return _write_text(buffer, size, lib.box.driver)

    @staticmethod
    def nvmlSystemGetNVMLVersion(lib: FakeLibrary, buffer, size) -> int:
        return _write_text(buffer, size, lib.box.nvml_version)

    @staticmethod
    def nvmlSystemGetCudaDriverVersion_v2(lib: FakeLibrary, version_ref) -> int:
        _out(version_ref).value = lib.box.cuda
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlDeviceGetCount_v2(lib: FakeLibrary, count_ref) -> int:
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        _out(count_ref).value = len(lib.box.gpus)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlDeviceGetHandleByIndex_v2(lib: FakeLibrary, index, device_ref) -> int:
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        if not 0 <= index.value < len(lib.box.gpus):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        _set_pointer(_out(device_ref), HANDLE_BASE + index.value)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlEventSetCreate(lib: FakeLibrary, set_ref) -> int:
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        token = EVENT_SET_BASE + len(lib.event_sets)
        lib.event_sets[token] = set()
        _set_pointer(_out(set_ref), token)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlEventSetFree(lib: FakeLibrary, event_set) -> int:
        token = ctypes.cast(event_set, ctypes.c_void_p).value
        return (
            pynvml.NVML_SUCCESS if lib.event_sets.pop(token, None) is not None else pynvml.NVML_ERROR_INVALID_ARGUMENT
        )

    @staticmethod
    @_device_call
    def nvmlDeviceGetSupportedEventTypes(lib, index, gpu, types_ref) -> int:
        _out(types_ref).value = gpu.event_types
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceRegisterEvents(lib, index, gpu, types, event_set) -> int:
        registered = lib.event_sets.get(ctypes.cast(event_set, ctypes.c_void_p).value)
        if registered is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        if types.value & ~gpu.event_types:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        registered.add(index)
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlEventSetWait_v2(lib: FakeLibrary, event_set, data_ref, timeout_ms) -> int:
        """The next Xid of a registered GPU; none pending is a timeout (the fake never waits)."""
        registered = lib.event_sets.get(ctypes.cast(event_set, ctypes.c_void_p).value)
        if registered is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        for index in sorted(registered):
            gpu = lib.box.gpus[index]
            if gpu.xids:
                data = _out(data_ref)
                _set_pointer(data.device, HANDLE_BASE + index)
                data.eventType = pynvml.nvmlEventTypeXidCriticalError
                data.eventData = gpu.xids.pop(0)
                return pynvml.NVML_SUCCESS
        return pynvml.NVML_ERROR_TIMEOUT

    @staticmethod
    @_device_call
    def nvmlDeviceGetName(lib, index, gpu, buffer, size) -> int:
        return _write_text(buffer, size, gpu.name)

    @staticmethod
    @_device_call
    def nvmlDeviceGetUUID(lib, index, gpu, buffer, size) -> int:
        return _write_text(buffer, size, gpu.uuid)

    @staticmethod
    @_device_call
    def nvmlDeviceGetPciInfo_v3(lib, index, gpu, info_ref) -> int:
        info = _out(info_ref)
        info.busId = gpu.bus_id.encode()
        info.busIdLegacy = gpu.bus_id[4:].encode()  # the 4-digit domain form
        info.bus = int(gpu.bus_id.split(":")[1], 16)
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetCudaComputeCapability(lib, index, gpu, major_ref, minor_ref) -> int:
        _out(major_ref).value, _out(minor_ref).value = gpu.cc
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetMemoryInfo(lib, index, gpu, memory_ref) -> int:
        memory = _out(memory_ref)  # v1 counts driver-reserved memory as used
        memory.total, memory.used = gpu.total, gpu.used + gpu.reserved
        memory.free = gpu.total - memory.used
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetMemoryInfo_v2(lib, index, gpu, memory_ref) -> int:
        memory = _out(memory_ref)
        if memory.version != pynvml.nvmlMemory_v2:
            return pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH
        memory.total, memory.reserved, memory.used = gpu.total, gpu.reserved, gpu.used
        memory.free = gpu.total - gpu.reserved - gpu.used
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetUtilizationRates(lib, index, gpu, rates_ref) -> int:
        rates = _out(rates_ref)
        rates.gpu, rates.memory = gpu.utilization, gpu.utilization // 2
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetComputeRunningProcesses_v3(lib, index, gpu, count_ref, array) -> int:
        return _process_list(gpu.compute, count_ref, array)

    @staticmethod
    @_device_call
    def nvmlDeviceGetComputeRunningProcesses_v2(lib, index, gpu, count_ref, array) -> int:
        return _process_list(gpu.compute, count_ref, array)

    @staticmethod
    @_device_call
    def nvmlDeviceGetGraphicsRunningProcesses_v3(lib, index, gpu, count_ref, array) -> int:
        return _process_list(gpu.graphics, count_ref, array)

    @staticmethod
    @_device_call
    def nvmlDeviceGetGraphicsRunningProcesses_v2(lib, index, gpu, count_ref, array) -> int:
        return _process_list(gpu.graphics, count_ref, array)

    @staticmethod
    @_device_call
    def nvmlDeviceGetTotalEccErrors(lib, index, gpu, error_type, counter_type, count_ref) -> int:
        if gpu.ecc_uncorrected is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        if error_type.value != pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            _out(count_ref).value = 0
        else:
            _out(count_ref).value = gpu.ecc_uncorrected[counter_type.value]
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetRetiredPagesPendingStatus(lib, index, gpu, pending_ref) -> int:
        if gpu.retired_pages_pending is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        _out(pending_ref).value = gpu.retired_pages_pending
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetRemappedRows(lib, index, gpu, corrected_ref, uncorrected_ref, pending_ref, failed_ref) -> int:
        if gpu.remapped_rows is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        for ref, value in zip((corrected_ref, uncorrected_ref, pending_ref, failed_ref), gpu.remapped_rows):
            _out(ref).value = value
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetCurrentClocksEventReasons(lib, index, gpu, reasons_ref) -> int:
        _out(reasons_ref).value = gpu.throttle_reasons
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetCurrentClocksThrottleReasons(lib, index, gpu, reasons_ref) -> int:
        _out(reasons_ref).value = gpu.throttle_reasons
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetTemperature(lib, index, gpu, sensor, temperature_ref) -> int:
        if sensor.value != pynvml.NVML_TEMPERATURE_GPU:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        _out(temperature_ref).value = gpu.temperature_c
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetPowerUsage(lib, index, gpu, milliwatts_ref) -> int:
        _out(milliwatts_ref).value = gpu.power_mw
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetPersistenceMode(lib, index, gpu, state_ref) -> int:
        _out(state_ref).value = gpu.persistence
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetCurrPcieLinkGeneration(lib, index, gpu, value_ref) -> int:
        _out(value_ref).value = gpu.pcie[0]
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetMaxPcieLinkGeneration(lib, index, gpu, value_ref) -> int:
        _out(value_ref).value = gpu.pcie[1]
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetCurrPcieLinkWidth(lib, index, gpu, value_ref) -> int:
        _out(value_ref).value = gpu.pcie[2]
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetMaxPcieLinkWidth(lib, index, gpu, value_ref) -> int:
        _out(value_ref).value = gpu.pcie[3]
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _link(gpu: FakeGpu, link: int) -> NvLink | int:
        if gpu.nvlinks is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        if not isinstance(link, int) or not 0 <= link < len(gpu.nvlinks):
            return pynvml.NVML_ERROR_INVALID_ARGUMENT  # past the GPU's last link
        return gpu.nvlinks[link]

    @staticmethod
    @_device_call
    def nvmlDeviceGetNvLinkState(lib, index, gpu, link, active_ref) -> int:
        found = _CFunctions._link(gpu, link)
        if isinstance(found, int):
            return found
        _out(active_ref).value = int(found.active)
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetNvLinkRemotePciInfo_v2(lib, index, gpu, link, info_ref) -> int:
        found = _CFunctions._link(gpu, link)
        if isinstance(found, int):
            return found
        _out(info_ref).busId = found.remote_bus_id.encode()
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetNvLinkRemoteDeviceType(lib, index, gpu, link, type_ref) -> int:
        found = _CFunctions._link(gpu, link)
        if isinstance(found, int):
            return found
        _out(type_ref).value = found.remote_type
        return pynvml.NVML_SUCCESS

    @staticmethod
    @_device_call
    def nvmlDeviceGetMigMode(lib, index, gpu, current_ref, pending_ref) -> int:
        if gpu.mig is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        _out(current_ref).value = _out(pending_ref).value = gpu.mig
        return pynvml.NVML_SUCCESS

    @staticmethod
    def _pair(lib: FakeLibrary, a, b) -> tuple[int, int] | int:
        if not lib.initialised:
            return pynvml.NVML_ERROR_UNINITIALIZED
        found_a, found_b = _gpu(lib, a), _gpu(lib, b)
        if found_a is None or found_b is None:
            return pynvml.NVML_ERROR_INVALID_ARGUMENT
        return found_a[0], found_b[0]

    @staticmethod
    def nvmlDeviceGetTopologyCommonAncestor(lib: FakeLibrary, a, b, level_ref) -> int:
        pair = _CFunctions._pair(lib, a, b)
        if isinstance(pair, int):
            return pair
        level = lib.box.levels.get((min(pair), max(pair)))
        if level is None:
            return pynvml.NVML_ERROR_NOT_SUPPORTED
        _out(level_ref).value = level
        return pynvml.NVML_SUCCESS

    @staticmethod
    def nvmlDeviceGetP2PStatus(lib: FakeLibrary, a, b, caps_index, status_ref) -> int:
        if not isinstance(caps_index, int):  # ctypes refuses anything else, e.g. the binding's (0,) READ index
            raise ctypes.ArgumentError(f"argument 3: wrong type {type(caps_index).__name__}")
        pair = _CFunctions._pair(lib, a, b)
        if isinstance(pair, int):
            return pair
        _out(status_ref).value = lib.box.p2p.get(
            (min(pair), max(pair), caps_index), pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
        )
        return pynvml.NVML_SUCCESS
