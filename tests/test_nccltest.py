"""The live communication test through the real torchrun, gloo on 127.0.0.1 (NCCL needs GPUs)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the live test needs the [torch] extra; .ci/run installs it")

from avatardoctor.nccltest.launch import NcclTest, run_test  # noqa: E402

MISBEHAVE = str(Path(__file__).parent / "fixtures" / "nccl_workers" / "misbehave.py")
SIZES = (1024, 262144, 4194304)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_four_gloo_ranks_talk_and_are_measured():
    outcome = run_test(NcclTest("gloo", 4, master_port=free_port(), timeout_s=60, sizes=SIZES))
    assert outcome.ok, (outcome.summary, outcome.debug_lines)
    assert outcome.summary.startswith("4 ranks talked (gloo)")
    assert [r["bytes"] for r in outcome.allreduce] == list(SIZES) and len(outcome.sendrecv) == 3
    for row in outcome.allreduce:  # nccl-tests: busbw = algbw x 2(n-1)/n, per size
        assert row["busbw_gbs"] == pytest.approx(row["algbw_gbs"] * 1.5, abs=0.002)
        assert row["algbw_gbs"] == pytest.approx(row["bytes"] / (row["time_us"] * 1e-6) / 1e9, rel=0.01, abs=0.002)
    assert all(r["stage"] == "done" for r in outcome.ranks.values()) and len(outcome.ranks) == 4


def test_a_held_port_is_named():
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        outcome = run_test(NcclTest("gloo", 2, master_port=port, timeout_s=20, budget_s=20, sizes=(1024,)))
    assert not outcome.ok and outcome.failure == "port-in-use"
    assert f"master port {port} is held" in outcome.summary and "--master-port" in outcome.remedy


def test_a_rank_that_exits_early_is_classified_fast():
    test = NcclTest("gloo", 3, master_port=free_port(), timeout_s=60, entry=[MISBEHAVE, "--mode", "early-exit"])
    outcome = run_test(test)
    assert not outcome.ok and outcome.failure == "rank-crashed"
    assert outcome.seconds < 30  # torchrun tears the group down: no waiting for the timeout


def test_a_hang_is_an_answer_within_the_deadline():
    test = NcclTest("gloo", 2, master_port=free_port(), timeout_s=3, budget_s=2, entry=[MISBEHAVE, "--mode", "hang"])
    outcome = run_test(test)
    assert not outcome.ok and outcome.failure == "timeout"
    assert "rank 0 at allreduce" in outcome.summary and outcome.seconds < 20


def test_a_node_that_never_joins():
    outcome = run_test(
        NcclTest("gloo", 1, nnodes=2, node_rank=0, master_port=free_port(), timeout_s=4, budget_s=2, sizes=(1024,))
    )
    assert not outcome.ok and outcome.failure == "rank-missing"
    assert "never joined" in outcome.summary and "--master-addr" in outcome.remedy


def test_two_nodes_on_loopback():
    port, results = free_port(), {}

    def node(rank):
        results[rank] = run_test(
            NcclTest("gloo", 2, nnodes=2, node_rank=rank, master_port=port, timeout_s=60, sizes=SIZES)
        )

    threads = [threading.Thread(target=node, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results[0].ok and results[1].ok, (results[0].summary, results[1].summary)
    assert results[0].summary.startswith("4 ranks talked") and results[0].allreduce  # rank 0 lives on node 0
    assert sorted(results[1].ranks) == [2, 3]


def test_nccl_command_and_check_deep_json():
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "nccl", "--nproc", "2", "--master-port", str(free_port()), "--json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    doc = json.loads(r.stdout)
    live = doc["checks"][0]
    assert r.returncode == 0 and live["id"] == "nccl.live" and live["status"] == "pass"
    assert live["data"]["backend"] == "gloo" and live["data"]["busbw_gbs"] > 0
    deep = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "check", "--deep", "--json", "--master-port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=180,
    )
    checks = {c["id"]: c for c in json.loads(deep.stdout)["checks"]}
    assert checks["nccl.live"]["status"] == "pass", checks["nccl.live"]["summary"]


def test_the_figure_with_p2p_disabled_is_shown_beside_the_normal_one():
    from dataclasses import replace

    from conftest import make_ctx

    from avatardoctor.checks import live
    from avatardoctor.checks.base import Status

    normal = run_test(NcclTest("gloo", 2, master_port=free_port(), timeout_s=60, sizes=SIZES))
    forced = run_test(
        NcclTest("gloo", 2, master_port=free_port(), timeout_s=60, sizes=SIZES, env={"NCCL_P2P_DISABLE": "1"})
    )
    ctx = replace(make_ctx("5x4090-pcie"), nccl=normal, nccl_backend="nccl", nccl_without_p2p=forced)
    r = live.check_live.run(ctx)
    assert r.status in (Status.PASS, Status.WARN)
    assert any(d.startswith("with NCCL_P2P_DISABLE=1: all_reduce busbw") for d in r.details)
    assert r.data["busbw_gbs_p2p_disabled"] == forced.busbw_gbs


def test_busbw_far_below_the_links_warns():
    from dataclasses import replace

    from conftest import make_ctx

    from avatardoctor.checks import live
    from avatardoctor.checks.base import Status

    slow = run_test(
        NcclTest("gloo", 2, master_port=free_port(), timeout_s=60, sizes=SIZES)
    )  # CPU gloo: far below NVLink
    r = live.check_live.run(replace(make_ctx("5xH800-healthy"), nccl=slow, nccl_backend="nccl"))
    assert r.status is Status.WARN and "the links allow" in r.summary
    assert live.expected_busbw(make_ctx("5xH800-healthy")) == 8 * live.NVLINK_GBS
