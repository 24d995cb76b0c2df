"""Memory growth across a Gradio session's requests: each request's peak per GPU, the trend in GiB per
request and the warning before the usable limit, from run folders with known timelines (tests/runfixture.py)."""

from __future__ import annotations

import json
import math

import pytest
from runfixture import GRADIO_USABLE_GIB, make_gradio_run

from avatardoctor.reports.render import render_report
from avatardoctor.runner.growth import WARN_WITHIN, gpu_growth, slope


def summary_of(run) -> dict:
    return json.loads((render_report(run).parent / "summary.json").read_text())


def test_growing_peaks_warn_with_the_requests_left(tmp_path):
    """GPU 0 gains 2 GiB per request from 60 GiB: after the fifth (68 GiB), ceil((77.26 - 68) / 2) = 5 more
    requests reach its usable 77.26 GiB; GPU 1 stays at 50 GiB: no projection, no warning."""
    peaks = [[60.0 + 2 * k, 50.0] for k in range(5)]
    summary = summary_of(make_gradio_run(tmp_path / "run", peaks))
    assert [r["peak_gib"] for r in summary["requests"]] == [{"0": p0, "1": p1} for p0, p1 in peaks]
    assert [r["outcome"] for r in summary["requests"]] == ["done"] * 4 + ["open"]
    growth = {g["gpu"]: g for g in summary["memory_growth"]["gpus"]}
    assert growth["0"] == {
        "gpu": "0",
        "gib_per_request": 2.0,
        "requests_fitted": 5,
        "limit_gib": GRADIO_USABLE_GIB,
        "requests_to_limit": math.ceil((GRADIO_USABLE_GIB - 68.0) / 2),
        "warn": True,
        "limit": "usable",
    }
    assert growth["1"]["gib_per_request"] == 0.0 and growth["1"]["requests_to_limit"] is None
    assert not growth["1"]["warn"]
    report = tmp_path / "run" / "report"
    html, markdown = (report / "index.html").read_text(), (report / "report.md").read_text()
    for text in (html, markdown):
        assert (
            "GPU 0: peaks grow +2.00 GiB per request over 5 requests: at this rate it reaches its usable 77.26" in text
        )
        assert "in 5 more request(s)" in text and "GPU 1: peaks grow +0.00 GiB per request over 5 requests" in text
    assert "| 5 | open | 68.00 | 50.00 |" in markdown


def test_memory_held_between_requests_counts_against_the_request_before(tmp_path):
    """A request's window runs to the next one's start: the 30 GiB floor between requests is below every spike,
    and a request whose spike is lower than the floor it left would still show the floor."""
    summary = summary_of(make_gradio_run(tmp_path / "run", [[20.0], [25.0], [40.0]]))
    assert [r["peak_gib"]["0"] for r in summary["requests"]] == [30.0, 30.0, 40.0]


def test_slow_growth_far_from_the_limit_is_shown_without_a_warning(tmp_path):
    summary = summary_of(make_gradio_run(tmp_path / "run", [[40.0], [40.5], [41.0]]))
    (gpu,) = summary["memory_growth"]["gpus"]
    assert gpu["requests_to_limit"] == math.ceil((GRADIO_USABLE_GIB - 41.0) / 0.5) > WARN_WITHIN
    assert not gpu["warn"]
    assert "more request(s) at this rate" in (tmp_path / "run" / "report" / "report.md").read_text()


def test_two_requests_are_no_trend_and_one_run_of_the_cli_entry_no_request_section(tmp_path):
    two = summary_of(make_gradio_run(tmp_path / "two", [[40.0], [60.0]]))
    assert len(two["requests"]) == 2 and two["memory_growth"] is None
    one = make_gradio_run(tmp_path / "one", [[40.0]])
    summary = summary_of(one)
    assert len(summary["requests"]) == 1 and summary["memory_growth"] is None
    assert "<h2>Requests</h2>" not in (one / "report" / "index.html").read_text()


def test_a_damaged_requests_file_is_a_note(tmp_path):
    run = make_gradio_run(tmp_path / "run", [[40.0], [41.0], [42.0], [43.0]])
    lines = (run / "logs" / "requests.csv").read_text().splitlines()
    lines[2] = "2,soon,later,maybe"
    (run / "logs" / "requests.csv").write_text("\n".join(lines) + "\n")
    summary = summary_of(run)
    assert [r["request"] for r in summary["requests"]] == [1, 2, 3]  # numbered as read: the damaged row is gone
    assert "1 unreadable request(s) in requests.csv skipped" in summary["notes"]


def test_a_run_folder_from_before_requests_were_recorded_has_none(tmp_path):
    run = make_gradio_run(tmp_path / "run", [[40.0], [41.0], [42.0]])
    (run / "logs" / "requests.csv").unlink()
    summary = summary_of(run)
    assert summary["requests"] == [] and summary["memory_growth"] is None
    assert not any("requests.csv" in note for note in summary["notes"])


@pytest.mark.parametrize(
    ("peaks", "expected"),
    [([1.0, 2.0, 3.0], 1.0), ([5.0, 5.0, 5.0, 5.0], 0.0), ([4.0, 2.0, 0.0], -2.0), ([0.0, 3.0, 3.0], 1.5)],
)
def test_the_trend_is_the_least_squares_slope(peaks, expected):
    assert slope(peaks) == pytest.approx(expected)


def test_the_projection_starts_from_the_higher_of_the_last_peak_and_the_line():
    """Peaks 10, 20, 16: slope 3, the line at request 3 is 18.33 > 16, so ceil((30 - 18.33) / 3) = 4 requests
    (from the last peak it would be 5)."""
    found = gpu_growth([10.0, 20.0, 16.0], 30.0)
    assert found is not None and found["requests_to_limit"] == 4 and found["warn"]
    assert gpu_growth([10.0, None, 12.0], 30.0) is None  # two measured peaks
    assert gpu_growth([10.0, 11.0, 12.0], None) == {
        "gib_per_request": 1.0,
        "requests_fitted": 3,
        "limit_gib": None,
        "requests_to_limit": None,
        "warn": False,
    }
    assert gpu_growth([31.0, 32.0, 33.0], 30.0)["requests_to_limit"] == 0  # already past it
