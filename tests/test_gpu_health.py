"""GPU health as DCGM flags it: read through the real NVML binding from the fake driver (tests/fake_pynvml), judged
by the gpu.ecc, gpu.retired_pages and gpu.throttle checks; and the failures a sick GPU causes, named by the
classifier instead of a generic crash."""

from __future__ import annotations

from conftest import make_ctx
from fake_pynvml import boxes, install

from avatardoctor.checks.base import Status
from avatardoctor.checks.health import check_ecc, check_retired_pages, check_throttle
from avatardoctor.machine.nvml import NvmlBackend
from avatardoctor.runner.classify import classify


def ctx_on(monkeypatch, box, visible: str):
    install(monkeypatch, box)
    return make_ctx(NvmlBackend().snapshot(), env={"CUDA_VISIBLE_DEVICES": visible})


def test_an_ailing_gpu_is_flagged_as_dcgm_would(monkeypatch):
    ctx = ctx_on(monkeypatch, boxes.r535_ailing_h100(), "1")
    gpu = ctx.machine.gpus[1].health
    assert (gpu.ecc_volatile_uncorrected, gpu.ecc_aggregate_uncorrected, gpu.remapped_rows_pending) == (2, 7, True)
    assert gpu.throttle == ("power cap", "HW thermal")
    ecc, pages, throttle = check_ecc.run(ctx), check_retired_pages.run(ctx), check_throttle.run(ctx)
    assert ecc.status is Status.FAIL and "GPU 1" in ecc.summary and "nvidia-smi -r -i 1" in (ecc.remedy or "")
    assert pages.status is Status.FAIL and "pending until a reset" in pages.summary
    assert throttle.status is Status.WARN and "HW thermal" in throttle.summary


def test_the_healthy_gpu_beside_it_passes(monkeypatch):
    ctx = ctx_on(monkeypatch, boxes.r535_ailing_h100(), "0")
    assert [c.run(ctx).status for c in (check_ecc, check_retired_pages, check_throttle)] == [Status.PASS] * 3


def test_a_gpu_without_ecc_is_not_judged_on_it(monkeypatch):
    ctx = ctx_on(monkeypatch, boxes.r470_workstation(), "0")
    assert check_ecc.run(ctx).status is Status.SKIP and check_retired_pages.run(ctx).status is Status.SKIP
    assert check_throttle.run(ctx).status is Status.PASS


def test_check_lists_the_health_checks_in_the_gpu_group(monkeypatch):
    from click.testing import CliRunner

    from avatardoctor.cli import cli

    install(monkeypatch, boxes.r535_ailing_h100())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = CliRunner().invoke(cli, ["check", "--json"])
    import json

    found = {r["id"]: r["status"] for r in json.loads(result.output)["checks"]}
    assert (found["gpu.ecc"], found["gpu.retired_pages"], found["gpu.throttle"]) == ("fail", "fail", "warn")


def lines(*texts: str) -> list[tuple[float, str]]:
    return [(float(i), t) for i, t in enumerate(texts)]


def test_an_illegal_memory_access_is_a_gpu_fault_not_the_nccl_errors_after_it():
    log = lines(
        "[rank2]: RuntimeError: CUDA error: an illegal memory access was encountered",
        "[rank0]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp, unhandled cuda error",
    )
    failure = classify(log, 1, nproc=5)
    assert failure.cls == "gpu-fault" and failure.gpu == 2 and "CUDA_LAUNCH_BLOCKING=1" in (failure.remedy or "")


def test_xid_codes_quoted_in_the_log_are_named():
    for xid, words in (("79", "fell off the bus"), ("48", "double-bit ECC"), ("63", "pending")):
        failure = classify(lines(f"NVRM: Xid (PCI:0000:18:00): {xid}, pid=1234, name=python"), 1)
        assert failure.cls == "gpu-fault" and words in (failure.remedy or ""), xid
