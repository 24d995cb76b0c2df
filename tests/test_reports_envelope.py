"""Logs past STREAM_SAMPLES samples are kept as an Envelope: memory no longer grows with the log, and what the
report states (peaks and their times, sample counts, first and last samples, the totals, what the failed GPU
held at the failure, each request's peaks) is what reading every sample gives. The threshold is lowered here
so that small real files cross it; memory is measured with tracemalloc, never a clock."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from runfixture import make_gradio_run, make_run
from test_reports_streaming import traced_peak

from avatardoctor.reports import nvsmi, plots, runfolder, timeline
from avatardoctor.reports.nvsmi import read_nvidia_smi_csv
from avatardoctor.reports.runfolder import read_memory_csv, read_run_folder
from avatardoctor.reports.summary import build_summary

THRESHOLD = 4000  # samples; the module's is a million
HEADER = "timestamp, index, memory.used [MiB], memory.total [MiB]"
SPIKE_MIB = 79_999


def stream(monkeypatch, threshold: int = THRESHOLD, buckets: int = 64) -> None:
    """Readers that stream past `threshold` samples, in small chunks and batches (so folds happen many times)."""
    for module in (nvsmi, runfolder):
        monkeypatch.setattr(module, "STREAM_SAMPLES", threshold)
    monkeypatch.setattr(timeline, "ENVELOPE_BATCH", threshold // 4)
    monkeypatch.setattr(timeline, "ENVELOPE_BUCKETS", buckets)
    monkeypatch.setattr(nvsmi, "CHUNK_CHARS", 16 * 2**10)
    monkeypatch.setattr(runfolder, "CSV_CHUNK_ROWS", threshold // 8)


@pytest.fixture
def streaming(monkeypatch):
    stream(monkeypatch)


def nvsmi_log(path: Path, samples: int, gpus: int = 2, index: bool = True, spike_at: int | None = None) -> Path:
    """An nvidia-smi log at 10 Hz: a sawtooth per GPU, and one sample of SPIKE_MIB on GPU 1 at spike_at."""
    k = np.arange(samples)
    stamps = pd.Timestamp("2026-11-20 09:00:00") + pd.to_timedelta(k * 100, unit="ms")
    text = stamps.strftime("%Y/%m/%d %H:%M:%S.%f").str[:-3]
    lines = [HEADER if index else HEADER.replace(" index,", "")]
    for i, stamp in zip(k.tolist(), text):
        for g in range(gpus):
            used = SPIKE_MIB if (i == spike_at and g == 1) else 20_000 + 1000 * g + (i * 37) % 5000
            lines.append(f"{stamp}, {g}, {used} MiB, 81559 MiB" if index else f"{stamp}, {used} MiB, 81559 MiB")
    path.write_text("\n".join(lines) + "\n")
    return path


def summary_rows(source: Path, kind: str, timeline_read, run=None) -> list[dict]:
    return build_summary(source, kind, timeline_read, run)["gpus"]


def test_an_nvidia_smi_logs_memory_stops_growing_past_the_threshold(tmp_path, streaming):
    peaks = []
    for factor in (5, 20):
        path = nvsmi_log(tmp_path / f"x{factor}.csv", factor * THRESHOLD // 2)  # two GPUs: factor x THRESHOLD rows
        peak, read = traced_peak(lambda: read_nvidia_smi_csv(path))
        assert read.counts == {"0": factor * THRESHOLD // 2, "1": factor * THRESHOLD // 2}
        peaks.append(peak)
    # Four times the log (~1 MB more text): the same chunk, the same envelope; the whole-log reader took ~1.5x more
    assert peaks[1] <= peaks[0] * 1.1 + 64 * 2**10, peaks


def test_a_memory_csvs_memory_stops_growing_past_the_threshold(tmp_path, streaming):
    peaks = []
    for factor in (5, 20):
        path = make_run(tmp_path / f"x{factor}", gpus=2, seconds=factor * THRESHOLD / 20) / "logs" / "gpu_memory.csv"
        peak, read = traced_peak(lambda: read_memory_csv(path))
        assert sum(read.counts.values()) == factor * THRESHOLD
        peaks.append(peak)
    assert peaks[1] <= peaks[0] * 1.1 + 64 * 2**10, peaks


@pytest.mark.parametrize("index", [True, False])
def test_a_one_sample_spike_in_a_long_nvidia_smi_log_survives_into_the_plot_and_the_summary(
    tmp_path, monkeypatch, index
):
    path = nvsmi_log(tmp_path / "gpu_log.csv", 10 * THRESHOLD, index=index, spike_at=5 * THRESHOLD + 3)
    exact = read_nvidia_smi_csv(path)
    stream(monkeypatch)
    streamed = read_nvidia_smi_csv(path)
    assert len(streamed.samples) < len(exact.samples) / 10  # bounded: 5 samples per bucket at most
    assert summary_rows(path, "nvidia-smi", streamed) == summary_rows(path, "nvidia-smi", exact)
    gpu1 = streamed.by_gpu()["1"]
    assert gpu1["used_mib"].max() == SPIKE_MIB
    assert gpu1.loc[gpu1["used_mib"].idxmax(), "elapsed_s"] == pytest.approx((5 * THRESHOLD + 3) / 10)
    assert plots.min_max_buckets(gpu1)["hi"].max() == SPIKE_MIB  # the series the figure draws
    assert streamed.notes[:-1] == exact.notes
    assert streamed.notes[-1].startswith(f"gpu_log.csv has {20 * THRESHOLD:,} samples: drawn as each device's")
    assert streamed.start == exact.start and streamed.gpu_names == exact.gpu_names
    for gpu, frame in exact.by_gpu().items():  # first and last samples
        kept = streamed.by_gpu()[gpu]
        pd.testing.assert_frame_equal(
            kept.iloc[[0, -1]].reset_index(drop=True), frame.iloc[[0, -1]].reset_index(drop=True)
        )


def test_a_long_run_folders_report_states_what_every_sample_gives(tmp_path, monkeypatch):
    """The failure's value (headroom at the failure) and the summary's per-GPU figures."""
    run = make_run(tmp_path / "run", seconds=THRESHOLD / 5)  # 5 GPUs: 10x THRESHOLD samples, OOM on GPU 2
    exact = read_run_folder(run)
    stream(monkeypatch)
    streamed = read_run_folder(run)
    assert len(streamed.timeline.samples) < len(exact.timeline.samples) / 5
    ours, reference = (
        build_summary(run, "run", streamed.timeline, streamed),
        build_summary(run, "run", exact.timeline, exact),
    )
    assert ours["gpus"] == reference["gpus"] and ours["durations"] == reference["durations"]
    assert any(row["headroom_at"] == "failure" for row in ours["gpus"])
    assert ours["notes"][:-1] == reference["notes"]
    assert ours["notes"][-1].startswith(f"gpu_memory.csv has {10 * THRESHOLD:,} samples")


def test_each_requests_peak_in_a_long_gradio_run_is_what_every_sample_gives(tmp_path, monkeypatch):
    peaks = [[40.0 + k * 0.5, 35.0 + k] for k in range(6)]
    run = make_gradio_run(tmp_path / "run", peaks)
    exact = read_run_folder(run)
    assert len(exact.timeline.samples) > 4 * 500
    stream(monkeypatch, threshold=500, buckets=8)  # buckets far wider than a request: the cuts keep it exact
    streamed = read_run_folder(run)
    assert len(streamed.timeline.samples) < len(exact.timeline.samples) / 2
    ours, reference = (
        build_summary(run, "run", streamed.timeline, streamed),
        build_summary(run, "run", exact.timeline, exact),
    )
    assert ours["requests"] == reference["requests"] and ours["memory_growth"] == reference["memory_growth"]
    assert ours["gpus"] == reference["gpus"]


def test_time_going_back_in_a_long_memory_csv_is_counted_and_drawn_in_time_order(tmp_path, monkeypatch):
    path = tmp_path / "logs" / "gpu_memory.csv"
    path.parent.mkdir()
    rows = [f"{t % 3000 / 10},0,{1000 + (t * 7) % 900}" for t in range(9000)]  # the clock restarts twice
    path.write_text("elapsed_s,gpu,memory_used_mib\n" + "\n".join(rows) + "\n")
    exact = read_memory_csv(path)
    stream(monkeypatch, threshold=1000, buckets=32)
    streamed = read_memory_csv(path)
    assert streamed.notes[:-1] == exact.notes == ["2 sample(s) in gpu_memory.csv go back in time: drawn in time order"]
    assert streamed.samples["elapsed_s"].is_monotonic_increasing
    assert streamed.samples["used_mib"].max() == exact.samples["used_mib"].max()
    assert summary_rows(path, "run", streamed) == summary_rows(path, "run", exact)


def ramp(run: Path, gpus: int, seconds: float) -> Path:
    """The run's memory log replaced by a steady climb at 10 Hz: the highest sample before any time is the
    last one before it, which a bucket spanning that time keeps only if it is cut there."""
    t = np.arange(0, seconds, 0.1).round(1)
    rows = [f"{s},{g},GPU-{g},{10_000 + round(s * 10)},81559" for s in t.tolist() for g in range(gpus)]
    path = run / "logs" / "gpu_memory.csv"
    path.write_text("elapsed_s,gpu,uuid,memory_used_mib,memory_total_mib\n" + "\n".join(rows) + "\n")
    return run


@pytest.mark.parametrize("kind", ["failure", "requests"])
def test_what_the_summary_takes_at_a_failure_or_between_requests_stays_exact(tmp_path, monkeypatch, kind):
    if kind == "failure":  # GPU 2 fails at 479 s: headroom at the failure is what it held then
        run = ramp(make_run(tmp_path / "run", gpus=3, seconds=480), 3, 480)
    else:
        run = ramp(make_gradio_run(tmp_path / "run", [[40.0, 41.0]] * 5), 2, 600)
    exact = read_run_folder(run)
    stream(monkeypatch, threshold=1000, buckets=8)  # each bucket spans a minute or more
    streamed = read_run_folder(run)
    assert len(streamed.timeline.samples) < len(exact.timeline.samples) / 10
    ours = build_summary(run, "run", streamed.timeline, streamed)
    reference = build_summary(run, "run", exact.timeline, exact)
    assert ours["gpus"] == reference["gpus"] and ours["requests"] == reference["requests"]
    if kind == "failure":
        assert [row["headroom_at"] for row in ours["gpus"]] == ["peak", "peak", "failure"]
    else:
        assert len(ours["requests"]) == 5
