"""Where the demo's ranks compute, for any number of GPUs (a fake device count: the choice is a function
of it). With fewer GPUs than ranks the demo must still run, and never ask NCCL for two ranks on one GPU,
which NCCL refuses ("Duplicate GPU detected")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch", reason="the demo entry imports torch: the [torch] extra; .ci/run installs it")

from avatardoctor.demo.workload import placement  # noqa: E402


def test_one_gpu_for_five_ranks_puts_every_rank_on_the_cpu_with_gloo():
    chosen = [placement(rank, 5, cuda_devices=1) for rank in range(5)]
    assert {(p.device.type, p.backend) for p in chosen} == {("cpu", "gloo")}
    assert chosen[0].note == "5 ranks on the CPU with gloo (1 GPU for 5 ranks)"


def test_a_gpu_per_rank_gives_each_rank_its_own_gpu_with_nccl():
    chosen = [placement(rank, 5, cuda_devices=8) for rank in range(5)]
    assert [str(p.device) for p in chosen] == [f"cuda:{rank}" for rank in range(5)]
    assert {p.backend for p in chosen} == {"nccl"}
    assert chosen[0].note == "5 ranks on GPUs 0-4 with nccl"
    assert placement(0, 1, cuda_devices=1).note == "1 rank on GPU 0 with nccl"


def test_no_cuda_says_so():
    assert placement(0, 5, cuda_devices=0).note == "5 ranks on the CPU with gloo (no CUDA)"


@given(ranks=st.integers(1, 16), gpus=st.integers(0, 16))
def test_nccl_only_ever_with_a_gpu_of_its_own_for_every_rank(ranks, gpus):
    chosen = [placement(rank, ranks, gpus) for rank in range(ranks)]
    backends = {p.backend for p in chosen}
    assert len(backends) == 1  # one process group, one backend
    if backends == {"nccl"}:
        devices = [p.device.index for p in chosen]
        assert len(set(devices)) == ranks and max(devices) < gpus
    else:
        assert {p.device.type for p in chosen} == {"cpu"}
    assert (backends == {"nccl"}) == (gpus >= ranks)


@pytest.mark.parametrize("nproc", [2, 3, 5, 8])
def test_the_demo_plan_launches_the_ranks_asked_for(tmp_path, nproc):
    """`demo --nproc N`: N ranks (N - 1 DiT ranks and the VAE rank), not always upstream's five."""
    from avatardoctor.runner.auto import demo_plan

    plan = demo_plan(tmp_path, nproc)
    assert plan.nproc == nproc
    assert plan.argv[plan.argv.index("--num_gpus_dit") + 1] == str(nproc - 1)


# ---- the prediction keyed by the device each rank is measured on ---------------------------------------------


def _tiny_config(nproc: int, ckpt):
    from avatardoctor.config import resolve_config

    return resolve_config(nproc, "tpp", num_gpus_dit=nproc - 1, ckpt_dir=str(ckpt), size="384*256", num_clip=2)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from avatardoctor.ckpt.skeleton import write_skeleton

    return write_skeleton(tmp_path_factory.mktemp("demo") / "ckpt", tiny=True)


@pytest.mark.parametrize(
    "cuda_devices, cuda_visible, keys",
    [
        (5, "3,0,1,2,4", [3, 0, 1, 2, 4]),  # CUDA device k is the k-th GPU CUDA_VISIBLE_DEVICES leaves
        (5, None, [0, 1, 2, 3, 4]),
        (4, "3,0,1,2", [f"cpu{r}" for r in range(5)]),  # fewer GPUs than ranks: all on the CPU
        (0, None, [f"cpu{r}" for r in range(5)]),  # no CUDA (the CPU build on a GPU box too)
        (5, "4,3", [f"cpu{r}" for r in range(5)]),  # NVML does not show their GPUs: the sampler records RSS
    ],
)
def test_each_rank_is_keyed_by_the_gpu_nvml_numbers_for_its_cuda_device(cuda_devices, cuda_visible, keys):
    from conftest import machine

    from avatardoctor.demo.memory import device_key, rank_gpus
    from avatardoctor.visible import visible_gpus

    box = machine("5xH800-healthy")
    gpus = rank_gpus(5, cuda_devices, visible_gpus(cuda_visible, box.gpus))
    assert [device_key(rank, gpus) for rank in range(5)] == keys
    on_cuda = [placement(rank, 5, cuda_devices).device.type == "cuda" for rank in range(5)]
    assert all(on_cuda) or all(isinstance(key, str) for key in keys)  # a GPU's key only for a rank on CUDA


def test_the_demo_predicts_each_rank_beside_its_own_gpu_on_a_cuda_box(monkeypatch, tiny_ckpt):
    """This box seen as an HGX H100 (the fake NVML) whose torch sees CUDA_VISIBLE_DEVICES' five GPUs."""
    from fake_pynvml import boxes, install

    from avatardoctor.demo import memory

    install(monkeypatch, boxes.r535_hgx_h100())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,6,5,4,0")
    monkeypatch.setattr(memory, "cuda_device_count", lambda: 5)  # torch's view of that variable on such a box
    doc = memory.demo_prediction(_tiny_config(5, tiny_ckpt), tiny_ckpt)
    assert doc is not None
    assert [g["index"] for g in doc["gpus"]] == [7, 6, 5, 4, 0]
    assert {g["name"] for g in doc["gpus"]} == {"NVIDIA H100 80GB HBM3"}
    assert doc["notes"] == [memory.GPU_NOTE] and doc["explanation"].startswith("GPU ")
    assert all(g["phase"] == "load" for g in doc["gpus"])  # the root unshard is each rank's peak, as on the CPU


def test_on_a_box_without_cuda_each_rank_is_its_cpu_device(tiny_ckpt):
    from avatardoctor.demo import memory

    if memory.cuda_device_count():
        pytest.skip("this box has CUDA: the GPU keying is tested above")
    doc = memory.demo_prediction(_tiny_config(3, tiny_ckpt), tiny_ckpt)
    assert doc is not None and [g["index"] for g in doc["gpus"]] == ["cpu0", "cpu1", "cpu2"]
    assert doc["notes"] == [memory.CPU_NOTE] and doc["explanation"].startswith("cpu")
