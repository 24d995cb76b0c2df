"""Output read at a glance (issue 17): one line per group, the what-if's answer apart from this host's
software, tables and wrapping by display width, an ASCII fallback, plurals, and the exit codes."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import MACHINES, make_ctx
from rich.cells import cell_len
from test_cli import avatardoctor, cli_env

from avatardoctor import exitcodes
from avatardoctor.checks import gpu, run_checks
from avatardoctor.checks.base import Status


def test_check_prints_the_fit_first_then_one_line_per_group_and_details_only_where_something_is_wrong():
    r = avatardoctor("check", "--machine", "5xH800", env=cli_env(NO_COLOR="1"))
    lines = r.stdout.splitlines()
    assert lines[1].startswith("[✓] fit.peak") and "FITS" in lines[1]  # the verdict on the fit, on top
    assert "[✓] GPUs (6 checks)" in lines and "[✓] Topology (2 checks)" in lines and "[✓] Network (1 check)" in lines
    assert "gpu.inventory" not in r.stdout  # a passing check is counted, not shown
    assert "[✗] sw.torch" in r.stdout  # a failing one shows, with its remedy
    verbose = avatardoctor("check", "--machine", "5xH800", "-v", env=cli_env(NO_COLOR="1"))
    assert "[✓] gpu.inventory" in verbose.stdout and "5 x NVIDIA H800" in verbose.stdout
    assert len(lines) < len(verbose.stdout.splitlines()) / 2


def test_a_what_if_answers_for_the_named_box_and_says_apart_what_this_host_lacks():
    """This host has torch's CPU build and no flash-attn: that must not make 5xH800 'not ready'."""
    r = avatardoctor("check", "--machine", "5xH800", env=cli_env(NO_COLOR="1"))
    assert r.returncode == exitcodes.READY, r.stdout
    assert "5xH800: Ready" in r.stdout
    assert "To run it on this host, fix sw.torch" in " ".join(r.stdout.split())
    doc = json.loads(avatardoctor("check", "--machine", "5xH800", "--json").stdout)
    assert doc["verdict"] == "ready" and "sw.torch" in doc["this_host_failing"]
    # the named box's own failures still answer: the seeds' 4090s cannot load the model
    demo = avatardoctor("check", "--demo", env=cli_env(NO_COLOR="1"))
    assert demo.returncode == exitcodes.NOT_READY and "5x4090: Not ready" in demo.stdout


def test_gpu_vram_fails_on_24_gb_cards_as_the_docs_say():
    """docs/checks.md: a GPU with less free memory than the bf16 load fails (the seeds' RTX 4090)."""
    vram = run_checks(make_ctx("5x4090-pcie"), (gpu.check_vram,)).results[0]
    assert vram.status is Status.FAIL
    assert vram.summary.startswith("GPU 0: 23.55 GiB free < 31.58 GiB")
    assert vram.data["short"] == [0, 1, 2, 3, 4]
    h800 = run_checks(make_ctx("5xH800-healthy"), (gpu.check_vram,)).results[0]
    assert h800.status is Status.PASS


@pytest.mark.parametrize("width", [60, 80])
def test_predict_tables_never_cut_a_figure_when_piped(width):
    r = avatardoctor("predict", "--machine", "8xH100", "--mode", "seed-4gpu", env=cli_env(COLUMNS=str(width)))
    assert "…" not in r.stdout
    assert all(cell_len(line) <= width for line in r.stdout.splitlines()), r.stdout
    doc = json.loads(
        avatardoctor("predict", "--machine", "8xH100", "--mode", "seed-4gpu", "--json", env=cli_env()).stdout
    )
    for g in doc["prediction"]["gpus"]:  # every GPU's peak and headroom, whole
        assert f"{g['peak_gib']:.2f}" in r.stdout and f"{g['headroom_gib']:.2f}" in r.stdout


def test_a_chinese_path_wraps_by_display_width_and_keeps_its_indent(tmp_path):
    ckpt = tmp_path / "模型检查点" / "万象二点二语音到视频十四B模型文件夹"
    r = avatardoctor("check", "--demo", "--ckpt-dir", str(ckpt), env=cli_env(NO_COLOR="1", COLUMNS="60"))
    lines = r.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "[✗] ckpt.layout" in line)
    indent = lines[start].index("checkpoint folder")
    block = lines[start + 1 : next(i for i in range(start + 1, len(lines)) if "[" in lines[i][:8])]
    assert len(block) >= 3  # the path wrapped
    for line in block:
        assert line[:indent].strip() == "" and line[indent] != " ", line
    assert all(cell_len(line) <= 60 for line in lines if not line.startswith("machine:"))


def test_a_terminal_that_cannot_encode_the_marks_gets_ascii_and_no_traceback(tmp_path):
    ckpt = tmp_path / "中文"
    r = avatardoctor("check", "--demo", "--ckpt-dir", str(ckpt), env=cli_env(PYTHONIOENCODING="ascii"))
    assert r.returncode == exitcodes.NOT_READY, r.stderr
    assert "Traceback" not in r.stderr and r.stderr == ""
    assert r.stdout.isascii()
    assert "[x] fit.peak" in r.stdout and "\\u4e2d\\u6587" in r.stdout  # the path escaped, not lost


def test_counts_read_as_english():
    r = avatardoctor("check", "--machine", "1xH100", "-v", env=cli_env(NO_COLOR="1"))
    assert "all 1 GPU at full PCIe width" in r.stdout and "1 process)" not in r.stdout
    assert "1 GPUs" not in r.stdout and "1 checks" not in r.stdout and "(1 check)" in r.stdout


def test_ckpt_verify_of_a_missing_folder_is_unreadable_input(tmp_path):
    r = avatardoctor("ckpt", "verify", str(tmp_path / "nowhere"))
    assert r.returncode == exitcodes.USAGE
    assert r.stderr.strip().splitlines() == [
        f"Error: ckpt verify {tmp_path / 'nowhere'}: not found; pass the Wan2.2-S2V-14B checkpoint folder"
    ]


def test_a_crashed_check_exits_3_not_1(monkeypatch, capsys):
    """A bug in a check says nothing about the machine: a Slurm prolog must not drain the node for it."""
    from avatardoctor import cli, doctor
    from avatardoctor.checks import ALL_CHECKS
    from avatardoctor.checks.base import check

    @check("test.crash", "GPUs")
    def crashing(ctx):  # the bug: a check that raises
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(doctor, "diagnose", lambda ctx: run_checks(ctx, (*ALL_CHECKS, crashing)))
    monkeypatch.setattr(sys, "argv", ["avatardoctor", "check", "--machine", str(MACHINES / "5xH800-healthy.json")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == exitcodes.CRASHED
    assert "No verdict: 1 check crashed (test.crash), an avatardoctor bug." in " ".join(capsys.readouterr().out.split())
