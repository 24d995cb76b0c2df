"""The NVML -> machine translation and the sampler's NVML path, without a GPU: the real nvidia-ml-py
binding over a fake libnvidia-ml per driver generation (tests/fake_pynvml). What reaches avatardoctor
is what the binding gives on such a driver: v1 or v2 memory structures, NVMLError_NotSupported and
NVMLError_NoPermission, NVMLError_FunctionNotFound and NVMLLibraryMismatchError."""

from __future__ import annotations

import csv
import json
import time

import pynvml
import pytest
from click.testing import CliRunner
from conftest import make_ctx
from fake_pynvml import boxes, install

from avatardoctor.checks.base import Status
from avatardoctor.checks.gpu import check_driver, check_processes
from avatardoctor.cli import cli
from avatardoctor.machine.model import machine_from_dict
from avatardoctor.machine.nvml import NvmlBackend, NvmlMemoryReader, NvmlUnavailable
from avatardoctor.machine.recorded import read_machine_file
from avatardoctor.runner.folder import RunFolder
from avatardoctor.runner.sampler import MEMORY_COLUMNS, MemorySampler

MIB, GIB = 2**20, 2**30
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def snapshot(monkeypatch, box):
    lib = install(monkeypatch, box)
    return NvmlBackend().snapshot(), lib


RECORDABLE = sorted(g for g in boxes.GENERATIONS if g != "r550-mig-h100")


@pytest.mark.parametrize("generation", RECORDABLE)
def test_machine_record_writes_what_check_machine_reads_back(monkeypatch, tmp_path, generation):
    lib = install(monkeypatch, boxes.GENERATIONS[generation]())
    out = tmp_path / "box.json"
    result = CliRunner().invoke(cli, ["machine", "record", "-o", str(out)])
    assert result.exit_code == 0, result.output
    recorded = read_machine_file(out)
    assert recorded.source == f"recorded:{out}"
    live = NvmlBackend().snapshot()
    assert machine_from_dict(json.loads(out.read_text()), "nvml").gpus == live.gpus
    assert lib.initialised == 0  # every nvmlInit had its nvmlShutdown


def test_r470_has_no_memory_v2_and_no_v3_process_lists(monkeypatch):
    """Before R510: v1 memory (driver-reserved memory counted as used, no reserved field) and the
    processes from the _v2 lists. The binding's unversioned process call would raise
    NVMLLibraryMismatchError here, which is not an NVMLError."""
    m, lib = snapshot(monkeypatch, boxes.r470_workstation())
    assert m.nvml_error is None and m.driver_version == "470.256.02" and m.cuda_driver_version == "11.4"
    assert m.memory_info_version == 1
    idle = m.gpus[1]
    assert idle.reserved_bytes is None and idle.used_bytes == 262 * MIB  # reserved, reported as used
    assert idle.free_bytes == idle.total_bytes - 262 * MIB
    desktop = m.gpus[0]
    # The viewer has a compute and a graphics context (nvidia-smi's "C+G"): one process, once, as compute.
    assert sorted((p.pid, p.kind, p.used_bytes) for p in desktop.processes) == [
        (boxes.NO_SUCH_PID, "graphics", 300 * MIB),
        (boxes.NO_SUCH_PID + 1, "compute", 900 * MIB),
    ]
    assert all(p.name is None for p in desktop.processes)  # no such PID here
    assert lib.calls["nvmlDeviceGetComputeRunningProcesses_v2"] > 0
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlInit()
        try:
            pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    assert desktop.persistence_mode is False
    ctx = make_ctx(m, mode="single")
    assert any("memory info v1" in line for line in check_driver.run(ctx).details)


def test_r470_nvlink_bridge_is_counted_from_the_remote_bus_id(monkeypatch):
    """The bridge's remote end comes back with a 4-digit PCI domain, the GPU's own bus id with 8."""
    m, _ = snapshot(monkeypatch, boxes.r470_workstation())
    assert m.gpus[0].nvlink_remote_bus_ids == ("0000:02:00.0",) * 4
    assert m.pair(0, 1).nvlinks == 4 and (m.pair(0, 1).p2p_read, m.pair(0, 1).level) == ("ok", "PXB")
    assert m.pair(2, 3).nvlinks == 0 and m.pair(2, 3).p2p_read == "chipset_not_supported"
    assert m.gpus[2].nvlink_remote_bus_ids == ()  # links present but inactive: no bridge


