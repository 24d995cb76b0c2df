"""Output read at a glance (issue 17): one line per group, the what-if's answer apart from this host's
software, tables and wrapping by display width, an ASCII fallback, plurals, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert "[✓] GPUs (10 checks)" in lines and "[✓] Topology (2 checks)" in lines and "[✓] Network (1 check)" in lines
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


@pytest.mark.parametrize(
    "spec, name, mib",
    [
        ("2xH20", "NVIDIA H20", 97871),
        ("4xA800", "NVIDIA A800-SXM4-80GB", 81920),
        ("1xRTX-PRO-6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887),
        ("2xL20", "NVIDIA L20", 46068),
        ("5x4090-48GB", "NVIDIA GeForce RTX 4090", 49140),
        ("8xB200", "NVIDIA B200", 183359),
    ],
)
def test_the_catalogue_has_the_cards_people_ask_for(spec, name, mib):
    doc = json.loads(avatardoctor("check", "--machine", spec, "--json").stdout)
    gpus = doc["machine"]["gpus"]
    assert len(gpus) == int(spec.split("x")[0]) and gpus[0]["name"] == name
    assert gpus[0]["total_bytes"] == mib * 2**20


def test_a_box_nobody_recorded_yet_from_a_toml_file_and_the_users_own_catalogue(tmp_path):
    card = (
        '[[card]]\nkey = "L20-lab"\nname = "NVIDIA L20"\nmemory_mib = 46068\ncompute_capability = "8.9"\npcie_gen = 4\n'
    )
    box = tmp_path / "box.toml"
    box.write_text('gpus = 4\nmodel = "L20-lab"\n\n' + card)
    doc = json.loads(avatardoctor("check", "--machine", str(box), "--json").stdout)
    assert doc["machine"]["source"] == f"catalogue:{box}" and len(doc["machine"]["gpus"]) == 4
    config = tmp_path / "config"
    (config / "avatardoctor").mkdir(parents=True)
    (config / "avatardoctor" / "machines.toml").write_text(card)
    env = cli_env(XDG_CONFIG_HOME=str(config))
    assert json.loads(avatardoctor("check", "--machine", "3xL20-lab", "--json", env=env).stdout)["machine"]["gpus"]
    assert "L20-lab" in avatardoctor("machine", "list", env=env).stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('gpus = 2\nmodel = "L20-lab"\n[[card]]\nkey = "L20-lab"\nname = "x"\nmemory_mib = "lots"\n')
    r = avatardoctor("check", "--machine", str(bad))
    assert r.returncode == exitcodes.USAGE and "Traceback" not in r.stderr
    assert f"--machine {bad}: card 'L20-lab': memory_mib must be int, not 'lots'" in r.stderr


def test_machine_completes_catalogue_specs_in_the_shell():
    env = cli_env(_AVATARDOCTOR_COMPLETE="bash_complete", COMP_WORDS="avatardoctor check --machine 2xH", COMP_CWORD="3")
    exe = str(Path(sys.executable).parent / "avatardoctor")  # completion is driven through the console script
    r = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=60)
    assert "plain,2xH20" in r.stdout.splitlines() and "plain,2xH800" in r.stdout.splitlines()
    assert all(line.startswith("plain,2xH") for line in r.stdout.splitlines())
