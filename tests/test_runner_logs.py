"""Reading Live Avatar's console output: phases and clips as lines arrive (runner/logparse.py), and what
happened (runner/classify.py), on recorded-style logs in tests/fixtures/logs/.

The fixtures are what the runner's logs/inference.log holds ("[+  12.345s] line"): plain torchrun, every
rank's output in one stream, tqdm's carriage-return redraws kept inside the lines.
"""

from __future__ import annotations

import csv
import itertools
import re
import tracemalloc
from pathlib import Path

import pytest

from avatardoctor.config import resolve_config
from avatardoctor.rules import RULES, SEED_REMEDY, Launch
from avatardoctor.runner.classify import ASSERT_TEXTS, Failure, classify
from avatardoctor.runner.logparse import LogTracker, segments, split_rank

LOGS = Path(__file__).parent / "fixtures" / "logs"
STAMPED = re.compile(r"\[\+\s*([\d.]+)s\] (.*)", re.DOTALL)


def read_log(name: str) -> list[tuple[float, str]]:
    with open(LOGS / name, encoding="utf-8", newline="") as f:  # newline="": keep tqdm's \r inside lines
        text = f.read()
    return [
        (float(m[1]), m[2]) for m in map(STAMPED.match, text.split("\n")) if m
    ]  # "# " lines: the header quoting upstream


def track(name: str, nproc: int, num_clip_expected: int | None = None) -> LogTracker:
    tracker = LogTracker(nproc, num_clip_expected)
    for at, line in read_log(name):
        tracker.feed(line, at)
    return tracker


def verdict(name: str, nproc: int, exit_code: int | None = 1, **flags) -> Failure:
    return classify(read_log(name), exit_code, phases=track(name, nproc).phases(), nproc=nproc, **flags)


def at_of(name: str, text: str) -> float:
    return next(at for at, line in read_log(name) if text in line)


BAR_STEPS = "".join(f"\r{25 * n:3d}%|{'█' * (10 * n // 4):<10}| {n}/4 [00:0{n}<00:00,  2.50s/it]" for n in range(1, 5))
BAR_LINE = "\r  0%|          | 0/4 [00:00<?, ?it/s]" + BAR_STEPS + "\r100%|██████████| 4/4 [00:10<00:00,  2.50s/it]"


# ---------------------------------------------------------------------------------------------- phases


def test_fixtures_keep_tqdm_carriage_returns():
    assert sum("\r" in line for _, line in read_log("tpp_success_2clips.log")) > 20


def test_tpp_success_phases_in_order_contiguous_and_two_clips():
    tracker = track("tpp_success_2clips.log", nproc=5)
    phases = tracker.phases()
    assert [name for name, _, _ in phases] == [
        "load",
        "lora merge",
        "fp8",
        "text encoding",
        "clip 1 denoise",
        "clip 2 denoise",
        "decode",
        "save",
    ]
    assert all(start <= end for _, start, end in phases)
    assert all(a[2] == b[1] for a, b in itertools.pairwise(phases))  # one phase ends where the next begins
    assert tracker.clips_done == 2 and tracker.clip_total == 2
    assert tracker.current_phase == "done"
    name = "tpp_success_2clips.log"
    assert phases[0][1] == at_of(name, "Creating WanS2V pipeline.")
    assert phases[1][1] == at_of(name, "Use LoRA:")
    assert phases[2][1] == at_of(name, "LoRA merged successfully.")  # the first rank's: the others change nothing
    assert phases[3][1] == at_of(name, "Generating video ...")
    assert phases[4][1] == at_of(name, "complete prepare conditional inputs")
    assert phases[6][2] == at_of(name, "denoising video done")
    # rank 0's "Finished." comes while the VAE rank still writes the video: save ends at that rank's "done"
    assert phases[7][2] == at_of(name, "rank 4 done") > at_of(name, "INFO: Finished.")


def test_single_gpu_run_three_clips_and_the_offline_decode():
    tracker = track("single_success_3clips.log", nproc=1)
    names = [name for name, _, _ in tracker.phases()]
    assert names[4:] == ["clip 1 denoise", "clip 2 denoise", "clip 3 denoise", "decode", "save"]
    assert tracker.clips_done == 3
    decode = next((start, end) for name, start, end in tracker.phases() if name == "decode")
    assert decode[1] - decode[0] == pytest.approx(38.0, abs=0.5)  # the single-GPU decode of every clip at the end