def test_r535_hgx_every_pair_talks_over_18_nvlinks_through_the_switches(monkeypatch):
    m, _ = snapshot(monkeypatch, boxes.r535_hgx_h100())
    assert len(m.pairs) == 28 and {p.nvlinks for p in m.pairs} == {18}
    assert {p.p2p_read for p in m.pairs} == {"ok"}
    assert m.pair(0, 3).level == "NODE" and m.pair(3, 4).level == "SYS"
    assert m.memory_info_version == 2 and {g.reserved_bytes for g in m.gpus} == {537 * MIB}
    assert m.gpus[0].used_bytes == 4 * MIB  # v2: reserved memory is not "used"
    busy = m.gpus[3]
    assert [(p.pid, p.used_bytes) for p in busy.processes] == [(boxes.NO_SUCH_PID, 40 * GIB)]
    outcome = check_processes.run(make_ctx(m))  # 8 GPUs: tpp on GPUs 0-4
    assert outcome.status is Status.WARN and "GPU 3" in outcome.summary


def test_a_nvlink_count_needs_nvml_to_say_the_pair_talks_over_nvlink(monkeypatch):
    box = boxes.r535_hgx_h100()
    box.p2p[(0, 1, 2)] = pynvml.NVML_P2P_STATUS_NOT_SUPPORTED  # the NVLink capability index
    m, _ = snapshot(monkeypatch, box)
    assert m.pair(0, 1).nvlinks == 0 and m.pair(0, 2).nvlinks == 18


def test_the_bindings_p2p_read_index_is_a_tuple_that_ctypes_refuses(monkeypatch):
    """Why nvml.py spells the capability indices out: nvidia-ml-py's NVML_P2P_CAPS_INDEX_READ is (0,)."""
    install(monkeypatch, boxes.r535_hgx_h100())
    assert pynvml.NVML_P2P_CAPS_INDEX_READ == (0,)
    pynvml.nvmlInit()
    try:
        a, b = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlDeviceGetHandleByIndex(1)
        with pytest.raises(Exception, match="wrong type"):
            pynvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_READ)
        assert pynvml.nvmlDeviceGetP2PStatus(a, b, 0) == pynvml.NVML_P2P_STATUS_OK
    finally:
        pynvml.nvmlShutdown()


def test_a_mig_mode_gpu_is_named_instead_of_described_as_a_whole_gpu(monkeypatch):
    """R550, no MIG privileges: NVML refuses the MIG-mode GPU's memory (NoPermission). CUDA would show
    only its instances, so its 80 GB are never offered to the checks as one GPU."""
    m, lib = snapshot(monkeypatch, boxes.r550_mig_h100())
    assert m.gpus == () and "GPU 0 (NVIDIA H100 80GB HBM3) is in MIG mode" in m.nvml_error
    assert lib.initialised == 0
    outcome = check_driver.run(make_ctx(m))
    assert outcome.status is Status.FAIL and "MIG mode" in outcome.summary
    result = CliRunner().invoke(cli, ["machine", "record"])
    assert result.exit_code == 1 and "cannot record this machine: GPU 0" in result.output


def test_a_gpu_whose_memory_nvml_refuses_is_one_line_not_a_traceback(monkeypatch):
    box = boxes.r535_hgx_h100()
    box.gpus[5].refuse = {"nvmlDeviceGetMemoryInfo_v2": 999, "nvmlDeviceGetMemoryInfo": pynvml.NVML_ERROR_GPU_IS_LOST}
    m, _ = snapshot(monkeypatch, box)
    assert m.gpus == () and m.nvml_error == "NVML refuses GPU 5's memory information (NVIDIA H100 80GB HBM3)"
    box.gpus[5].refuse = {"nvmlDeviceGetName": pynvml.NVML_ERROR_GPU_IS_LOST}
    m, _ = snapshot(monkeypatch, box)
    assert m.nvml_error == "NVML cannot identify GPU 5: GPU is lost"


def test_a_container_sees_memory_in_use_without_the_processes(monkeypatch):
    m, _ = snapshot(monkeypatch, boxes.r550_container_a100())
    assert m.gpus[1].processes == () and m.gpus[1].used_bytes == 20 * GIB
    assert [(p.name, p.used_bytes) for p in m.gpus[2].processes] == [(None, None), (None, None)]
    outcome = check_processes.run(make_ctx(m, mode="single", env={"CUDA_VISIBLE_DEVICES": "1"}))
    assert outcome.status is Status.WARN
    assert any("in use by processes NVML does not list" in line for line in outcome.details)
    assert m.pair(1, 2).nvlinks == 12


def test_a_driver_that_is_not_loaded(monkeypatch, tmp_path):
    m, _ = snapshot(monkeypatch, boxes.driver_not_loaded())
    assert m.nvml_error == "the NVIDIA kernel driver is not loaded" and m.host.cpu_count >= 1
    with pytest.raises(NvmlUnavailable, match="kernel driver"):
        NvmlMemoryReader()
    sampler = MemorySampler(RunFolder(tmp_path / "run"), source="auto")
    assert sampler.source_used == "psutil" and "kernel driver is not loaded" in sampler.fallback_reason


