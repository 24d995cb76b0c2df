"""The two entries the runner launches in tests and demos, each through the real torchrun, gloo on
127.0.0.1: the built-in demo workload (real compute, real send/recv) and the fake Live Avatar entry
(Live Avatar's console and failures, on demand)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import make_ctx

from avatardoctor.checks.base import Status
from avatardoctor.checks.liveavatar import checkout as checkout_check

pytest.importorskip("torch", reason="the entries run under torchrun: the [torch] extra; .ci/run installs it")

FAKE_CHECKOUT = Path(__file__).parent / "fixtures" / "fake_liveavatar"
FAKE_ENTRY = ["minimal_inference/s2v_streaming_interact.py"]
DEMO_ENTRY = ["-m", "avatardoctor.demo.workload"]
BAR = "100%|██████████| 4/4 ["
HOSTILE_PROMPT = "A host says \"hi\" $(touch /tmp/pwned); `rm -rf ~` 'quoted' & <b>waves</b> | tee x\n✓ ünïcode"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def planned_argv(nproc: int, ckpt_dir: Path | str, prompt: str = "A host waves") -> list[str]:
    """What planner.entry_argv gives a TPP launch with nproc - 1 DiT ranks (or a single-process
    one), two clips of 48 frames. (Written out: avatardoctor.planner cannot be imported first, it
    and avatardoctor.checks import each other.)"""
    tpp = nproc > 1
    return [
        "--ulysses_size",
        "1",
        "--task",
        "s2v-14B",
        "--size",
        "720*400" if tpp else "704*384",
        "--base_seed",
        "420",
        "--training_config",
        "liveavatar/configs/s2v_causal_sft.yaml",
        "--num_clip",
        "2",
        "--offload_model",
        str(not tpp),
        "--convert_model_dtype",
        "--infer_frames",
        "48",
        "--sample_steps",
        "4",
        "--sample_guide_scale",
        "0",
        "--sample_solver",
        "euler",
        "--num_gpus_dit",
        str(max(nproc - 1, 1)),
        "--ckpt_dir",
        str(ckpt_dir),
        "--load_lora",
        "--lora_path_dmd",
        "Quark-Vision/Live-Avatar",
        "--enable_vae_parallel" if tpp else "--single_gpu",
        "--fp8",
        "--prompt",
        prompt,
    ]


@dataclass
class Launch:
    code: int | None  # None: still running at the deadline (then killed)
    output: str  # stdout and stderr together, as the runner records them
    peak_rss: int  # the largest resident set of any rank, sampled every 50 ms


def torchrun(
    nproc: int,
    entry: list[str],
    argv: list[str],
    cwd: Path,
    env: dict | None = None,
    deadline_s: float = 600,
    settled: Callable[[str], bool] | None = None,
) -> Launch:
    """Launch as the runner does, output to a file; stopped 1.5 s after the output first satisfies
    `settled`, or at the deadline (only against a hang: a busy machine may take minutes)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        *entry,
        *argv,
    ]
    log = cwd / "torchrun.log"
    full_env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=full_env)
    agent, ranks, peak, code, end = psutil.Process(proc.pid), set(), 0, None, time.monotonic() + deadline_s
    try:
        while time.monotonic() < end and (code := proc.poll()) is None:
            try:
                ranks.update(agent.children(recursive=True))
                peak = max([peak] + [r.memory_info().rss for r in ranks if r.is_running()])
            except psutil.Error:
                pass  # a rank that just exited
            if settled and settled(log.read_text(errors="replace")):
                settled, end = None, time.monotonic() + 1.5
            time.sleep(0.05)
    finally:
        stop(proc, ranks)
    return Launch(code, log.read_text(errors="replace"), peak)


