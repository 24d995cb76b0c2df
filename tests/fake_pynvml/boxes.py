"""Machines as NVML describes them, one per driver generation, each with the quirks of its era.

Which C functions a driver has follows NVML's own history: memory info v2 and the _v3 process lists
came with R510, so an R470 driver answers neither. What a GPU refuses follows NVML's documentation:
utilisation is not supported in MIG mode, and a MIG-mode GPU gives aggregate memory and processes only
to a caller with the privileges (a container usually has not). The figures (totals, reserved memory,
link counts) are what these cards report; see tests/fixtures/machines for recorded ones.
"""

from __future__ import annotations

import uuid

import pynvml

from fake_pynvml.library import FakeBox, FakeGpu, NvLink, Process

GIB, MIB = 2**30, 2**20
NO_SUCH_PID = 4_194_300  # above the kernel's largest pid_max (2^22): never a process here, as a host PID in a container
R470_LACKS = frozenset(
    {
        "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetComputeRunningProcesses_v3",
        "nvmlDeviceGetGraphicsRunningProcesses_v3",
    }
)


def _uuid(box: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'fake-nvml/{box}/{index}')}"


def _switch_links(count: int, first_switch_bus: int) -> list[NvLink]:
    """count active links, spread over four NVSwitches as on an HGX board."""
    return [NvLink(True, f"00000000:{first_switch_bus + link % 4:02X}:00.0", 2) for link in range(count)]


def _all_pairs(n: int, status: int, indices=(0, 1, 2)) -> dict[tuple[int, int, int], int]:
    return {(a, b, i): status for a in range(n) for b in range(a + 1, n) for i in indices}


def r470_workstation() -> FakeBox:
    """R470, CUDA 11.4: four RTX 3090 on one socket, GPUs 0 and 1 joined by an NVLink bridge (4 links).
    No memory info v2, no _v3 process lists. A desktop: Xorg draws on GPU 0 and a viewer there has both a
    compute and a graphics context ("C+G" in nvidia-smi)."""
    reserved = 262 * MIB  # v1 has no field for it: the driver answers it as used
    gpus = []
    for i in range(4):
        bridged = i < 2
        peer = f"0000:{(2 if i == 0 else 1):02x}:00.0"  # the remote end in the 4-digit-domain form
        gpus.append(
            FakeGpu(
                name="NVIDIA GeForce RTX 3090",
                uuid=_uuid("r470", i),
                bus_id=f"00000000:{i + 1:02X}:00.0",
                cc=(8, 6),
                total=24576 * MIB,
                used=0,
                reserved=reserved,
                nvlinks=[NvLink(bridged, peer if bridged else "", 0) for _ in range(4)],
                persistence=0,
            )
        )
    viewer = Process(NO_SUCH_PID + 1, 900 * MIB)
    gpus[0].graphics = [Process(NO_SUCH_PID, 300 * MIB), viewer]
    gpus[0].compute = [viewer]
    gpus[0].used = 1200 * MIB
    p2p = _all_pairs(4, pynvml.NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED)  # GeForce: no P2P over PCIe
    p2p.update({(0, 1, i): pynvml.NVML_P2P_STATUS_OK for i in (0, 1, 2)})  # over the bridge
    levels = {(a, b): pynvml.NVML_TOPOLOGY_HOSTBRIDGE for a in range(4) for b in range(a + 1, 4)}
    levels.update({(0, 1): pynvml.NVML_TOPOLOGY_MULTIPLE, (2, 3): pynvml.NVML_TOPOLOGY_MULTIPLE})
    return FakeBox("470.256.02", 11040, gpus, levels, p2p, absent=R470_LACKS)


def r535_hgx_h100() -> FakeBox:
    """R535, CUDA 12.2: an HGX H100 board, eight GPUs whose 18 NVLinks each end at an NVSwitch; two
    sockets (GPUs 0-3 and 4-7). A training job another user started holds memory on GPU 3."""
    gpus = [
        FakeGpu(
            name="NVIDIA H100 80GB HBM3",
            uuid=_uuid("r535", i),
            bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
            cc=(9, 0),
            total=81559 * MIB,
            used=4 * MIB,
            reserved=537 * MIB,
            nvlinks=_switch_links(18, 0x05),
            pcie=(5, 5, 16, 16),
            ecc_uncorrected=(0, 0),
            remapped_rows=(0, 0, 0, 0),
        )
        for i in range(8)
    ]
    gpus[3].compute = [Process(NO_SUCH_PID, 40 * GIB)]
    gpus[3].used = 40 * GIB + 4 * MIB
    levels = {
        (a, b): pynvml.NVML_TOPOLOGY_NODE if (a < 4) == (b < 4) else pynvml.NVML_TOPOLOGY_SYSTEM
        for a in range(8)
        for b in range(a + 1, 8)
    }
    return FakeBox("535.183.01", 12020, gpus, levels, _all_pairs(8, pynvml.NVML_P2P_STATUS_OK))


