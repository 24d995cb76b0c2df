"""Speed per clip from known timelines: the load, the warm-up clip apart, the steady state, and the published
figure for the same class of box, through summary.json and the report."""

from __future__ import annotations

import json

from runfixture import make_run

from avatardoctor.reports.render import render_report
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
