"""Topology, NCCL environment, master port and host checks, on recorded machines and real sockets."""

from __future__ import annotations

import dataclasses
import os
import socket

import psutil
import pytest
from conftest import machine, make_ctx

from avatardoctor.checks import host, nccl, ports, topology
from avatardoctor.checks.base import Status
from avatardoctor.machine.model import Pcie
from avatardoctor.machine.ports import bind_error

# ---- topology ---------------------------------------------------------------------------------


def test_p2p_matrix_matches_nvidia_smi_layout():
    r = topology.check_p2p.run(make_ctx("5xH800-healthy"))
    assert r.status is Status.PASS and "NV8" in r.summary
    assert r.details[0].split() == ["GPU0", "GPU1", "GPU2", "GPU3", "GPU4"]
    assert r.details[1].split() == ["GPU0", "X", "NV8", "NV8", "NV8", "NV8"]


def test_p2p_unsupported_on_geforce_pcie_warns_without_recommending_the_disable():
    r = topology.check_p2p.run(make_ctx("5x4090-pcie"))
    assert r.status is Status.WARN
    assert "no P2P on 4 of 4 rank-to-rank links (chipset not supported)" in r.summary
    assert "NCCL_P2P_DISABLE=1 is not needed" in r.remedy
    assert r.data["without_p2p"] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    assert r.details[2].split() == ["GPU1", "NODE", "X", "NODE", "SYS", "SYS"]


def test_p2p_reported_on_geforce_is_the_case_for_nccl_p2p_disable():
    m = machine("5x4090-pcie")
    m = dataclasses.replace(m, pairs=tuple(dataclasses.replace(p, p2p_read="ok", p2p_write="ok") for p in m.pairs))
    r = topology.check_p2p.run(make_ctx(m))
    assert r.status is Status.WARN and "NCCL_P2P_DISABLE=1" in r.remedy
    assert r.data["geforce_p2p"] == [[0, 1], [1, 2], [2, 3], [3, 4]]


def test_p2p_follows_the_ranks_gpus_in_cuda_order():
    r = topology.check_p2p.run(make_ctx("5xH800-healthy", env={"CUDA_VISIBLE_DEVICES": "4,3,2,1,0"}))
    assert "rank 0 -> 1: GPU 4 -> GPU 3 over NV8, P2P ok" in r.details


def test_p2p_skips_single_gpu():
    assert topology.check_p2p.run(make_ctx("5xH800-healthy", mode="single")).status is Status.SKIP


def test_pcie_narrow_link_warns():
    r = topology.check_pcie.run(make_ctx("4xA100-docker", mode="tpp"))
    assert r.status is Status.WARN and r.data["narrow"] == [1]
    assert "x8 of x16" in r.summary and "slot" in r.remedy


def test_pcie_idle_generation_drop_is_not_a_problem():
    m = machine("5xH800-healthy")
    m = dataclasses.replace(m, gpus=tuple(dataclasses.replace(g, pcie=Pcie(1, 5, 16, 16)) for g in m.gpus))
    r = topology.check_pcie.run(make_ctx(m))
    assert r.status is Status.PASS and any("normal while a GPU idles" in d for d in r.details)


# ---- NCCL environment ------------------------------------------------------------------------


def nccl_env(machine_name, env, **config):
    return nccl.check_nccl_env.run(make_ctx(machine_name, env=env, **config))


def test_nccl_clean_environment_passes_and_corrects_the_seeds_heartbeat_claim():
    r = nccl_env("5xH800-healthy", {})
    assert r.status is Status.PASS
    assert any("480 s" in d and "30 s" in d for d in r.details)


def test_nccl_p2p_disable_where_p2p_works_warns():
    r = nccl_env("5xH800-healthy", {"NCCL_P2P_DISABLE": "1"})
    assert r.status is Status.WARN and "unset NCCL_P2P_DISABLE" in r.remedy


def test_nccl_p2p_disable_where_p2p_is_missing_is_fine():
    assert nccl_env("5x4090-pcie", {"NCCL_P2P_DISABLE": "1"}).status is Status.PASS


def test_nccl_shm_and_p2p_both_off_falls_back_to_sockets():
    r = nccl_env("5x4090-pcie", {"NCCL_SHM_DISABLE": "1"})
    assert r.status is Status.WARN and "sockets" in r.summary


