"""Speed per clip from known timelines: the load, the warm-up clip apart, the steady state, and the published
figure for the same class of box, for the pipeline and per rank, through summary.json and the report."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from runfixture import make_run
from schemas import assert_valid
from test_reports import CHROMIUM, dump_dom, screenshot

from avatardoctor.reports import plots
from avatardoctor.reports.render import render_report
from avatardoctor.runner.folder import RunFolder
from avatardoctor.runner.logparse import LogTracker, write_rank_clips_csv
from avatardoctor.runner.run import shim_rank_clips
from avatardoctor.runner.speed import speed

WARM_UP = [("load", 0.0, 50.0), ("text encoding", 50.0, 55.0), ("clip 1 denoise", 55.0, 85.0)]


def test_the_steady_state_leaves_the_warm_up_out():
    steady = [(f"clip {k} denoise", 85.0 + 2.4 * (k - 2), 85.0 + 2.4 * (k - 1)) for k in range(2, 6)]
    found = speed(WARM_UP + steady + [("decode", 94.6, 95.0)], infer_frames=48)
    assert found is not None
    assert (found["load_s"], found["first_clip_s"], found["steady_clips"]) == (55.0, 30.0, 4)
    assert found["steady_s_per_clip"] == 2.4 and found["fps"] == 20.0  # 48 frames in 2.4 s
    assert found["video_fps"] == 25 and found["realtime_factor"] == 0.8


def test_one_stalled_clip_does_not_move_the_steady_state():
    clips = [2.0, 2.0, 9.0, 2.0]
    steady, at = [], 85.0
    for k, seconds in enumerate(clips, start=2):
        steady.append((f"clip {k} denoise", at, at + seconds))
        at += seconds
    found = speed(WARM_UP + steady, infer_frames=24)
    assert found is not None and found["steady_s_per_clip"] == 2.0 and found["fps"] == 12.0


def test_one_clip_has_no_steady_state_and_no_clip_has_no_speed():
    found = speed(WARM_UP, infer_frames=48)
    assert found is not None and found["fps"] is None and found["steady_clips"] == 0 and found["first_clip_s"] == 30.0
    assert speed([("load", 0.0, 40.0)], infer_frames=48) is None


def _run_on(tmp_path, gpu_name: str, gpus: int = 5):
    root = make_run(tmp_path / "run", gpus=gpus, oom_gpu=None)
    debug = json.loads((root / "debug_info.json").read_text())
    debug["gpu_names"] = {str(g): gpu_name for g in range(gpus)}
    (root / "debug_info.json").write_text(json.dumps(debug))
    render_report(root)
    return root, json.loads((root / "report" / "summary.json").read_text())


def test_the_report_shows_the_speed_beside_the_published_figure_for_this_box(tmp_path):
    root, summary = _run_on(tmp_path, "NVIDIA H800")
    found = summary["speed"]
    assert (found["load_s"], found["first_clip_s"], found["steady_s_per_clip"]) == (95.0, 100.0, 100.0)
    assert found["fps"] == 0.48 and found["clip_s"] == [100.0] * 4
    assert [p["fps"] for p in found["published"]] == [45.0, 20.0]
    assert all("README.md:" in p["source"] for p in found["published"])
    markdown = (root / "report" / "report.md").read_text()
    assert "0.48 FPS" in markdown and "45 FPS (README.md:46 at 9c2c38d" in markdown
    assert (root / "report" / "speed.png").is_file() and "speed.png" in summary["images"]
    assert "<h2>Speed</h2>" in (root / "report" / "index.html").read_text()


def test_no_published_figure_is_claimed_for_another_class_of_box(tmp_path):
    _, summary = _run_on(tmp_path, "NVIDIA GeForce RTX 4090", gpus=4)
    assert summary["speed"]["published"] == [] and summary["speed"]["fps"] == 0.48


# ---- per rank, from logs with known timelines ------------------------------------------------------------

RANKS = 5
STEADY_S = {0: 2.4, 1: 2.4, 2: 2.4, 3: 2.4, 4: 3.0}  # the VAE rank (4) slower, so each rank's figure is its own
BAR_LINE = "\r  0%|          | 0/4 [00:00<?, ?it/s]\r100%|##########| 4/4 [00:00<00:00,  6.67it/s]"


def tpp_log(prefixed: bool) -> list[tuple[float, str]]:
    """A 5-rank TPP run of 3 clips of 48 frames (4 bars a clip) as (time, line): rank r prepares its inputs at
    55 + r s, ends clip 1 at 85 + r s (30 s of warm-up), then a clip every STEADY_S[r] seconds."""
    prefix = (lambda r: f"[default{r}]:") if prefixed else (lambda r: "")
    lines = [
        (1.0, prefix(0) + "[2026-11-20 09:00:01,000] INFO: Generation job args: Namespace(fp8=False, infer_frames=48)"),
        (2.0, prefix(0) + "[2026-11-20 09:00:02,000] INFO: Creating WanS2V pipeline."),
        (50.0, prefix(0) + "[2026-11-20 09:00:50,000] INFO: Generating video ..."),
    ]
    for r in range(RANKS):
        lines.append((55.0 + r, prefix(r) + "complete prepare conditional inputs"))
        clip_ends = [85.0 + r + STEADY_S[r] * k for k in range(3)]
        for k, end in enumerate(clip_ends):
            block_s = (30.0 if k == 0 else STEADY_S[r]) / 4
            lines += [(end - block_s * (3 - b), prefix(r) + BAR_LINE) for b in range(4)]
    last = max(t for t, _ in lines)
    lines += [(last + 1, prefix(r) + "denoising video done") for r in range(RANKS)]
    lines += [(last + 2, prefix(r) + f"rank {r} done, waiting for other ranks to finish...") for r in range(RANKS)]
    return sorted(lines, key=lambda line: line[0])


def run_with_log(root: Path, prefixed: bool) -> Path:
    """A run folder whose logs/phases.csv and logs/rank_clips.csv the log tracker wrote from tpp_log."""
    make_run(root, gpus=RANKS, oom_gpu=None)
    tracker = LogTracker(RANKS)
    for at, line in tpp_log(prefixed):
        tracker.feed(line, at)
    tracker.write_phases_csv(root / "logs" / "phases.csv")
    write_rank_clips_csv(root / "logs" / "rank_clips.csv", tracker.rank_clips())
    return root


def test_a_log_with_rank_prefixes_gives_each_ranks_exact_speed(tmp_path):
    root = run_with_log(tmp_path / "run", prefixed=True)
    render_report(root)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert_valid(summary)
    found = summary["speed"]
    assert (found["load_s"], found["first_clip_s"], found["steady_s_per_clip"], found["fps"]) == (55.0, 30.0, 2.4, 20.0)
    rows = [
        (r["rank"], r["load_s"], r["first_clip_s"], r["steady_s_per_clip"], r["fps"], r["steady_clips"])
        for r in found["per_rank"]
    ]
    assert rows == [(r, 55.0 + r, 30.0, STEADY_S[r], 48 / STEADY_S[r], 2) for r in range(RANKS)]  # 48 frames a clip
    assert found["per_rank"][4]["clip_s"] == [30.0, 3.0, 3.0] and found["per_rank_note"] is None
    clips = (root / "logs" / "rank_clips.csv").read_text().splitlines()
    assert clips[0] == "rank,clip,start_s,end_s" and clips[1:4] == [
        "0,1,55.000,85.000",
        "0,2,85.000,87.400",
        "0,3,87.400,89.800",
    ]
    markdown = (root / "report" / "report.md").read_text()
    assert "| rank | load (s) | first clip (s) | steady (s per clip) | FPS | steady clips |" in markdown
    assert "| 4 | 59.0 | 30.0 | 3.00 | 16.00 | 2 |" in markdown
    html = (root / "report" / "index.html").read_text()
    assert '<div class="scroll" id="speed-ranks">' in html and "<td>16.00</td>" in html


def test_a_log_without_rank_prefixes_has_no_per_rank_figures_and_says_why(tmp_path):
    root = run_with_log(tmp_path / "run", prefixed=False)
    assert (root / "logs" / "rank_clips.csv").read_text().splitlines() == ["rank,clip,start_s,end_s"]
    render_report(root)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert_valid(summary)
    found = summary["speed"]
    assert found["per_rank"] == [] and "no rank prefix" in found["per_rank_note"]
    assert found["steady_clips"] == 2 and found["fps"] is not None  # the pipeline's stand: all bars counted together
    assert "Per rank: the log's progress bars carry no rank prefix" in (root / "report" / "report.md").read_text()


def test_a_run_from_before_rank_clips_says_so(tmp_path):
    root, summary = _run_on(tmp_path, "NVIDIA H800")
    assert summary["speed"]["per_rank"] == [] and "no logs/rank_clips.csv" in summary["speed"]["per_rank_note"]


def test_only_the_first_generation_is_timed_per_rank():
    tracker = LogTracker(2)
    for at, line in tpp_log(prefixed=True):
        tracker.feed(line, at)
    timed = len(tracker.rank_clips())
    tracker.feed("[default0]:" + BAR_LINE, 500.0)  # a later generation's bars (gradio) are not this one's clips
    assert timed == 15 and len(tracker.rank_clips()) == timed


def test_the_speed_chart_keeps_its_labels_apart_and_the_warm_up_on_its_own_axes():
    ranks = {r: [30.0, STEADY_S[r], STEADY_S[r]] for r in range(RANKS)}
    fig = plots.speed_figure([30.0, 2.4, 2.4], ranks)
    warm, steady = fig.axes
    assert warm.get_title(loc="left") == "clip 1: warm-up" and steady.get_title(loc="left").startswith("clips 2 to N")
    assert warm.get_ylabel() == "denoising time (s)" and steady.get_ylabel() == "seconds per clip (s)"
    assert steady.get_ylim()[1] < 10 < warm.get_ylim()[1]  # the 30 s warm-up does not flatten 2.4 s clips
    legend = [t.get_text() for t in steady.get_legend().get_texts()]
    assert [f"rank {r}" for r in range(RANKS)] == [e for e in legend if e.startswith("rank")]
    assert "steady state: 2.40 s/clip" in legend and plots.overlapping_labels(fig) == []
    plots.plt.close(fig)


# Run in the page once loaded; --dump-dom then shows what it measured in the body's data-speed.
SPEED_PROBE = """<script>
window.addEventListener("load", () => {
  const img = document.getElementById("speed"), table = document.getElementById("speed-ranks");
  const box = img.getBoundingClientRect(), tableBox = table.getBoundingClientRect();
  document.body.dataset.speed = JSON.stringify({
    width: document.documentElement.clientWidth, page: document.documentElement.scrollWidth,
    natural: img.naturalWidth, complete: img.complete, left: box.left, right: box.right, top: box.top,
    bottom: box.bottom, tableRight: tableBox.right, rows: table.querySelectorAll("tr").length,
  });
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's)")
@pytest.mark.parametrize("width", [1280, 390])
def test_a_person_sees_the_speed_chart_and_the_ranks_on_a_desktop_and_a_phone(tmp_path, width):
    index = render_report(run_with_log(tmp_path / "run", prefixed=True))
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", SPEED_PROBE + "</body>"))
    height = 4000  # the whole report at either width: the speed section comes after the GPU table
    dom = dump_dom(probe, tmp_path, width, height)
    found = re.search(r'data-speed="([^"]*)"', dom)
    assert found, "the speed probe did not run"
    at = json.loads(found.group(1).replace("&quot;", '"'))
    assert at["complete"] and at["natural"] == 1000  # the PNG loaded: 10 in at 100 dpi
    assert at["page"] <= at["width"] and at["right"] <= at["width"] and at["tableRight"] <= at["width"]
    assert at["right"] - at["left"] > 0.8 * (width - 80) and at["rows"] == 1 + RANKS  # the header and each rank
    assert 0 < at["top"] < at["bottom"] <= height
    pixels = screenshot(index, tmp_path, width, height).astype(int)
    chart = pixels[int(at["top"]) : int(at["bottom"]), int(at["left"]) : int(at["right"])]
    orange = (
        (abs(chart[..., 0] - 0xFD) < 20) & (abs(chart[..., 1] - 0xBA) < 25) & (abs(chart[..., 2] - 0x74) < 30)
    ).sum()
    blue = (
        (abs(chart[..., 0] - 0x93) < 20) & (abs(chart[..., 1] - 0xC5) < 20) & (abs(chart[..., 2] - 0xFD) < 20)
    ).sum()
    assert orange > 200 and blue > 1000  # where the probe put it, the screenshot shows the warm-up bar and the clips'


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the [torch] extra: torchrun launches the ranks")
def test_record_of_the_stand_in_under_torchrun_tee_gives_every_ranks_speed(tmp_path):
    """The stand-in draws a bar per block on every rank, as upstream does (tpp.py:1061); torchrun --tee 3 prefixes
    each rank's lines, so `record` times each rank's clips."""
    from avatardoctor.ckpt.skeleton import write_skeleton

    ckpt = write_skeleton(tmp_path / "ckpt" / "Wan2.2-S2V-14B", tiny=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(RANKS), "--tee", "3"]
    launch += ["--master_port", str(port), "-m", "avatardoctor.demo.workload", "--size", "720*400", "--num_clip", "3"]
    launch += ["--infer_frames", "48", "--sample_steps", "4", "--num_gpus_dit", "4", "--enable_vae_parallel"]
    launch += ["--ckpt_dir", str(ckpt), "--prompt", "hello", "--offload_model", "False"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    out = tmp_path / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "record", "--out-dir", str(out), "--", *launch],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = out.iterdir()
    assert folder.name.endswith("-tpp")
    rows = (folder / "logs" / "rank_clips.csv").read_text().splitlines()[1:]
    assert sorted((int(r.split(",")[0]), int(r.split(",")[1])) for r in rows) == [
        (rank, clip) for rank in range(RANKS) for clip in (1, 2, 3)
    ]
    summary = json.loads((folder / "report" / "summary.json").read_text())
    assert_valid(summary)
    per_rank = summary["speed"]["per_rank"]
    assert [r["rank"] for r in per_rank] == list(range(RANKS)) and summary["speed"]["per_rank_note"] is None
    assert all(r["steady_clips"] == 2 and r["fps"] > 0 and r["load_s"] > 0 for r in per_rank)


def test_damaged_rank_clips_rows_are_skipped_with_a_note(tmp_path):
    root = run_with_log(tmp_path / "run", prefixed=True)
    clips = root / "logs" / "rank_clips.csv"
    clips.write_text(clips.read_text() + "two,1,1.0,2.0\n5,1,inf,2.0\n5,x,1.0,2.0\n")
    render_report(root)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert [r["rank"] for r in summary["speed"]["per_rank"]] == list(range(RANKS))
    assert "3 unreadable row(s) in rank_clips.csv skipped" in summary["notes"]


def test_each_ranks_own_record_of_its_clips_is_put_on_the_runs_clock_and_damage_is_passed_over(tmp_path):
    """The shim's rank<N>.json: clips relative to the rank's start, which started_monotonic places on the
    runner's clock; a record or a clip that does not read gives no row, never an error."""
    folder = RunFolder(tmp_path)
    folder.ranks.mkdir(parents=True)

    def record(name: str, doc) -> None:
        (folder.ranks / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))

    record("rank0.json", {"rank": 0, "started_monotonic": 105.0, "clips": [[2.0, 4.5], [4.5, 7.0]]})
    record("rank1.json", {"rank": 1, "started_monotonic": 106.0, "clips": [[1.0, 2.0], [3.0, "x"], [4.0, 5.0]]})
    record("rank2.json", {"rank": "2", "started_monotonic": 105.0, "clips": [[1.0, 2.0]]})
    record("rank3.json", {"rank": 3, "clips": [[1.0, 2.0]]})  # from before started_monotonic
    record("rank4.json", {"rank": 4, "started_monotonic": 105.0, "clips": [[3.0, 2.0]]})  # ends before it starts
    record("rank5.json", {"rank": 99, "started_monotonic": 105.0, "clips": [[1.0, 2.0]]})
    record("rank6.json", "{not json")
    record("rank7.json", [1, 2])
    assert shim_rank_clips(folder, launched_monotonic=100.0) == [
        (0, 1, 7.0, 9.5),
        (0, 2, 9.5, 12.0),
        (1, 1, 7.0, 8.0),  # its second clip does not read: the clips after it cannot be numbered
    ]
