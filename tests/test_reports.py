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
from avatardoctor.reports import plots
from avatardoctor.reports.plots import min_max_buckets
from avatardoctor.reports.render import human_time, render_compare, render_report

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


def _window(tmp_path: Path, width: int, height: int) -> list[str]:
    return [*CHROMIUM_FLAGS, "--user-data-dir=" + str(tmp_path / "profile"), f"--window-size={width},{height}"]


def dump_dom(page: Path, tmp_path: Path, width: int, height: int) -> str:
    """The page's DOM once loaded (its probes' measurements in data- attributes), at that window size."""
    argv = [CHROMIUM, *_window(tmp_path, width, height), "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120).stdout


def screenshot(page: Path, tmp_path: Path, width: int, height: int) -> np.ndarray:
    """The page as a person sees it at that window size, as RGB pixels."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    argv = [CHROMIUM, *_window(tmp_path, width, height), f"--screenshot={shot}", page.as_uri()]
    subprocess.run(argv, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        return np.asarray(img.convert("RGB"))


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
        "timeline-all.png",
        *(f"timeline-gpu{g}.png" for g in range(5)),
        "speed.png",
    }
    s = json.loads((out / "summary.json").read_text())
    assert s["schema"] == "avatardoctor.report/1" and s["source"]["kind"] == "run" and s["outcome"] == "oom"
    gpu2 = s["gpus"][2]
    assert gpu2["predicted_peak_gib"] == 41.2 and gpu2["usable_gib"] == 77.26
    assert gpu2["measured_peak_gib"] == pytest.approx(75.20, abs=0.01) and gpu2["peak_phase"] == "clip 4 denoise"
    assert gpu2["delta_gib"] == pytest.approx(gpu2["measured_peak_gib"] - 41.2, abs=0.01)
    # The GPU that ran out: headroom at the failure (75.20 held + 2.31 refused > 77.26 usable), not at its peak
    assert gpu2["headroom_at"] == "failure" and gpu2["headroom_gib"] == pytest.approx(
        77.26 - (77000 + 2365) / 1024, abs=0.01
    )
    assert gpu2["headroom_gib"] < 0
    assert s["gpus"][0]["headroom_at"] == "peak"
    assert s["gpus"][0]["headroom_gib"] == pytest.approx(77.26 - s["gpus"][0]["measured_peak_gib"], abs=0.01)
    assert s["failure"]["class"] == "oom" and s["failure"]["remedy"].startswith("--offload-kv-cache")
    assert s["clips_done"] == 3 and s["clips_per_minute"] == pytest.approx(3 / 8, abs=0.01)
    assert s["config"]["size"] == "720*400"
    md = (out / "report.md").read_text()
    assert (
        "| 2 | 41.20 | 75.20 |" in md
        and "-0.24 at the failure |" in md
        and "![GPU 2](timeline-gpu2.png)" in md
        and "Remedy: `--offload-kv-cache" in md
    )


def test_html_escapes_and_stands_alone(oom_run):
    html = render_report(oom_run).read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no network: no external scripts, fonts, images
    assert html.count('src="data:image/png;base64,') == 7  # the overview, one per GPU and the speed per clip
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


def _fixture_gpu(run: Path, gpu: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    memory = pd.read_csv(run / "logs" / "gpu_memory.csv")
    samples = memory[memory["gpu"] == gpu].rename(columns={"memory_used_mib": "used_mib"})
    return samples, pd.read_csv(run / "logs" / "phases.csv")


def _texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for ax in fig.axes for t in ax.findobj(Text) if t.get_visible() and t.get_text()]


def test_the_failed_gpus_timeline_has_a_phase_legend_and_no_overlapping_labels(oom_run):
    samples, phases = _fixture_gpu(oom_run, 2)
    fig = plots.timeline_figure(
        "GPU 2 · measured peak 75.20 GiB",
        samples,
        phases,
        limit_gib=77.26,
        predicted_gib=41.2,
        oom=(479.0, "OOM: tried to allocate 2.31 GiB"),
    )
    assert plots.overlapping_labels(fig) == []
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    # every phase kind once (the clips' denoising is one entry), the lines, and the OOM with its m:ss time
    assert {"load", "lora merge", "fp8", "text encoding", "denoise"} <= set(legend)
    assert "usable 77.26 GiB" in legend and "OOM: tried to allocate 2.31 GiB at 7:59" in legend
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert ticks and all(re.fullmatch(r"-?\d+:\d\d", t) for t in ticks)  # m:ss, not raw seconds
    plots.plt.close(fig)


def test_a_small_trace_fills_the_axes_and_the_far_limit_is_an_arrow():
    t = np.arange(0, 60, 0.5)
    samples = pd.DataFrame({"elapsed_s": t, "used_mib": 1500 + 400 * np.sin(t)})
    fig = plots.timeline_figure("cpu0", samples, pd.DataFrame(columns=["phase", "start_s", "end_s"]), limit_gib=77.26)
    bottom, top = fig.axes[0].get_ylim()
    assert bottom == 0 and (1900 / 1024) < top < 3  # fitted to the data, not to a limit 40 times higher
    assert "usable 77.26 GiB ↑ (off the scale)" in _texts(fig) and plots.overlapping_labels(fig) == []
    plots.plt.close(fig)
    near = plots.timeline_figure("near", samples, pd.DataFrame(columns=["phase", "start_s", "end_s"]), limit_gib=2.5)
    assert near.axes[0].get_ylim()[1] >= 2.5 and "usable 2.50 GiB" in _texts(near)  # a near limit is on the axes
    plots.plt.close(near)


def test_the_overview_puts_every_gpu_on_one_chart(oom_run):
    series = [(f"GPU {g}", _fixture_gpu(oom_run, g)[0]) for g in range(5)]
    fig = plots.overview_figure("every GPU", series, [77.26] * 5, "GPU memory used (GiB)")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert [e.split(":")[0] for e in legend[:5]] == [f"GPU {g}" for g in range(5)]
    assert "GPU 2: peak 75.20 GiB at 7:59" in legend and "usable 77.26 GiB" in legend  # GPU 2 reached the top
    assert plots.overlapping_labels(fig) == []
    plots.plt.close(fig)


def test_human_timestamps():
    assert plots.clock(45) == "0:45" and plots.clock(725) == "12:05" and plots.clock(3725) == "1:02:05"
    assert human_time("2026-11-20T09:00:00+00:00") == "2026-11-20 09:00:00 UTC"
    assert human_time("not a time") == "not a time" and human_time(None) == "-"


# Run in the page once it has loaded; --dump-dom then shows what it measured in the body's data-layout.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const images = [...document.images].map(i => i.getBoundingClientRect());
  const cells = [...document.querySelectorAll("td, th")].map(c => c.getBoundingClientRect());
  let overlaps = 0;
  for (let i = 0; i < cells.length; i++) for (let j = i + 1; j < cells.length; j++) {
    const a = cells[i], b = cells[j];
    if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1) overlaps++;
  }
  document.body.dataset.layout = JSON.stringify({
    width, page: document.documentElement.scrollWidth, overlaps, thinnest: Math.min(...cells.map(c => c.width)),
    images: images.length, widest: Math.max(...images.map(r => r.right)), narrowest: Math.min(...images.map(r => r.width)),
  });
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's)")
@pytest.mark.parametrize("width", [1280, 390])
def test_a_person_sees_the_plots_and_the_table_on_a_desktop_and_a_phone(oom_run, tmp_path, width):
    index = render_report(oom_run)
    probe = index.with_name("probe.html")
    probe.write_text(index.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = dump_dom(probe, tmp_path, width, 2400)
    assert dom.count("<img") == 7 and "<table>" in dom and "measured peak (GiB)" in dom
    assert "started 2026-11-20 09:00:00 UTC" in dom and "-0.24 at the failure" in dom
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "the layout probe did not run"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout["page"] <= layout["width"]  # nothing makes the page scroll sideways: wide tables scroll inside
    assert layout["overlaps"] == 0 and layout["thinnest"] > 40  # no cell over another, none a letter wide
    assert layout["images"] == 7 and layout["widest"] <= layout["width"] and layout["narrowest"] > 0.8 * (width - 80)
    pixels = screenshot(index, tmp_path, width, 2400)
    assert pixels.shape[:2] == (2400, width)
    plots_only = pixels[1200:]  # below the table and the failure box, at either width: only the figures
    rgb = plots_only.astype(int)  # thin lines scaled down to a phone are blended with white: loose colour bounds
    red = ((rgb[..., 0] > 200) & (rgb[..., 1] < 150) & (rgb[..., 2] < 150)).sum()  # the usable limit
    blue = ((rgb[..., 2] > 170) & (rgb[..., 0] < 140) & (rgb[..., 1] < 170)).sum()  # the memory lines
    assert red > 50 and blue > 50