def stop(proc: subprocess.Popen, ranks: set[psutil.Process]) -> None:
    """torchrun puts each rank in a session of its own, out of reach of killpg: SIGTERM torchrun,
    which ends its ranks, then SIGKILL whatever is left, rank by rank."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for rank in ranks:
        try:
            rank.kill()  # psutil checks the pid still names the same process
        except psutil.Error:
            pass


def assert_in_order(text: str, expected: list[str]) -> None:
    at = 0
    for line in expected:
        found = text.find(line, at)
        assert found >= 0, f"{line!r} missing after position {at}:\n{text}"
        at = found + len(line)


DECODED = re.compile(
    r"demo: rank (\d+) decoded (\d+) frames from (\d+) blocks, latent checksum (\S+); "
    r"wrote frame statistics \(not a video\) to (.+)"
)


# --------------------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    from avatardoctor.ckpt.skeleton import write_skeleton

    return write_skeleton(tmp_path_factory.mktemp("ckpt") / "Wan2.2-S2V-14B", tiny=True)


@pytest.fixture(scope="module")
def tpp_demo(tmp_path_factory, tiny_ckpt) -> tuple[Launch, Path]:
    cwd = tmp_path_factory.mktemp("tpp")
    return torchrun(5, DEMO_ENTRY, planned_argv(5, tiny_ckpt), cwd), cwd


def test_demo_tpp_prints_live_avatars_lines_in_order(tpp_demo, tiny_ckpt):
    launch, _ = tpp_demo
    assert launch.code == 0, launch.output
    out = launch.output
    assert_in_order(
        out,
        [
            "COMPILE: False",
            "world_size: 5",
            "Using TPP distributed inference.",
            f"INFO: Creating WanModel from {tiny_ckpt}",
            f"demo: loaded 1260 DiT tensors (26040 bytes) from {tiny_ckpt} (4 file(s))",
            "Use LoRA: lora path: Quark-Vision/Live-Avatar, lora rank: 128 , lora alpha:  64.0",
            "LoRA merged successfully.",
            "complete prepare conditional inputs",
            BAR,
            "denoising video done",
            "rank 4 done",
            "INFO: Finished.",
        ],
    )
    from avatardoctor.demo.workload import ROOT_UNSHARD_BYTES, UNSHARD_HOLD_S

    unshard = f"{ROOT_UNSHARD_BYTES / 2**20:.0f} MiB gathered from 5 rank(s), held {UNSHARD_HOLD_S:.0f} s and freed; "
    assert f"demo: root parameter unsharded: {unshard}" in out
    assert "the demo's DiT keeps 98736 values" in out
    assert out.count(BAR) == 5 * 2 * 4  # every rank draws a bar per block: 2 clips of 4 blocks
    assert out.count("LoRA merged successfully.") == 5


def test_demo_vae_rank_decodes_every_block_and_writes_statistics_not_a_video(tpp_demo):
    launch, cwd = tpp_demo
    (match,) = DECODED.findall(launch.output)
    rank, frames, blocks, checksum, path = match
    assert (rank, frames, blocks) == ("4", str(2 * 48 - 3), "8")  # upstream drops 3 frames of the first block
    saved = np.load(cwd / path)
    assert saved["frame_means"].shape == (93, 3) and np.all(np.abs(saved["frame_means"]) < 1)
    assert float(saved["latent_checksum"]) == pytest.approx(float(checksum), rel=1e-9)
    assert re.fullmatch(r"output/\d{8}_\d{6}_4step_A_host_waves\.npz", path)


def test_demo_single_process_computes_what_five_ranks_compute(tpp_demo, tmp_path):
    """The same seed in one process, without a checkpoint (the weights come from the seed, the
    checkpoint only proves it loads): the same latents, so send/recv and the unshard lost nothing."""
    launch = torchrun(1, DEMO_ENTRY, planned_argv(1, tmp_path / "absent"), tmp_path)
    assert launch.code == 0, launch.output
    assert_in_order(
        launch.output,
        [
            "world_size: 1",
            "Using single GPU inference with offload mode: True",
            "no DiT index in",
            "complete prepare conditional inputs",
            BAR,
            "demo: rank 0 decoded 93 frames from 8 blocks",
            "INFO: Finished.",
        ],
    )
    assert "WARNING: VAE serves as a bottleneck!" not in launch.output  # no hand-off to wait for
    single = float(DECODED.search(launch.output).group(4))
    tpp = float(DECODED.search(tpp_demo[0].output).group(4))
    assert single == pytest.approx(tpp, rel=1e-6)  # thread counts differ: matmul sums may round differently


# ------------------------------------------------------------------------- the fake Live Avatar


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy: the runner starts in the checkout, and the fake writes ./output there."""
    return Path(shutil.copytree(FAKE_CHECKOUT, tmp_path / "LiveAvatar"))