def test_nccl_socket_ifname_must_match_an_interface():
    real = sorted(psutil.net_if_addrs())[0]
    assert nccl_env("5xH800-healthy", {"NCCL_SOCKET_IFNAME": real}).status is Status.PASS
    bad = nccl_env("5xH800-healthy", {"NCCL_SOCKET_IFNAME": "ib-nonexistent9"})
    assert bad.status is Status.FAIL and "no socket interface found" in bad.summary
    assert real in bad.remedy
    everything = ",".join(psutil.net_if_addrs())
    assert nccl_env("5xH800-healthy", {"NCCL_SOCKET_IFNAME": "^" + everything}).status is Status.FAIL


@pytest.mark.parametrize(
    "value, status",
    [("30", Status.WARN), ("600", Status.PASS), ("86400", Status.PASS), ("soon", Status.WARN)],
)
def test_nccl_heartbeat_timeout(value, status):
    assert nccl_env("5xH800-healthy", {"TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": value}).status is status


def test_nccl_async_error_handling_off_without_blocking_wait_warns():
    assert nccl_env("5xH800-healthy", {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}).status is Status.WARN
    gradio = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0", "TORCH_NCCL_BLOCKING_WAIT": "1"}
    assert nccl_env("5xH800-healthy", gradio).status is Status.PASS


@pytest.mark.parametrize(
    "value, status", [("WARN", Status.PASS), ("INFO", Status.PASS), ("TRACE", Status.WARN), ("LOUD", Status.WARN)]
)
def test_nccl_debug_levels(value, status):
    assert nccl_env("5xH800-healthy", {"NCCL_DEBUG": value}).status is status


