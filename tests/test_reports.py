"""Post-mortem reports from run folders: what they show, that they escape, that they stand alone,
that broken input becomes a note, and (in headless Chromium) that a person sees the plot and table."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runfixture import make_run

from avatardoctor.errors import InputError
from avatardoctor.reports.plots import min_max_buckets
from avatardoctor.reports.render import render_compare, render_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def oom_run(tmp_path) -> Path:
    return make_run(tmp_path / "20261120-090000-tpp")


def test_report_of_an_oom_run(oom_run):
    index = render_report(oom_run)
    out = index.parent
    assert out == oom_run / "report"
    assert {p.name for p in out.iterdir()} == {
        "index.html",
        "report.md",
        "summary.json",
        *(f"timeline-gpu{g}.png" for g in range(5)),
        "speed.png",
    }
    s = json.loads((out / "summary.json").read_text())
    assert s["schema"] == "avatardoctor.report/1" and s["source"]["kind"] == "run" and s["outcome"] == "oom"
    gpu2 = s["gpus"][2]
    assert gpu2["predicted_peak_gib"] == 41.2 and gpu2["usable_gib"] == 77.26
    assert gpu2["measured_peak_gib"] == pytest.approx(41.46, abs=0.01) and gpu2["peak_phase"] == "clip 4 denoise"
    assert gpu2["delta_gib"] == pytest.approx(gpu2["measured_peak_gib"] - 41.2, abs=0.01)
    assert s["failure"]["class"] == "oom" and s["failure"]["remedy"].startswith("--offload-kv-cache")
    assert s["clips_done"] == 3 and s["clips_per_minute"] == pytest.approx(3 / 8, abs=0.01)
    assert s["config"]["size"] == "720*400"
    md = (out / "report.md").read_text()
    assert "| 2 | 41.20 | 41.46 |" in md and "![GPU 2](timeline-gpu2.png)" in md and "Remedy: `--offload-kv-cache" in md


def test_html_escapes_and_stands_alone(oom_run):
    html = render_report(oom_run).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no network: no external scripts, fonts, images
    assert html.count('src="data:image/png;base64,') == 6  # 5 timelines and the speed per clip
    assert len(html.encode()) < 2 * 2**20


def test_downsampling_keeps_every_peak():
    t = np.arange(0, 7200, 0.1)
    used = np.full_like(t, 30000.0)
    used[12345] = 79000.0  # one sample's spike in 72,000
    used[54321] = 100.0
    reduced = min_max_buckets(pd.DataFrame({"elapsed_s": t, "used_mib": used}))
    assert len(reduced) <= 1500
    assert reduced["hi"].max() == 79000.0 and reduced["lo"].min() == 100.0


def test_run_folder_without_plan_or_debug_still_reports_with_notes(tmp_path):
    run = make_run(tmp_path / "r", with_plan=False)
    (run / "debug_info.json").unlink()
    s = json.loads((render_report(run).parent / "summary.json").read_text())
    assert s["gpus"][0]["predicted_peak_gib"] is None and s["gpus"][0]["measured_peak_gib"] > 30
    assert "no plan.json: shown without it" in s["notes"] and "no debug_info.json: shown without it" in s["notes"]


@pytest.mark.parametrize(
    "damage, note",
    [
        (lambda p: p.write_text(""), "could not be read"),
        (lambda p: p.write_text("time,elapsed_s,gpu,uuid,memory_used_mib,memory_total_mib\n"), None),
        (lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe garbage, , ,\nnot,a,row\n"), "unreadable sample(s)"),
        (lambda p: p.write_text(p.read_text().replace("memory_used_mib", "mem")), "has no memory_used_mib column"),
        (lambda p: p.write_text(p.read_text() + "2026-11-20,1.0,0,GPU-x,5000,81559,1\n"), "go back in time"),
    ],
)
def test_damaged_memory_log_becomes_a_note_never_a_traceback(tmp_path, damage, note):
    run = make_run(tmp_path / "r", seconds=60)
    damage(run / "logs" / "gpu_memory.csv")
    s = json.loads((render_report(run).parent / "summary.json").read_text())
    if note:
        assert any(note in n for n in s["notes"]), s["notes"]
    html = (run / "report" / "index.html").read_text()
    assert "<html" in html


def test_output_folder_with_other_files_is_refused(oom_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep")
    with pytest.raises(InputError, match="not an avatardoctor report"):
        render_report(oom_run, mine)
    assert (mine / "thesis.tex").read_text() == "keep"
    render_report(oom_run)
    render_report(oom_run)  # our own report folder is re-rendered in place


def test_compare_two_runs(tmp_path):
    a = make_run(tmp_path / "a", oom_gpu=2)
    b = make_run(tmp_path / "b", oom_gpu=None, seconds=300)
    index = render_compare(a, b, tmp_path / "cmp")
    s = json.loads((index.parent / "summary.json").read_text())
    assert len(s["compare"]) == 2 and [r["gpu"] for r in s["rows"]] == ["0", "1", "2", "3", "4"]
    assert s["rows"][2]["diff_gib"] < 0  # B never reached A's pre-OOM spike on GPU 2
    assert (index.parent / "compare-gpu2.png").stat().st_size > 10_000
    assert "<table>" in index.read_text()


def test_report_command(oom_run):
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "report", str(oom_run)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == f"report: {oom_run / 'report' / 'index.html'}"
    bad = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "report", str(oom_run / "nope")], capture_output=True, text=True
    )
    assert (
        bad.returncode == 2 and bad.stderr.startswith("Error: ") and "neither a run folder nor a CSV file" in bad.stderr
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's)")
def test_a_person_sees_the_plot_and_the_table(oom_run, tmp_path):
    index = render_report(oom_run)
    url = index.as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count("<img") == 6 and "<table>" in dom and "measured peak (GiB)" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", "--window-size=1100,1400", url],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as img:
        pixels = np.asarray(img.convert("RGB"))
    blue = ((pixels[..., 2] > 150) & (pixels[..., 0] < 80)).sum()  # the timeline's line and band
    assert pixels.shape[0] == 1400 and blue > 500
