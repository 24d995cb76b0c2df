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
