"""Reports from run folders and logs that are damaged or hostile (issue 14): wrong-typed JSON, GPU
values that would be paths, links out of the folder, FIFOs and devices, an unusable -o, many GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runfixture import make_run

from avatardoctor.errors import InputError
from avatardoctor.reports.render import render_compare, render_report

HEADER = "timestamp, index, memory.used [MiB], memory.total [MiB]\n"


def summary(index: Path) -> dict:
    return json.loads((index.parent / "summary.json").read_text())


def edit_json(path: Path, **fields) -> None:
    doc = json.loads(path.read_text())
    for dotted, value in fields.items():
        *parents, key = dotted.split("__")
        target = doc
        for p in parents:
            target = target[p]
        target[key] = value
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "file, fields, says",
    [
        ("debug_info.json", {"outcome": ["oom"]}, "outcome is list, not text"),
        ("debug_info.json", {"gpu_names": []}, "gpu_names is list, not an object"),
        ("debug_info.json", {"durations__total_s": "480"}, "total_s is str, not a number"),
        ("debug_info.json", {"durations": [480]}, "durations is list"),
        ("debug_info.json", {"clips_done": "3"}, "clips_done is str, not a count"),
        ("debug_info.json", {"failure": "oom"}, "failure is str, not an object"),
        (
            "debug_info.json",
            {"failure__tried_to_allocate_mib": "2365", "failure__gpu": {"a": 1}},
            "tried_to_allocate_mib is str",
        ),
        ("debug_info.json", {"failure__at_elapsed_s": float("1e308") * 10}, None),  # Infinity
        ("plan.json", {"argv": 5}, "argv is int, not a list"),
        ("plan.json", {"prediction": [1, 2]}, "prediction is list, not an object"),
        ("plan.json", {"prediction__gpus": {"0": 1}}, "gpus is dict, not a list"),
        ("plan.json", {"prediction__gpus": [{"index": "x"}, {"index": 0, "peak_gib": "41"}, 7]}, "peak_gib is str"),
        ("plan.json", {"config": ["tpp"]}, "config is list, not an object"),
    ],
)
def test_wrong_typed_json_fields_become_notes(tmp_path, file, fields, says):
    run = make_run(tmp_path / "r", seconds=30)
    edit_json(run / file, **fields)
    s = summary(render_report(run))
    assert len(s["gpus"]) == 5 and s["gpus"][0]["measured_peak_gib"] > 0
    if says:
        assert any(says in n for n in s["notes"]), s["notes"]


def test_gpu_values_that_are_paths_name_no_file_and_write_nothing_outside(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    memory = run / "logs" / "gpu_memory.csv"
    with memory.open("a") as f:
        f.write("2026-11-20T09:00:01Z,1.0,/../../../escaped,GPU-x,5000,81559,1\n")
        f.write("2026-11-20T09:00:01Z,1.0,99999999999,GPU-x,5000,81559,1\n")
    before = set(tmp_path.rglob("*"))
    s = summary(render_report(run))
    assert [g["gpu"] for g in s["gpus"]] == ["0"]
    assert any("2 unreadable sample(s)" in n for n in s["notes"]), s["notes"]
    assert {p for p in set(tmp_path.rglob("*")) - before if p.parent != run / "report"} == {run / "report"}


def test_a_report_link_out_of_the_run_folder_is_refused_and_its_target_untouched(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "holiday.png").write_bytes(b"\x89PNG keep")
    (elsewhere / "summary.json").write_text(json.dumps({"schema": "avatardoctor.report/1"}))
    (run / "report").symlink_to(elsewhere)
    with pytest.raises(InputError, match="is a symbolic link"):
        render_report(run)
    assert (elsewhere / "holiday.png").read_bytes() == b"\x89PNG keep"
    with pytest.raises(InputError, match="-o .*is a symbolic link"):
        render_report(run, run / "report")


def test_links_in_the_output_folder_are_replaced_not_written_through(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    render_report(run)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for name in ("index.html", "summary.json", "report.md", "timeline-gpu0.png", f".index.html.tmp-{os.getpid()}"):
        (run / "report" / name).unlink(missing_ok=True)
        (run / "report" / name).symlink_to(victim)
    render_report(run, force=True)
    assert victim.read_text() == "keep" and not (run / "report" / "index.html").is_symlink()


@pytest.mark.parametrize("name", ["plan.json", "logs/gpu_memory.csv", "logs/phases.csv", "debug_info.json"])
def test_devices_and_links_out_of_the_run_folder_are_not_read(tmp_path, name):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    (run / name).unlink()
    (run / name).symlink_to("/dev/zero")
    s = summary(render_report(run))
    assert any(Path(name).name in n and "link out of r" in n for n in s["notes"]), s["notes"]
    (run / name).unlink()
    (run / name).symlink_to(run / "logs")  # inside the folder, but not a regular file
    s = summary(render_report(run, force=True))
    assert any(Path(name).name in n and "not a regular file" in n for n in s["notes"]), s["notes"]
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    (run / name).unlink()
    (run / name).symlink_to(outside)
    s = summary(render_report(run, force=True))
    assert any(Path(name).name in n and "link out of r" in n for n in s["notes"]), s["notes"]


def test_fifos_in_the_run_folder_do_not_hang_the_report(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    for name in ("debug_info.json", "logs/phases.csv"):
        (run / name).unlink()
        os.mkfifo(run / name)
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "report", str(run)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    notes = summary(run / "report" / "index.html")["notes"]
    assert sum("not a regular file" in n for n in notes) == 2, notes


def test_a_fifo_as_the_log_is_an_error_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "gpu_log.csv")
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "report", str(tmp_path / "gpu_log.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "gpu_log.csv" in r.stderr


def test_output_on_a_file_or_under_one_is_a_one_line_error(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep")
    with pytest.raises(InputError, match="-o .*notes.txt: is a file, not a folder"):
        render_report(run, a_file)
    with pytest.raises(InputError, match="-o .*notes.txt/sub: cannot write there"):
        render_report(run, a_file / "sub")
    with pytest.raises(InputError, match="-o .*notes.txt: is a file"):
        render_compare(run, run, a_file)
    assert a_file.read_text() == "keep"


def test_a_gpu_whose_memory_is_all_not_available_is_a_row_without_a_peak(tmp_path):
    log = tmp_path / "gpu_log.csv"
    log.write_text(
        HEADER
        + "".join(
            f"2026/11/20 09:14:0{k}.000, {g}, {'[N/A]' if g else f'{100 + k} MiB'}, [Not Supported]\n"
            for k in range(3)
            for g in range(2)
        )
    )
    s = summary(render_report(log))
    assert [(g["gpu"], g["measured_peak_gib"]) for g in s["gpus"]] == [("0", round(102 / 1024, 2)), ("1", None)]
    assert s["images"] == [
        "timeline-all.png",
        "timeline-gpu0.png",
        "timeline-gpu1.png",
    ]  # the overview draws what it has


def test_hundreds_of_gpus_give_a_bounded_page(tmp_path):
    log = tmp_path / "gpu_log.csv"
    log.write_text(
        HEADER
        + "".join(
            f"2026/11/20 09:14:0{k}.000, {g}, {1000 + g * 10 + k} MiB, 81559 MiB\n"
            for k in range(3)
            for g in range(320)
        )
    )
    index = render_report(log)
    s = summary(index)
    assert len(s["gpus"]) == 320 and len(index.read_bytes()) < 2 * 2**20
    assert s["images"][0] == "timeline-overview.png" and len(s["images"]) == 17
    assert "timeline-gpu319.png" in s["images"] and "timeline-gpu0.png" not in s["images"]  # the highest peaks
    assert any("320 GPUs: timelines drawn for 16" in n for n in s["notes"]), s["notes"]
    assert index.read_text().count("<tr>") > 320


def test_a_memory_log_cut_mid_number_by_a_crash_does_not_draw_a_false_drop(tmp_path):
    run = make_run(tmp_path / "r", gpus=1, seconds=5)
    memory = run / "logs" / "gpu_memory.csv"
    memory.write_text(memory.read_text() + "2026-11-20T09:00:05Z,5.0,0,GPU-00000000-0000-0000-0000-000000000000,1")
    s = summary(render_report(run))
    assert s["gpus"][0]["samples"] == 50
    assert "last line of gpu_memory.csv is cut off (no line end): skipped" in s["notes"]


def test_dollar_signs_in_names_and_phases_are_drawn_as_text_not_math(tmp_path):
    run = make_run(tmp_path / "r$\\foo$", gpus=1, seconds=5)
    (run / "logs" / "phases.csv").write_text("phase,start_s,end_s\n$\\frac$,0,5\n")
    (run / "debug_info.json").write_text(json.dumps({"gpu_names": {"0": "$\\foo$ $x^$"}}))
    memory = run / "logs" / "gpu_memory.csv"
    memory.write_text(memory.read_text().replace("GPU-00000000", "$\\bar$"))
    s = summary(render_report(run))
    assert s["phases"][0]["phase"] == "$\\frac$" and s["images"] == ["timeline-gpu0.png"]
    render_compare(run, run, tmp_path / "cmp")