def r550_mig_h100() -> FakeBox:
    """R550, CUDA 12.4, seen from a container without MIG privileges: two H100, GPU 0 in MIG mode (its
    aggregate memory and process list refused, utilisation not supported), GPU 1 whole."""
    gpus = [
        FakeGpu(
            name="NVIDIA H100 80GB HBM3",
            uuid=_uuid("r550-mig", i),
            bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0",
            cc=(9, 0),
            total=81559 * MIB,
            used=4 * MIB,
            reserved=537 * MIB,
            nvlinks=_switch_links(18, 0x05),
            pcie=(5, 5, 16, 16),
            mig=pynvml.NVML_DEVICE_MIG_DISABLE,
        )
        for i in range(2)
    ]
    gpus[0].mig = pynvml.NVML_DEVICE_MIG_ENABLE
    gpus[0].refuse = {
        "nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetMemoryInfo_v2": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetComputeRunningProcesses_v3": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetGraphicsRunningProcesses_v3": pynvml.NVML_ERROR_NO_PERMISSION,
        "nvmlDeviceGetUtilizationRates": pynvml.NVML_ERROR_NOT_SUPPORTED,
    }
    p2p = _all_pairs(2, pynvml.NVML_P2P_STATUS_NOT_SUPPORTED)  # nothing peers with a MIG-mode GPU
    return FakeBox("550.127.05", 12040, gpus, {(0, 1): pynvml.NVML_TOPOLOGY_NODE}, p2p)


def r550_container_a100() -> FakeBox:
    """R550, CUDA 12.4, inside a container on an HGX A100 board (12 NVLinks per GPU, through NVSwitches).
    Processes of other containers: on GPU 1 the driver lists none although 20 GiB are in use; on GPU 2
    it lists host PIDs that do not exist in this PID namespace, without their memory."""
    gpus = [
        FakeGpu(
            name="NVIDIA A100-SXM4-80GB",
            uuid=_uuid("r550-container", i),
            bus_id=f"00000000:{0x07 + 0x40 * i:02X}:00.0",
            cc=(8, 0),
            total=81920 * MIB,
            used=4 * MIB,
            reserved=516 * MIB,
            nvlinks=_switch_links(12, 0xC0),
            mig=pynvml.NVML_DEVICE_MIG_DISABLE,
        )
        for i in range(4)
    ]
    gpus[1].used = 20 * GIB
    gpus[2].compute = [Process(NO_SUCH_PID, None), Process(NO_SUCH_PID + 1, None)]
    gpus[2].used = 30 * GIB
    levels = {(a, b): pynvml.NVML_TOPOLOGY_NODE for a in range(4) for b in range(a + 1, 4)}
    return FakeBox("550.127.05", 12040, gpus, levels, _all_pairs(4, pynvml.NVML_P2P_STATUS_OK))


def r570_one_h200() -> FakeBox:
    """R570, CUDA 12.8: one H200, idle, the kind of box the GPU acceptance run (tests/gpu) is for."""
    gpu = FakeGpu(
        name="NVIDIA H200",
        uuid=_uuid("r570", 0),
        bus_id="00000000:19:00.0",
        cc=(9, 0),
        total=143771 * MIB,
        used=0,
        reserved=596 * MIB,
        nvlinks=_switch_links(18, 0x05),
        pcie=(5, 5, 16, 16),
        mig=pynvml.NVML_DEVICE_MIG_DISABLE,
        ecc_uncorrected=(0, 0),
        remapped_rows=(0, 0, 0, 0),
    )
    return FakeBox("570.133.20", 12080, [gpu])


def r535_ailing_h100() -> FakeBox:
    """R535: two H100s; GPU 1 as DCGM would flag it: uncorrected ECC errors since the driver loaded (and more over
    its life), a row remapping waiting for a reset, and its clocks held down by heat and the power cap."""
    box = r535_hgx_h100()
    box.gpus = box.gpus[:2]
    box.gpus[1].ecc_uncorrected = (2, 7)
    box.gpus[1].remapped_rows = (0, 3, 1, 0)
    box.gpus[1].throttle_reasons = (
        pynvml.nvmlClocksThrottleReasonHwThermalSlowdown | pynvml.nvmlClocksThrottleReasonSwPowerCap
    )
    box.levels = {(0, 1): pynvml.NVML_TOPOLOGY_NODE}
    box.p2p = _all_pairs(2, pynvml.NVML_P2P_STATUS_OK)
    return box


def r535_xid_during_run() -> FakeBox:
    """R535: two H100s, healthy when the run starts; GPU 1 falls off the bus during it (Xid 79, an NVML event) and
    warms past 85 C under the power cap. GPU 0 cannot report Xid events (its driver refuses the event type)."""
    box = r535_ailing_h100()
    for gpu in box.gpus:
        gpu.ecc_uncorrected, gpu.remapped_rows, gpu.throttle_reasons = (0, 0), (0, 0, 0, 0), 0
    box.gpus[0].event_types = 0
    box.gpus[1].xids = [79]
    box.gpus[1].temperature_c, box.gpus[1].power_mw = 87, 700_000
    box.gpus[1].throttle_reasons = pynvml.nvmlClocksThrottleReasonSwPowerCap
    return box


def driver_not_loaded() -> FakeBox:
    """The library is there (a container image with the user-space driver) but the kernel module is not."""
    return FakeBox("", 0, [], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)


GENERATIONS = {
    "r470-workstation": r470_workstation,
    "r535-hgx-h100": r535_hgx_h100,
    "r550-mig-h100": r550_mig_h100,
    "r550-container-a100": r550_container_a100,
    "r570-one-h200": r570_one_h200,
    "r535-ailing-h100": r535_ailing_h100,
    "r535-xid-during-run": r535_xid_during_run,
}