def test_nccl_seed_article_recipe_on_a_healthy_h800_box():
    """The seeds tell everyone to export NCCL_P2P_DISABLE=1 NCCL_IB_DISABLE=1: wrong on NVLink."""
    r = nccl_env("5xH800-healthy", {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"})
    assert r.status is Status.WARN
    assert r.data["variables"] == {"NCCL_IB_DISABLE": "1", "NCCL_P2P_DISABLE": "1"}
    assert any("harmless" in d for d in r.details)


# ---- master port -----------------------------------------------------------------------------


@pytest.fixture
def listener():
    """A real listening socket on 127.0.0.1, as another job's torchrun store would hold."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_master_port_held_by_a_listening_socket(listener):
    r = ports.check_master_port.run(make_ctx("5xH800-healthy", master_port=listener))
    assert r.status is Status.FAIL
    assert f"held by PID {os.getpid()}" in r.summary
    assert r.data["holders"][0]["pid"] == os.getpid()
    suggested = r.data["suggested_port"]
    assert suggested > listener and r.remedy == f"--master-port {suggested}"
    assert bind_error(suggested) is None


def test_master_port_free_after_the_socket_closes(listener):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    r = ports.check_master_port.run(make_ctx("5xH800-healthy", master_port=port))
    assert r.status is Status.PASS and r.data == {"port": port, "free": True}


def test_master_port_defaults_to_the_upstream_scripts():
    tpp = make_ctx("5xH800-healthy")
    single = make_ctx("5xH800-healthy", mode="single")
    assert (tpp.config.master_port, single.config.master_port) == (29102, 29101)
    assert "infinite_inference_multi_gpu.sh" in ports.check_master_port.run(tpp).details[0]


def test_master_port_out_of_range():
    r = ports.check_master_port.run(make_ctx("5xH800-healthy", master_port=70000))
    assert r.status is Status.FAIL and "not a TCP port" in r.summary


@pytest.mark.skipif(os.geteuid() == 0, reason="root may bind privileged ports")
def test_master_port_privileged():
    assert "needs root" in ports.check_master_port.run(make_ctx("5xH800-healthy", master_port=80)).summary


# ---- host ------------------------------------------------------------------------------------


T5_BF16, WAV2VEC2_FP32 = 11361820672, 315472545 * 4


def test_ram_at_the_load_every_process_builds_t5_in_fp32():
    """t5.py:441-445 builds the encoder in fp32 on the CPU, then torch.load reads the bf16 state dict: about
    21 GiB per process, for every TPP rank starting together; wav2vec2 loads on the CPU in fp32."""
    r = host.check_ram.run(make_ctx("5xH800-healthy"))
    assert r.status is Status.PASS and r.data["estimate"] is True and r.data["binding"] == "load"
    assert r.data["need_bytes"] == 5 * (2 * T5_BF16 + WAV2VEC2_FP32)
    single = host.check_ram.run(make_ctx("5xH800-healthy", mode="single"))
    assert single.data["need_bytes"] == 2 * T5_BF16 + WAV2VEC2_FP32  # --offload_model keeps the DiT on the GPU
    online = host.check_ram.run(make_ctx("5xH800-healthy", mode="single", enable_online_decode=True))
    assert online.data["need_bytes"] == 2 * T5_BF16 + WAV2VEC2_FP32 + 32591511218  # ... but parks it with online decode


def test_ram_at_the_save_the_whole_video_in_fp32_grows_with_the_audio():
    """tpp.py:1130-1136 keeps every decoded frame in fp32 on the CPU; save_video copies it (utils.py:104-111)."""
    m = machine("5xH800-healthy")
    m = dataclasses.replace(
        m, host=dataclasses.replace(m.host, ram_total_bytes=512 * 2**30, ram_available_bytes=500 * 2**30)
    )
    hour = host.check_ram.run(make_ctx(m, mode="single", audio_seconds=3600))
    frames = 1875 * 48  # an hour: 179,999 wav2vec2 frames -> 107,999 features at 30/s -> int(1874.98) + 1 clips
    assert hour.data["binding"] == "save" and hour.data["save_bytes"] == frames * 384 * 704 * 12 * 3.25
    assert hour.status is Status.FAIL and "the save (the whole video in fp32)" in hour.summary
    assert hour.remedy.startswith("shorter audio per run")
    minute = host.check_ram.run(make_ctx(m, mode="single", audio_seconds=60))
    assert minute.status is Status.PASS and minute.data["binding"] == "load"
    assert any(d.startswith("save: 1,536 frames at 704x384") for d in minute.details)
    unknown = host.check_ram.run(make_ctx("5xH800-healthy", mode="single"))
    assert unknown.data["save_bytes"] is None and any("unknown without --audio" in d for d in unknown.details)


def test_ram_too_small_and_too_busy():
    m = machine("5x4090-pcie")
    tiny = dataclasses.replace(
        m, host=dataclasses.replace(m.host, ram_total_bytes=32 * 2**30, ram_available_bytes=30 * 2**30)
    )
    assert host.check_ram.run(make_ctx(tiny)).status is Status.FAIL
    busy = dataclasses.replace(m, host=dataclasses.replace(m.host, ram_available_bytes=40 * 2**30))
    r = host.check_ram.run(make_ctx(busy))
    assert r.status is Status.WARN and "swap" in r.summary


def test_ram_and_shm_skip_for_catalogue_boxes():
    ctx = make_ctx("5x4090")
    assert host.check_ram.run(ctx).status is Status.SKIP
    assert host.check_shm.run(ctx).status is Status.SKIP


def test_shm_docker_default_fails_when_nccl_needs_it():
    m = machine("5x4090-pcie")
    docker = dataclasses.replace(
        m, host=dataclasses.replace(m.host, shm_total_bytes=64 * 2**20, shm_free_bytes=64 * 2**20)
    )
    r = host.check_shm.run(make_ctx(docker))
    assert r.status is Status.FAIL and "--shm-size" in r.remedy and r.data["shm_transport"] is True


def test_shm_small_with_nvlink_warns_and_single_gpu_passes():
    r = host.check_shm.run(make_ctx("4xA100-docker", mode="tpp"))
    assert r.status is Status.WARN and r.data["shm_transport"] is False
    assert host.check_shm.run(make_ctx("4xA100-docker")).status is Status.PASS  # 4 GPUs -> single


def test_disk_reports_the_outputs_filesystem(tmp_path):
    r = host.check_disk.run(make_ctx("5xH800-healthy", liveavatar=tmp_path / "LiveAvatar" / "not-yet"))
    assert r.data["path"].endswith("not-yet") and r.data["free_bytes"] > 0
    assert r.status in (Status.PASS, Status.WARN, Status.FAIL)
    assert (r.status is Status.PASS) == (r.data["free_bytes"] >= host.DISK_COMFORT_BYTES)