def test_a_clip_count_known_in_advance_opens_decode_when_the_last_clip_ends():
    tracker = LogTracker(1, num_clip_expected=1)
    tracker.feed("complete prepare conditional inputs", 1.0)
    for i in range(4):
        tracker.feed(BAR_LINE, 10.0 + i)
    assert tracker.clips_done == 1 and tracker.current_phase == "decode"
    assert tracker.phases()[-1] == ("decode", 13.0, 13.0)


def test_lines_fed_one_by_one_show_progress_as_it_happens():
    tracker = LogTracker(5)
    seen = []
    for at, line in read_log("tpp_success_2clips.log"):
        tracker.feed(line, at)
        assert tracker.last_output_s == at
        seen.append((line, tracker.current_phase, tracker.clips_done))
    assert next(phase for line, phase, _ in seen if line.startswith("Use LoRA:")) == "lora merge"
    clips = [clips for _, _, clips in seen]
    assert clips == sorted(clips)  # never goes back
    first_done = next(i for i, (_, _, clips) in enumerate(seen) if clips == 1)
    assert seen[first_done][1] in ("clip 1 denoise", "clip 2 denoise")
    assert first_done < next(i for i, (line, _, _) in enumerate(seen) if "denoising video done" in line)


def test_phases_csv(tmp_path):
    tracker = track("tpp_success_2clips.log", nproc=5)
    tracker.write_phases_csv(tmp_path / "logs" / "phases.csv")
    with open(tmp_path / "logs" / "phases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["phase", "start_s", "end_s"]
    assert [(r["phase"], float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        (name, round(start, 3), round(end, 3)) for name, start, end in tracker.phases()
    ]


def test_open_phase_ends_at_the_last_line():
    tracker = track("tpp_hang_clip2.log", nproc=5)
    name, _, end = tracker.phases()[-1]
    assert (name, end) == ("clip 2 denoise", read_log("tpp_hang_clip2.log")[-1][0])
    assert tracker.clips_done == 1


def test_fp8_is_a_phase_only_when_the_job_args_say_fp8():
    tracker = LogTracker(1)
    lines = [
        "[2026-03-12 10:15:10,000] INFO: Generation job args: Namespace(task='s2v-14B', fp8=False)",
        "[2026-03-12 10:15:11,000] INFO: Creating WanS2V pipeline.",
        "Use LoRA: lora path: x, lora rank: 128",
        "LoRA merged successfully.",
        "[2026-03-12 10:16:11,000] INFO: Generating video ...",
    ]
    for i, line in enumerate(lines):
        tracker.feed(line, float(i))
    assert [name for name, _, _ in tracker.phases()] == ["load", "lora merge", "text encoding"]


def test_bars_per_clip_follow_infer_frames():
    tracker = LogTracker(1)
    tracker.feed("[2026-03-12 10:15:10,000] INFO: Generation job args: Namespace(infer_frames=80, fp8=True)", 0.0)
    for i in range(5):
        tracker.feed(BAR_LINE, 1.0 + i)
    assert tracker.clips_done == 0  # 80 frames: 20 latent frames, 6 blocks of 3
    tracker.feed(BAR_LINE, 7.0)
    assert tracker.clips_done == 1


def test_a_bar_drawn_complete_twice_counts_once():
    tracker = LogTracker(1)
    for i in range(3):
        tracker.feed(BAR_LINE, float(i))  # each ends with the last step's 4/4 and the close's 4/4
    assert tracker.clips_done == 0
    tracker.feed(BAR_LINE, 3.0)
    assert tracker.clips_done == 1


def test_bars_with_a_description_are_not_denoising():
    tracker = LogTracker(1)
    shards = "".join(
        f"\rLoading checkpoint shards: {25 * n:3d}%|{'█' * (10 * n // 4):<10}| {n}/4 [00:{n}0<00:10, 10.2s/it]"
        for n in range(5)
    )
    for i in range(8):
        tracker.feed(shards, float(i))
    assert tracker.clips_done == 0 and tracker.phases() == []


def test_rank_prefixes_are_stripped_recorded_and_rank_0_counts():
    assert split_rank("[default2]:[rank2]: Traceback (most recent call last):") == (
        2,
        "Traceback (most recent call last):",
    )
    assert split_rank("[rank0]:[W312 10:15:11 ProcessGroupNCCL.cpp:4718] x") == (
        0,
        "[W312 10:15:11 ProcessGroupNCCL.cpp:4718] x",
    )
    assert list(
        segments("\r 25%|██▌       | 1/4 [00:00<00:00]\r[rank2]: torch.OutOfMemoryError: CUDA out of memory.")
    ) == [(None, " 25%|██▌       | 1/4 [00:00<00:00]"), (2, "torch.OutOfMemoryError: CUDA out of memory.")]
    tracker = LogTracker(2)
    tracker.feed("[default1]:complete prepare conditional inputs", 0.5)
    for i in range(4):  # rank 0 does one clip while rank 1 (the VAE rank's instant bars) draws two clips' worth
        tracker.feed(f"[default0]:{BAR_LINE}", 1.0 + i)
        tracker.feed(f"[default1]:{BAR_LINE}", 1.2 + i)
        tracker.feed(f"[default1]:{BAR_LINE}", 1.4 + i)
    assert tracker.ranks_seen == {0, 1}
    assert tracker.clips_done == 1


def test_without_prefixes_every_ranks_bars_count_together():
    tracker = LogTracker(5)
    for i in range(19):
        tracker.feed(BAR_LINE, float(i))
    assert tracker.clips_done == 0  # 5 ranks x 4 bars make a clip
    tracker.feed(BAR_LINE, 19.0)
    assert tracker.clips_done == 1


def _long_log(lines: int) -> list[str]:
    """A long single-GPU run: a bar line per block, with prints between them."""
    out = ["complete prepare conditional inputs"]
    while len(out) < lines:
        out.append(BAR_LINE)
        out += [
            f"[rank0]:[W312 10:15:11.000400 40130 ProcessGroupNCCL.cpp:4718] a warning, number {i}" for i in range(39)
        ]
    return out[:lines]


def test_memory_stays_flat_whatever_the_log_length():
    lines = _long_log(200_000)
    tracker = LogTracker(1)
    tracemalloc.start()
    try:
        for i, line in enumerate(lines):
            tracker.feed(line, i * 0.01)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(map(len, lines)) > 15_000_000
    assert peak < 1_000_000 and kept < 400_000  # counters and a row per clip (1,250 here), never the lines


# -------------------------------------------------------------------------------------------- verdicts

CASES = [
    # fixture, nproc, class, gpu, phase, flag the remedy must name
    ("tpp_oom_clip3_rank2.log", 5, "oom", 2, "clip 3 denoise", "--size"),
    ("nccl_address_in_use.log", 5, "nccl", None, None, "--master-port"),
    ("nccl_connection_refused.log", 5, "nccl", None, None, "NCCL_SOCKET_IFNAME"),
    ("nccl_unhandled_system_error.log", 5, "nccl", None, None, "NCCL_P2P_DISABLE=1"),
    ("assert_world_size.log", 4, "assertion", 0, None, "--num-gpus-dit 4"),
    ("assert_num_gpus_dit.log", 5, "assertion", 0, None, "--num-gpus-dit 4"),
    ("assert_vae_parallel.log", 5, "assertion", 0, None, "--enable_vae_parallel"),
    ("assert_sequence_parallel.log", 5, "assertion", 0, None, "--ulysses-size 1"),
    ("assert_single_fsdp.log", 1, "assertion", 0, None, "--t5-fsdp"),
    ("assert_single_ulysses.log", 1, "assertion", 0, None, "--ulysses-size 1"),
    ("assert_size_choice.log", 1, "assertion", 0, None, "--size 704*384"),
    ("assert_solver.log", 1, "assertion", 0, "clip 1 denoise", "--sample-solver euler"),
    ("single_keyerror_5.log", 1, "assertion", 0, "clip 1 denoise", "--sample-steps 4"),
    (
        "hub_download_failed.log",
        1,
        "hub-download",
        0,
        "lora merge",
        "--lora-path ckpt/LiveAvatar/liveavatar.safetensors",
    ),
    ("missing_checkpoint.log", 1, "missing-file", 0, "load", "--ckpt-dir"),
    ("tpp_sigkill_load.log", 5, "crashed", 3, "load", "OOM killer"),
]


@pytest.mark.parametrize("name, nproc, cls, gpu, phase, flag", CASES, ids=[c[0] for c in CASES])
def test_every_fixture_is_classified(name, nproc, cls, gpu, phase, flag):
    failure = verdict(name, nproc)
    assert (failure.cls, failure.gpu, failure.phase) == (cls, gpu, phase)
    assert flag in failure.remedy
    assert failure.message and failure.at_elapsed_s is not None


def test_oom_details():
    failure = verdict("tpp_oom_clip3_rank2.log", 5)
    assert failure.tried_to_allocate_mib == pytest.approx(2.31 * 1024)
    assert failure.message.startswith("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.31 GiB. GPU 2")
    assert "GPU 2" in failure.remedy and len(failure.message) <= 300
    assert failure.at_elapsed_s == at_of("tpp_oom_clip3_rank2.log", "OutOfMemoryError")
    assert failure.to_dict() == {
        "class": "oom",
        "gpu": 2,
        "phase": "clip 3 denoise",
        "message": failure.message,
        "remedy": failure.remedy,
        "tried_to_allocate_mib": failure.tried_to_allocate_mib,
        "at_elapsed_s": failure.at_elapsed_s,
    }


@pytest.mark.parametrize(
    "text, gpu, mib",
    [
        ("[rank3]: RuntimeError: CUDA error: out of memory", 3, None),
        (
            "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 MiB (GPU 1; 79.15 GiB total capacity)",
            1,
            512.0,
        ),
        (
            "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 512.00 KiB. GPU 4 has a total capacity of 79.10 GiB",
            4,
            0.5,
        ),
    ],
)
def test_oom_gpu_from_the_message_else_the_rank(text, gpu, mib):
    failure = classify([(1.0, text)], 1, nproc=5)
    assert (failure.cls, failure.gpu, failure.tried_to_allocate_mib) == ("oom", gpu, mib)


def test_oom_remedy_depends_on_mode_and_phase():
    phases = [("load", 0.0, 5.0), ("clip 1 denoise", 5.0, 9.0)]
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of 79 GiB"
    assert "--offload-kv-cache" in classify([(8.0, oom)], 1, phases=phases, nproc=1).remedy
    at_load = classify([(4.0, oom)], 1, phases=phases, nproc=5).remedy
    assert "--t5-cpu" in at_load and "--fp8 does not lower" in at_load


def test_hang():
    lines = read_log("tpp_hang_clip2.log")
    failure = verdict("tpp_hang_clip2.log", 5, exit_code=None, hung=True)
    assert (failure.cls, failure.phase, failure.at_elapsed_s) == ("hang", "clip 2 denoise", lines[-1][0])
    assert "avatardoctor nccl --nproc 5" in failure.remedy
    # what the job prints while the runner stops it is the stop's echo, not the cause
    echo = [(lines[-1][0] + 300.0, "[rank1]: torch.distributed.DistBackendError: NCCL error: remote process exited")]
    assert classify(lines + echo, -2, hung=True, phases=track("tpp_hang_clip2.log", 5).phases(), nproc=5).cls == "hang"


def test_a_watchdog_timeout_is_a_hang():
    line = (
        "[rank3]:[E312 10:41:12.000 ProcessGroupNCCL.cpp:632] [Rank 3] Watchdog caught collective operation timeout: "
        "WorkNCCL(SeqNum=912, OpType=RECV, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600033 milliseconds"
    )
    failure = classify([(700.0, line)], 1, nproc=5)
    assert (failure.cls, failure.gpu) == ("hang", 3)


def test_success_and_the_failure_dict():
    for name, nproc in (("tpp_success_2clips.log", 5), ("single_success_3clips.log", 1)):
        failure = verdict(name, nproc, exit_code=0)
        assert failure.cls == "success" and failure.remedy is None
        assert failure.to_dict()["class"] == "success"


# ------------------------------------------------------------------------------------------ precedence


def test_oom_beats_nccl_errors_whatever_their_order():
    nccl = (
        10.0,
        "[rank3]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:3356, unhandled system error",
    )
    oom = (
        10.4,
        "\r 75%|███████▌  | 3/4 [00:00<00:00]\r[rank2]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
    )
    failure = classify([nccl, oom], 1, nproc=5)
    assert (failure.cls, failure.gpu, failure.at_elapsed_s) == ("oom", 2, 10.4)


def test_interrupted_beats_what_the_dying_ranks_say_but_not_an_earlier_oom():
    nccl = [(50.0, "[rank1]: torch.distributed.DistBackendError: NCCL error: remote process exited")]
    assert classify(nccl, -2, interrupted=True, nproc=5).cls == "interrupted"
    oom = [(40.0, "[rank2]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")]
    assert classify(oom + nccl, -2, interrupted=True, nproc=5).cls == "oom"


def test_an_error_the_run_went_on_after_is_ignored():
    refused = (
        1.0,
        "[W312 socket.cpp:472] [c10d] The client socket has failed to connect to [localhost]:29102 (errno: 111 - Connection refused).",
    )
    crash = (90.0, "[rank0]: ValueError: negative dimensions are not allowed")
    phases = [("load", 5.0, 60.0), ("lora merge", 60.0, 70.0), ("text encoding", 70.0, 90.0)]
    failure = classify([refused, crash], 1, phases=phases, nproc=5)
    assert (failure.cls, failure.message, failure.gpu) == (
        "crashed",
        "ValueError: negative dimensions are not allowed",
        0,
    )
    assert classify([refused, crash], 1, nproc=5).cls == "nccl"  # nothing followed it: then it is the cause
    assert classify([refused], 0, phases=phases, nproc=5).cls == "success"


def test_an_oom_counts_even_when_the_other_ranks_ran_ahead():
    phases = [("clip 3 denoise", 10.0, 11.0), ("clip 4 denoise", 11.0, 12.0), ("clip 5 denoise", 12.0, 12.5)]
    oom = [(10.5, "[rank2]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.")]
    failure = classify(oom, 1, phases=phases, nproc=5)
    assert (failure.cls, failure.phase) == ("oom", "clip 3 denoise")


def test_a_root_cause_is_never_success_even_with_exit_code_0():
    oom = [(5.0, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity")]
    assert classify(oom, 0).cls == "oom"


def test_a_hub_fallback_that_worked_is_no_failure():
    lines = [(1.0, "Failed to download from HF Hub: (ConnectionError('Connection refused')), treating as local path")]
    phases = [("lora merge", 0.5, 2.0), ("fp8", 2.0, 3.0), ("text encoding", 3.0, 4.0)]
    assert classify(lines, 0, phases=phases).cls == "success"
    assert classify(lines, 1).cls == "hub-download"  # nothing clearer followed the failed fallback


def test_traceback_frames_quote_code_and_are_not_read_as_errors():
    lines = [
        (1.0, "Traceback (most recent call last):"),
        (1.0, '  File "/work/LiveAvatar/liveavatar/models/wan/wan_2_2/utils/utils.py", line 213, in merge_video_audio'),
        (1.0, '    raise RuntimeError(f"FFmpeg execute failed: {e.stderr}")'),
        (1.0, "ValueError: unexpected audio layout"),
    ]
    failure = classify(lines, 1)
    assert (failure.cls, failure.message) == ("crashed", "ValueError: unexpected audio layout")


def test_crashed_without_any_error_text():
    failure = classify([(3.0, "world_size: 1")], 1)
    assert (failure.cls, failure.message, failure.remedy) == ("crashed", "exit code 1; no error in the log", None)


def test_a_failed_audio_merge_finishes_without_sound():
    """Upstream catches the merge's failure and exits 0 with a silent MP4: no crash, but not a success either."""
    failure = verdict("ffmpeg_failed.log", 5, exit_code=0)
    assert failure.cls == "no-sound" and failure.phase == "save"
    assert failure.message.startswith("finished without sound: ERROR:root:FFmpeg execute failed: ffmpeg version 4.4.2")
    assert "--audio" in failure.remedy


def test_ffmpeg_missing_from_path_finishes_without_sound():
    line = "ERROR:root:merge_video_audio failed with error: [Errno 2] No such file or directory: 'ffmpeg'"
    failure = classify([(9.0, line)], 0)
    assert failure.cls == "no-sound" and "apt-get install ffmpeg" in failure.remedy


def test_an_ffmpeg_line_does_not_explain_a_crash():
    lines = [
        (9.0, "ERROR:root:merge_video_audio failed with error: [Errno 2] No such file or directory: 'ffmpeg'"),
        (9.5, "[rank4]: ValueError: unexpected audio layout"),
    ]
    assert classify(lines, 1).message == "ValueError: unexpected audio layout"


def test_cond_cache_overflow_is_upstreams_rule_with_its_remedy():
    text = (
        "[rank1]: RuntimeError: The expanded size of the tensor (3000) must match the existing size (3640) at "
        "non-singleton dimension 1.  Target sizes: [1, 3000, 40, 128].  Tensor sizes: [1, 3640, 40, 128]"
    )
    failure = classify([(300.0, text)], 1, nproc=5)
    assert failure.cls == "assertion" and failure.gpu == 1
    assert failure.remedy.startswith("--size 704*384")


def test_flash_attn_assertion_is_named_by_its_frame():
    lines = [
        (200.0, "[rank0]: Traceback (most recent call last):"),
        (
            200.0,
            '[rank0]:   File "/w/LiveAvatar/liveavatar/models/wan/wan_2_2/modules/attention.py", line 112, in flash_attention',
        ),
        (200.0, "[rank0]:     assert FLASH_ATTN_2_AVAILABLE"),
        (200.0, "[rank0]: AssertionError"),
    ]
    failure = classify(lines, 1, nproc=5)
    assert failure.cls == "assertion" and "flash-attn" in failure.remedy and "--deep" in failure.remedy


@pytest.mark.parametrize(
    "path, flag",
    [
        ("examples/boy.jpg", "--image"),
        ("examples/boy.wav", "--audio"),
        ("ckpt/LiveAvatar/liveavatar.safetensors", "--lora-path ckpt/LiveAvatar/liveavatar.safetensors"),
    ],
)
def test_missing_file_remedy_names_the_flag(path, flag):
    failure = classify([(2.0, f"FileNotFoundError: [Errno 2] No such file or directory: '{path}'")], 1)
    assert failure.cls == "missing-file" and flag in failure.remedy


@pytest.mark.parametrize("printed, rule", ASSERT_TEXTS, ids=[rule.id for _, rule in ASSERT_TEXTS])
def test_assertion_remedies_are_the_rules_own(printed, rule):
    nproc = 5 if "non-distributed" not in printed and rule.id != "single.sample_steps" else 1
    failure = classify([(1.0, f"[rank0]: {printed} and more")], 1, nproc=nproc)
    expected = (
        SEED_REMEDY if rule.gpu_layout else rule.remedy(Launch(resolve_config(nproc, "tpp" if nproc > 1 else "single")))
    )
    assert (failure.cls, failure.remedy) == ("assertion", expected)


def test_every_quoted_upstream_assert_is_recognised():
    quoting = {
        r.id
        for r in RULES
        if r.prevents.startswith(("AssertionError", "KeyError", "NotImplementedError", "argparse", "RuntimeError"))
    }
    assert quoting <= {rule.id for _, rule in ASSERT_TEXTS}


# ---------------------------------------------------------------------------------------- gradio entry


def test_gradio_entry_texts_give_the_phases():
    """gradio_app.py prints "[Rank 0] Generating video..." (no space) and "[Rank 0] Denoising video done" (capital
    D) where the CLI entry prints "Generating video ..." and "denoising video done"; its LoRA line is
    "Loading LoRA: path=...". The prints and tqdm bars are the same (docs/upstream.md, "Gradio entry")."""
    tracker = LogTracker(1)
    lines = [
        "COMPILE: True",
        "[2026-03-12 10:00:00,000] INFO: Creating WanS2V pipeline...",
        "[2026-03-12 10:00:05,000] INFO: Loading LoRA: path=Quark-Vision/Live-Avatar, rank=128, alpha=64",
        "LoRA merged successfully.",
        "[2026-03-12 10:01:00,000] INFO: [Rank 0] Generating video...",
        "complete prepare conditional inputs",
        *[BAR_LINE] * 4,
        "[2026-03-12 10:02:00,000] INFO: [Rank 0] Denoising video done",
        "[2026-03-12 10:02:05,000] INFO: Video saved successfully: output/x.mp4",
    ]
    for at, line in enumerate(lines):
        tracker.feed(line, float(at))
    assert [name for name, _, _ in tracker.phases()] == [
        "load",
        "lora merge",
        "text encoding",
        "clip 1 denoise",
        "decode",
        "save",
    ]
    assert tracker.clips_done == 1 and tracker.current_phase == "done"


# ------------------------------------------------------------------------------- gradio requests


def test_gradio_requests_are_timed_apart_from_the_prints_alone():
    """With gradio's INFO lines hidden (docs/upstream.md, "Gradio entry"), each request is its ranks'
    "complete prepare conditional inputs" and bars; the other ranks' same line, before a bar has ended, is the
    same request, and the process serving on after the last one leaves that one open."""
    tracker = LogTracker(2)
    lines = []
    for _ in range(3):
        lines += [
            "[rank0]:complete prepare conditional inputs",
            "[rank1]:complete prepare conditional inputs",
            *[f"[rank{r}]:{BAR_LINE}" for r in (0, 1)] * 4,
        ]
    for at, line in enumerate(lines):
        tracker.feed(line, float(at))
    per_request = len(lines) // 3
    assert tracker.requests() == [
        (0.0, float(per_request), "done"),
        (float(per_request), float(2 * per_request), "done"),
        (float(2 * per_request), float(len(lines) - 1), "open"),
    ]


def test_a_gradio_request_that_fails_ends_there_and_the_next_one_is_counted():
    """gradio_app.py catches a request's error ("Error during generation: ...", logging.error: printed) and
    serves on: the README's OOM after several runs is such a request."""
    tracker = LogTracker(1)
    lines = [
        "[2026-03-12 10:01:00,000] INFO: [Rank 0] Generating video...",
        "complete prepare conditional inputs",
        *[BAR_LINE] * 4,
        "[2026-03-12 10:01:30,000] INFO: [Rank 0] Inference completed, synchronized with all ranks",
        "[2026-03-12 10:02:00,000] INFO: [Rank 0] Generating video...",
        "complete prepare conditional inputs",
        "ERROR:root:Error during generation: CUDA out of memory. Tried to allocate 2.31 GiB.",
        "complete prepare conditional inputs",
        BAR_LINE,
    ]
    for at, line in enumerate(lines):
        tracker.feed(line, float(at))
    assert tracker.requests() == [(0.0, 6.0, "done"), (7.0, 9.0, "failed"), (10.0, 11.0, "open")]


def test_the_cli_entry_is_one_request_and_its_phases_are_unchanged(tmp_path):
    tracker = LogTracker(1, 2)
    lines = ["Generating video ...", "complete prepare conditional inputs", *[BAR_LINE] * 8, "denoising video done"]
    for at, line in enumerate(lines):
        tracker.feed(line, float(at))
    assert tracker.requests() == [(1.0, 10.0, "open")]
    tracker.write_requests_csv(tmp_path / "requests.csv")
    assert (tmp_path / "requests.csv").read_text().splitlines() == [
        "request,start_s,end_s,outcome",
        "1,1.000,10.000,open",
    ]
    assert [name for name, _, _ in tracker.phases()][-4:] == ["clip 1 denoise", "clip 2 denoise", "decode", "save"]


def test_a_tee_prefixed_traceback_keeps_its_indentation_and_the_oom_line_is_the_signal():
    """torchrun --tee's "[default0]:" has no space after it (TailLog's header): a frame's code line keeps its four
    spaces, so `raise torch.OutOfMemoryError(` reads as quoted code, not as the error."""
    assert split_rank("[default0]:    raise torch.OutOfMemoryError(") == (0, "    raise torch.OutOfMemoryError(")
    assert split_rank("[rank0]: Traceback (most recent call last):") == (0, "Traceback (most recent call last):")
    lines = [
        "[default0]:Traceback (most recent call last):",
        '[default0]:  File "/x/oom_entry.py", line 9, in <module>',
        "[default0]:    raise torch.OutOfMemoryError(",
        "[default0]:torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 150.00 GiB. GPU 0 has a total "
        "capacity of 79.19 GiB of which 1.00 GiB is free.",
    ]
    failure = classify([(1.0 + i / 10, line) for i, line in enumerate(lines)], 1, nproc=1)
    assert failure.cls == "oom" and failure.message.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert failure.tried_to_allocate_mib == 150 * 1024