# ---- the sampler's NVML path ----------------------------------------------------------------------


def test_the_reader_opens_nvml_once_and_closes_it_once(monkeypatch):
    lib = install(monkeypatch, boxes.r535_hgx_h100())
    reader = NvmlMemoryReader([3, 5])
    assert [r.index for r in reader.memory()] == [3, 5]
    assert [(p.index, p.pid, p.used_bytes) for p in reader.processes()] == [(3, boxes.NO_SUCH_PID, 40 * GIB)]
    reader.close()
    reader.close()
    assert lib.initialised == 0 and lib.calls["nvmlShutdown"] == 1
    with pytest.raises(ValueError, match=r"cannot open GPUs \[8\] \(it sees 8\)"):
        NvmlMemoryReader([8])
    assert lib.initialised == 0


def test_a_gpu_read_with_v1_once_stays_on_v1(monkeypatch):
    """Memory v2 and v1 mean different things by "used": one GPU's timeline never mixes them."""
    box = boxes.r535_hgx_h100()
    install(monkeypatch, box)
    reader = NvmlMemoryReader([0])
    assert reader.memory()[0].used_bytes == 4 * MIB  # v2
    box.gpus[0].refuse = {"nvmlDeviceGetMemoryInfo_v2": pynvml.NVML_ERROR_UNKNOWN}
    assert reader.memory()[0].used_bytes == (4 + 537) * MIB  # v1: reserved counted as used
    box.gpus[0].refuse = {}
    assert reader.memory()[0].used_bytes == (4 + 537) * MIB  # still v1
    reader.close()


def test_the_mig_box_samples_its_whole_gpu_and_leaves_the_refused_one_empty(monkeypatch, tmp_path):
    install(monkeypatch, boxes.r550_mig_h100())
    reader = NvmlMemoryReader()
    mig, whole = reader.memory()
    assert (mig.used_bytes, mig.total_bytes, mig.utilization_pct) == (None, None, None)
    assert whole.used_bytes == 4 * MIB and whole.utilization_pct == 0
    assert reader.processes() == []  # GPU 0's list refused (NoPermission), GPU 1 idle
    reader.close()


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll until condition() holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.01)


@pytest.mark.parametrize("generation", ["r470-workstation", "r535-hgx-h100", "r550-mig-h100"])
def test_the_sampler_records_what_nvml_says_as_it_changes(monkeypatch, tmp_path, generation):
    box = boxes.GENERATIONS[generation]()
    install(monkeypatch, box)
    folder = RunFolder(tmp_path / "run")
    sampler = MemorySampler(folder, hz=100, source="nvml")
    gpu = box.gpus[-1]  # whole in every generation
    last = str(len(box.gpus) - 1)
    v1_extra = gpu.reserved if generation == "r470-workstation" else 0
    try:
        sampler.start()
        wait_for(lambda: last in sampler.last(), "a first sample")
        gpu.used = 7 * GIB  # a workload allocates
        wait_for(lambda: sampler.peaks_mib().get(last, 0) >= 7 * 1024, "the allocation sampled")
        gpu.used = 1 * GIB  # and frees
        wait_for(lambda: sampler.last()[last]["memory_used_mib"] == (GIB + v1_extra) / MIB, "the release sampled")
    finally:
        sampler.stop()
    assert sampler.source_used == "nvml" and sampler.fallback_reason is None
    assert sampler.peaks_mib()[last] == (7 * GIB + v1_extra) / MIB
    with folder.gpu_memory_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == MEMORY_COLUMNS
    assert {r["uuid"] for r in rows if r["gpu"] == last} == {gpu.uuid}
    assert {r["memory_total_mib"] for r in rows if r["gpu"] == last} == {f"{gpu.total / MIB:.1f}"}
    if generation == "r550-mig-h100":  # the MIG-mode GPU: rows without figures, never a crash
        assert {(r["memory_used_mib"], r["utilization_pct"]) for r in rows if r["gpu"] == "0"} == {("", "")}


def test_the_sampler_lists_each_process_once_a_second_with_its_gpu(monkeypatch, tmp_path):
    box = boxes.r470_workstation()
    install(monkeypatch, box)
    folder = RunFolder(tmp_path / "run")
    sampler = MemorySampler(folder, hz=20, source="nvml", gpu_indices=[0])
    try:
        sampler.start()
        wait_for(lambda: folder.gpu_processes_csv.read_text().count("\n") >= 3, "a process listing")
    finally:
        sampler.stop()
    with folder.gpu_processes_csv.open(newline="") as f:
        listed = {(r["gpu"], r["pid"], r["name"], r["used_mib"]) for r in csv.DictReader(f)}
    assert listed == {("0", str(boxes.NO_SUCH_PID + 1), "", "900.0"), ("0", str(boxes.NO_SUCH_PID), "", "300.0")}
