"""GPU checks against recorded machines: healthy, busy, no NVML, and CUDA_VISIBLE_DEVICES cases."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import machine, make_ctx

from avatardoctor.checks import gpu
from avatardoctor.checks.base import Status
from avatardoctor.visible import visible_gpus


def run(check, *args, **kwargs):
    return check.run(make_ctx(*args, **kwargs))


def test_driver_pass_fail_skip():
    ok = run(gpu.check_driver, "5xH800-healthy")
    assert ok.status is Status.PASS and "550.127.08" in ok.summary and "12.4" in ok.summary
    none = run(gpu.check_driver, "no-nvml")
    assert none.status is Status.FAIL and "libnvidia-ml.so.1" in none.summary
    assert "--gpus all" in none.remedy and "--machine" in none.remedy
    assert run(gpu.check_driver, "5x4090").status is Status.SKIP


def test_driver_notes_nvml_v1_reserved_memory():
    r = run(gpu.check_driver, "4xA100-docker")
    assert r.data["memory_info_version"] == 1
    assert any("v1" in d and "reserved" in d for d in r.details)


def test_every_gpu_check_skips_without_nvml():
    ctx = make_ctx("no-nvml")
    for check in gpu.CHECKS[1:]:
        r = check.run(ctx)
        assert r.status is Status.SKIP, check.id


def test_inventory_lists_each_gpu():
    r = run(gpu.check_inventory, "5xH800-healthy")
    assert r.status is Status.PASS
    assert r.summary == "5 x NVIDIA H800 (79.65 GiB each)"
    assert len([d for d in r.details if d.startswith("GPU ")]) == 5
    assert "compute capability 9.0" in r.details[0]


def test_inventory_flags_persistence_mode_off():
    m = machine("5xH800-healthy")
    m = dataclasses.replace(m, gpus=(dataclasses.replace(m.gpus[0], persistence_mode=False), *m.gpus[1:]))
    r = gpu.check_inventory.run(make_ctx(m))
    assert any("persistence mode is off on GPU 0" in d for d in r.details)


def test_visible_unset_uses_first_gpus():
    r = run(gpu.check_visible, "5xH800-healthy")
    assert r.status is Status.PASS and r.data["visible"] == [0, 1, 2, 3, 4]
    assert any("rank 4 -> GPU 4" in d for d in r.details)


def test_visible_too_few_for_tpp_fails_with_idle_gpu_remedy():
    r = run(gpu.check_visible, "5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": "0,1,2"}, mode="tpp")
    assert r.status is Status.FAIL
    assert "tpp needs 5 GPUs but CUDA will show 3" in r.summary
    assert r.remedy == "export CUDA_VISIBLE_DEVICES=0,1,2,3,4"


def test_visible_tpp_on_a_four_gpu_box_is_the_seed_layout():
    from avatardoctor.checks.liveavatar import SEED_NOTE, SEED_REMEDY

    r = run(gpu.check_visible, "4x4090", mode="tpp")
    assert r.status is Status.FAIL and "invalid device ordinal" in r.summary
    assert SEED_NOTE in r.details and "run_4gpu_tpp.sh" in SEED_NOTE
    assert r.remedy == SEED_REMEDY


def test_visible_default_mode_follows_the_visible_count():
    ctx = make_ctx("5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": "3"})
    assert ctx.config.mode == "single" and "1 visible GPU" in ctx.config.mode_reason
    r = gpu.check_visible.run(ctx)
    assert r.status is Status.PASS and r.data["visible"] == [3]
    assert any("rank 0 -> GPU 3" in d for d in r.details)


def test_visible_bad_entry_drops_the_rest_as_cuda_does():
    r = run(gpu.check_visible, "5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": "0,1,7,2,3"}, mode="tpp")
    assert r.status is Status.FAIL
    assert r.data["visible"] == [0, 1]
    assert "there is no GPU 7 (5 found)" in r.data["problem"]
    assert any("ignores the entries after it: 2, 3" in d for d in r.details)


def test_visible_bad_entry_warns_when_enough_gpus_remain():
    r = run(gpu.check_visible, "5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": "2,2"}, mode="single")
    assert r.status is Status.WARN and "listed twice" in r.summary


def test_visible_accepts_uuid_prefixes_and_rejects_mig():
    m = machine("5xH800-healthy")
    vis = visible_gpus(f"{m.gpus[4].uuid[:12]},{m.gpus[0].uuid}", m.gpus)
    assert [g.index for g in vis.gpus] == [4, 0] and vis.problem is None
    mig = visible_gpus("MIG-2f3a", m.gpus)
    assert mig.gpus == () and "MIG instance" in mig.problem
    assert visible_gpus("", m.gpus).gpus == ()


def test_visible_empty_string_hides_every_gpu():
    r = run(gpu.check_visible, "5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.status is Status.FAIL and "CUDA will show 0" in r.summary


def test_visible_mixed_models_need_pci_bus_order():
    h800, l40s = machine("5xH800-healthy"), machine("1xL40S")
    mixed = dataclasses.replace(h800, gpus=(*h800.gpus, dataclasses.replace(l40s.gpus[0], index=5)), pairs=())
    r = gpu.check_visible.run(make_ctx(mixed, mode="single"))
    assert r.status is Status.WARN and "CUDA_DEVICE_ORDER=PCI_BUS_ID" in r.remedy
    fixed = gpu.check_visible.run(make_ctx(mixed, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, mode="single"))
    assert fixed.status is Status.PASS


def test_vram_fails_below_the_bf16_load_and_leaves_the_rest_to_fit_peak():
    r = run(gpu.check_vram, "5x4090-pcie")
    assert r.status is Status.FAIL  # docs/checks.md: the seeds' RTX 4090 case
    assert r.details[4] == (
        "GPU 4 (VAE rank 4): 23.55 GiB free of 23.99 GiB, 0.42 GiB driver-reserved, the load alone needs 31.58 GiB"
    )


def test_vram_names_the_tightest_gpu():
    r = run(gpu.check_vram, "5xH800-gpu2-busy")
    assert r.status is Status.PASS and "least free 49.81 GiB (GPU 2)" in r.summary


def test_processes_name_the_foreign_process():
    r = run(gpu.check_processes, "5xH800-gpu2-busy")
    assert r.status is Status.WARN
    assert r.data["holders"] == [{"gpu": 2, "pid": 4242, "name": "python3", "used_bytes": 30016 * 2**20}]
    assert "PID 4242 python3, 30,016 MiB (compute)" in r.details[0]
    assert "kill 4242" in r.remedy


def test_processes_off_the_ranks_gpus_do_not_warn():
    r = run(gpu.check_processes, "5xH800-gpu2-busy", env={"CUDA_VISIBLE_DEVICES": "0"})
    assert r.status is Status.PASS
    assert "not used by the ranks" in r.details[0]


def test_processes_single_mode_suggests_an_idle_gpu():
    r = run(gpu.check_processes, "5xH800-gpu2-busy", env={"CUDA_VISIBLE_DEVICES": "2"})
    assert r.status is Status.WARN and "CUDA_VISIBLE_DEVICES=0" in r.remedy


def test_processes_unlisted_memory_is_reported():
    m = machine("5xH800-healthy")
    hidden = dataclasses.replace(m.gpus[1], used_bytes=12 * 2**30, free_bytes=m.gpus[1].free_bytes - 12 * 2**30)
    m = dataclasses.replace(m, gpus=(m.gpus[0], hidden, *m.gpus[2:]))
    r = gpu.check_processes.run(make_ctx(m))
    assert r.status is Status.WARN and r.data["holders"][0]["pid"] is None
    assert any("processes NVML does not list" in d for d in r.details)


@pytest.mark.parametrize("machine", ["4xA100-80GB", "4xA100-docker"])
def test_fp8_on_a100_fails(machine):
    result = run(gpu.check_fp8, machine, mode="single", fp8=True)
    assert result.group == "GPUs"
    assert result.status is Status.FAIL
    assert "NVIDIA A100-SXM4-80GB (cc 8.0)" in result.summary
    assert "--no-fp8" in result.remedy and "bf16" in result.remedy


def test_fp8_on_h800_passes_for_every_rank():
    result = run(gpu.check_fp8, "5xH800-healthy", fp8=True)
    assert result.status is Status.PASS and "9.0" in result.summary
    assert [r["rank"] for r in result.data["ranks"]] == [0, 1, 2, 3, 4]  # the VAE rank converts its DiT copy too


def test_fp8_fails_when_only_the_vae_ranks_gpu_is_too_old():
    """The entry converts the DiT to fp8 on every rank (entry:484-494), the VAE rank's unused copy included."""
    m = machine("5xH800-healthy")
    a100 = machine("4xA100-80GB").gpus[0]
    vae_gpu = dataclasses.replace(m.gpus[4], name=a100.name, compute_capability=a100.compute_capability)
    m = dataclasses.replace(m, gpus=(*m.gpus[:4], vae_gpu))
    result = gpu.check_fp8.run(make_ctx(m, fp8=True))
    assert result.status is Status.FAIL and "GPU 4: NVIDIA A100-SXM4-80GB (cc 8.0)" in result.summary


def test_fp8_off_or_no_gpu_facts_skips():
    assert run(gpu.check_fp8, "4xA100-80GB", fp8=False).status is Status.SKIP
    assert run(gpu.check_fp8, "no-nvml", fp8=True).status is Status.SKIP


@pytest.mark.parametrize("name", ["5xH800-healthy", "5x4090-pcie", "4xA100-docker", "no-nvml", "5x4090"])
def test_no_gpu_check_crashes(name):
    ctx = make_ctx(name)
    for check in gpu.CHECKS:
        assert not check.run(ctx).data.get("crashed"), check.id
