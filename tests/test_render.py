"""The human view compared line by line with a golden file (colour off), and the crash guard."""

from __future__ import annotations

import io
import os
from pathlib import Path

from conftest import FIXTURES, make_ctx
from rich.console import Console

from avatardoctor.checks import gpu, nccl, run_checks, topology
from avatardoctor.checks.base import Status, check
from avatardoctor.render import render_human

GOLDEN = FIXTURES / "golden"
# Checks whose answers depend only on the recorded machine and the given environment.
DETERMINISTIC = (*gpu.CHECKS, *topology.CHECKS, *nccl.CHECKS)


def rendered(report, verbose=False, width=100) -> str:
    out = io.StringIO()
    render_human(report, Console(file=out, width=width, no_color=True, highlight=False), verbose=verbose)
    return out.getvalue()


def compare_with_golden(name: str, text: str) -> None:
    text = text.replace(str(FIXTURES), "tests/fixtures")  # wherever the checkout lives
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"output changed; if intended, rerun with UPDATE_GOLDEN=1 and review {path}"


def test_golden_5x4090_pcie_with_the_seeds_nccl_recipe():
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1", "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "3600"}
    report = run_checks(make_ctx("5x4090-pcie", env=env), DETERMINISTIC)
    compare_with_golden("5x4090-pcie.txt", rendered(report))


def test_golden_busy_h800_verbose():
    report = run_checks(make_ctx("5xH800-gpu2-busy", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4"}), DETERMINISTIC)
    compare_with_golden("5xH800-gpu2-busy-verbose.txt", rendered(report, verbose=True))


def test_lines_fit_the_width_and_carry_no_padding():
    report = run_checks(make_ctx("5x4090-pcie"), DETERMINISTIC)
    for line in rendered(report, width=72).splitlines():
        assert line == line.rstrip()
        assert len(line) <= 72 or "GPU0" in line or line.startswith("machine:")  # matrix rows are never broken


def test_a_crashing_check_becomes_a_failed_result_and_the_rest_still_run():
    @check("test.boom", "Tests")
    def boom(ctx):
        return {}["missing"]

    report = run_checks(make_ctx("5xH800-healthy"), (boom, gpu.check_inventory))
    crashed, inventory = report.results
    assert crashed.status is Status.FAIL and crashed.data == {"crashed": True}
    assert crashed.summary == "this check crashed: KeyError: 'missing'"
    assert crashed.details[0].startswith(f"at {Path(__file__).name}:")
    assert inventory.status is Status.PASS
    assert not report.ready and report.verdict == "not-ready"