def fake(checkout: Path, mode: str, prompt: str = "A host waves", env: dict | None = None, **kw) -> Launch:
    """Three ranks: two DiT ranks and the VAE rank."""
    argv = planned_argv(3, "ckpt/Wan2.2-S2V-14B/", prompt)
    return torchrun(3, FAKE_ENTRY, argv, checkout, env={"FAKE_LIVEAVATAR_MODE": mode, **(env or {})}, **kw)


def test_the_fake_checkout_passes_la_checkout():
    result = checkout_check.run(make_ctx("5xH800-healthy", liveavatar=FAKE_CHECKOUT))
    assert result.status is Status.PASS, result


def test_fake_success_prints_live_avatars_lines_and_holds_memory(checkout):
    launch = fake(checkout, "success")
    assert launch.code == 0, launch.output
    assert_in_order(
        launch.output,
        [
            "COMPILE: True",
            "world_size: 3",
            "Using TPP distributed inference.",
            "INFO: Creating WanModel from ckpt/Wan2.2-S2V-14B/",
            "Use LoRA: lora path: Quark-Vision/Live-Avatar",
            "LoRA merged successfully.",
            "complete prepare conditional inputs",
            BAR,
            "denoising video done",
            "rank 0 done",
            "INFO: Finished.",
        ],
    )
    assert launch.output.count(BAR) == 3 * 2 * 4
    assert launch.peak_rss > 150 * 2**20  # rank 0's ballast: the sampler has a peak to find
    (video,) = (checkout / "output").glob("*_4step_A_host_waves.mp4")
    assert b"not a video" in video.read_bytes()


@pytest.mark.parametrize(
    "mode, expected",
    [
        (
            "oom:2:1",
            [
                "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.31 GiB. "
                "GPU 1 has a total capacity of 79.10 GiB of which 1.20 GiB is free.",
                "NCCL error: remote process exited or there was a network error",
            ],
        ),
        ("nccl-port", ["RuntimeError: The server socket has failed to listen", "address already in use"]),
        # every rank asserts; torchrun stops the others once one fails, so which rank prints it is not fixed
        ("assert-world", ["]: AssertionError: At least 5 GPUs are supported for distributed inference."]),
        ("crash", ["[rank0]: AttributeError: 'EasyDict' object has no attribute 'transformer'"]),
    ],
)
def test_fake_failures_print_live_avatars_text_and_exit_1(checkout, mode, expected):
    launch = fake(checkout, mode)
    assert launch.code == 1, launch.output
    assert_in_order(launch.output, expected)
    assert "denoising video done" not in launch.output
    if mode == "oom:2:1":
        assert launch.output.count(BAR) == 3 * 4  # clip 1 finished on every rank, clip 2 never drew
        assert re.search(r"Root Cause \(first observed failure\):\n\[0\]:\n.*\n.*\n  rank      : 1 ", launch.output)


def test_fake_hang_goes_silent_and_stays_running(checkout):
    clip_1_done = 3 * 4  # 3 ranks, 4 blocks
    launch = fake(checkout, "hang:2", settled=lambda out: out.count(BAR) >= clip_1_done)
    assert launch.code is None, launch.output  # still running 1.5 s after clip 1: killed
    assert launch.output.count(BAR) == clip_1_done and "denoising video done" not in launch.output


def test_fake_argv_echo_gets_a_hostile_prompt_intact(checkout, tmp_path):
    argv_file = tmp_path / "argv.json"
    launch = fake(checkout, "argv-echo", prompt=HOSTILE_PROMPT, env={"FAKE_LIVEAVATAR_ARGV_FILE": str(argv_file)})
    assert launch.code == 0, launch.output
    echoed = json.loads(argv_file.read_text())
    assert echoed[1:] == planned_argv(3, "ckpt/Wan2.2-S2V-14B/", HOSTILE_PROMPT)
    assert echoed[echoed.index("--prompt") + 1] == HOSTILE_PROMPT


def test_fake_rejects_a_mode_it_cannot_play(checkout):
    launch = fake(checkout, "oom:1:9")
    assert launch.code == 1 and "exitcode  : 2" in launch.output  # torchrun's own code is 1 for any failed rank
    assert "FAKE_LIVEAVATAR_MODE='oom:1:9': there is no rank 9 in a world of 3" in launch.output
