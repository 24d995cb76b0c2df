"""Xid errors and GPU health during a run: the kernel log read from a real file (AVATARDOCTOR_KERNEL_LOG) and judged
by gpu.xid; NVML's Xid events and health readings through the real binding over the fake driver
(tests/fake_pynvml), written by the sampler to logs/gpu_health.csv; and what the report and the classifier make of
that file."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_ctx
from fake_pynvml import boxes, install
from schemas import assert_valid

from avatardoctor.checks.base import Status
from avatardoctor.checks.health import check_xid
from avatardoctor.cli import cli
from avatardoctor.errors import InputError
from avatardoctor.machine.kernellog import ENV_PATH
from avatardoctor.machine.nvml import NvmlBackend
from avatardoctor.machine.recorded import read_machine_file
from avatardoctor.reports.render import render_report
from avatardoctor.runner.classify import classify, read_health_xids
from avatardoctor.runner.folder import new_run_folder
from avatardoctor.runner.sampler import HEALTH_COLUMNS, MEMORY_COLUMNS, MemorySampler

GPU1_BUS = "0000:28:00"  # r535 boxes: GPU i at bus 0x18 + 0x10 * i
KMSG_79 = (
    "6,1201,5123456,-;nvidia-nvswitch0: probe\n"
    f"4,1202,812345678,-;NVRM: Xid (PCI:{GPU1_BUS}): 79, pid=4242, name=python, GPU has fallen off the bus.\n"
)
DMESG_13 = f"[  120.500000] NVRM: Xid (PCI:{GPU1_BUS}): 13, pid=77, Graphics Exception: ESR 0x404600=0x80000002\n"


def xid_ctx(monkeypatch, tmp_path, log: str | None, box=None, visible="1"):
    install(monkeypatch, box or boxes.r535_ailing_h100())
    path = tmp_path / "kernel.log"
    if log is not None:
        path.write_text(log)
    monkeypatch.setenv(ENV_PATH, str(path))
    return make_ctx(NvmlBackend().snapshot(), env={"CUDA_VISIBLE_DEVICES": visible})


def test_a_gpu_that_fell_off_the_bus_since_boot_fails_with_its_remedy(monkeypatch, tmp_path):
    ctx = xid_ctx(monkeypatch, tmp_path, KMSG_79)
    (event,) = ctx.machine.kernel_xids.events
    assert (event.xid, event.gpu, event.since_boot_s) == (79, 1, pytest.approx(812.345678))
    outcome = check_xid.run(ctx)
    assert outcome.status is Status.FAIL and "GPU 1" in outcome.summary and "fell off the bus" in outcome.summary
    assert "reboot" in (outcome.remedy or "") and "812 s since boot" in outcome.details[0]


def test_a_kernel_log_with_digit_runs_no_number_has_still_gives_its_real_xids(monkeypatch, tmp_path):
    """The kernel log is read as text: a run of digits longer than any Xid or timestamp is not one (int() would
    refuse it past 4,300 digits, a crash in check), and the lines after it still count."""
    damaged = f"[ 1.0] NVRM: Xid (PCI:{GPU1_BUS}): {'9' * 5000}, pid=1\n" + f"{'7' * 5000},1,2,-;x\n" + KMSG_79
    ctx = xid_ctx(monkeypatch, tmp_path, damaged)
    assert [(e.xid, e.gpu) for e in ctx.machine.kernel_xids.events] == [(79, 1)]
    assert check_xid.run(ctx).status is Status.FAIL


def test_an_application_xid_warns_without_blaming_the_gpu(monkeypatch, tmp_path):
    outcome = check_xid.run(xid_ctx(monkeypatch, tmp_path, DMESG_13))
    assert (
        outcome.status is Status.WARN and "13" in outcome.summary and "CUDA_LAUNCH_BLOCKING" in (outcome.remedy or "")
    )


def test_no_xid_since_boot_passes_and_an_xid_on_another_gpu_is_not_the_ranks(monkeypatch, tmp_path):
    assert check_xid.run(xid_ctx(monkeypatch, tmp_path, "6,1,1,-;Linux version 6.8\n")).status is Status.PASS
    assert check_xid.run(xid_ctx(monkeypatch, tmp_path, KMSG_79, visible="0")).status is Status.PASS


def test_an_unreadable_kernel_log_is_skipped_with_the_reason(monkeypatch, tmp_path):
    outcome = check_xid.run(xid_ctx(monkeypatch, tmp_path, None))
    assert outcome.status is Status.SKIP and "kernel.log" in outcome.summary
    assert "No such file" in outcome.summary and "NVML reports" in outcome.summary  # r535: Xid events on every GPU


def test_a_kernel_log_that_never_ends_is_not_waited_on(monkeypatch, tmp_path):
    """/dev/kmsg blocks at its end unless read non-blocking; a FIFO without a writer plays that here."""
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    install(monkeypatch, boxes.r535_ailing_h100())
    monkeypatch.setenv(ENV_PATH, str(fifo))
    log = NvmlBackend().snapshot().kernel_xids
    assert log is not None and log.unreadable is None and log.events == ()


def test_recorded_boxes_carry_the_xids_and_check_machine_judges_them(monkeypatch, tmp_path):
    install(monkeypatch, boxes.r535_ailing_h100())
    log = tmp_path / "kernel.log"
    log.write_text(KMSG_79)
    monkeypatch.setenv(ENV_PATH, str(log))
    box = tmp_path / "box.json"
    assert CliRunner().invoke(cli, ["machine", "record", "-o", str(box)]).exit_code == 0
    recorded = json.loads(box.read_text())
    assert_valid(recorded)
    assert recorded["kernel_xids"]["events"][0]["gpu"] == 1 and recorded["gpus"][1]["health"]["xid_events"] is True
    result = CliRunner().invoke(cli, ["check", "--machine", str(box), "--json", "--gpus", "1"])
    found = {r["id"]: r for r in json.loads(result.output)["checks"]}
    assert found["gpu.xid"]["status"] == "fail", found["gpu.xid"]
    del recorded["kernel_xids"]  # a recording from before gpu.xid
    box.write_text(json.dumps(recorded))
    result = CliRunner().invoke(cli, ["check", "--machine", str(box), "--json"])
    assert {r["id"]: r["status"] for r in json.loads(result.output)["checks"]}["gpu.xid"] == "skip"


@pytest.mark.parametrize(
    "event, message",
    [
        ({"xid": 79, "pci_bus_id": "0000:18:00", "gpu": 9}, r"kernel_xids\.events\[0\]\.gpu must be a GPU index"),
        ({"xid": "79", "pci_bus_id": "0000:18:00"}, r"kernel_xids\.events\[0\]\.xid must be an integer"),
        ({"xid": 79, "pci_bus_id": "0000:18:00", "since_boot_s": "now"}, r"since_boot_s must be seconds"),
    ],
)
def test_a_bad_xid_field_in_a_machine_file_is_a_one_line_error(tmp_path, event, message):
    doc = json.loads(Path("tests/fixtures/machines/5xH800-healthy.json").read_text())
    doc["kernel_xids"] = {"source": "/dev/kmsg", "unreadable": None, "events": [event]}
    box = tmp_path / "box.json"
    box.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=message) as err:
        read_machine_file(box)
    assert str(box) in str(err.value) and "\n" not in str(err.value)


# ---- during a run: the sampler's logs/gpu_health.csv --------------------------------------------------------------


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    """Poll until condition() holds; the timeout only guards against a hang, it measures nothing."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


def health_rows(folder) -> list[dict]:
    with open(folder.gpu_health_csv, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def xid_run(monkeypatch, tmp_path):
    """A run folder whose sampler watched the box where GPU 1 falls off the bus (Xid 79) during the run."""
    lib = install(monkeypatch, boxes.r535_xid_during_run())
    folder = new_run_folder(tmp_path / "runs", "tpp")
    sampler = MemorySampler(folder, hz=10, source="nvml")
    sampler.start()
    try:
        wait_for(lambda: len({r["elapsed_s"] for r in health_rows(folder)}) >= 2, "two health readings")
    finally:
        sampler.stop()
    assert lib.initialised == 0 and lib.event_sets == {}  # the event set freed, NVML shut down
    return folder


def test_the_health_csv_has_a_row_per_gpu_each_second_and_the_xid_once(xid_run):
    rows = health_rows(xid_run)
    assert list(rows[0]) == HEALTH_COLUMNS
    assert {r["gpu"] for r in rows} == {"0", "1"}
    gpu1 = [r for r in rows if r["gpu"] == "1"]
    assert [r["xid"] for r in gpu1][:2] == ["79", ""]  # reported once, in the reading after it happened
    first = gpu1[0]
    assert (first["temperature_c"], first["power_w"], first["throttle"]) == ("87", "700.0", "power cap")
    assert (first["ecc_volatile_uncorrected"], first["repair_pending"], first["xid_watched"]) == ("0", "0", "1")
    assert {r["xid_watched"] for r in rows if r["gpu"] == "0"} == {"0"}  # its driver refuses Xid events: said so
    with open(xid_run.gpu_memory_csv, newline="") as f:
        assert next(csv.reader(f)) == MEMORY_COLUMNS  # the memory timeline's columns are unchanged


def test_the_classifier_names_the_xid_the_log_does_not_mention(xid_run):
    log = [(3.0, "[rank0]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970")]
    failure = classify(log, 1, nproc=2, xids=read_health_xids(xid_run.gpu_health_csv))
    assert failure.cls == "gpu-fault" and failure.gpu == 1 and "Xid 79" in failure.message
    assert "fell off the bus" in (failure.remedy or "")
    assert classify(log, 1, nproc=2).cls == "nccl"  # without the health file: what the log says
    assert classify(log, 0, nproc=2, xids=read_health_xids(xid_run.gpu_health_csv)).cls == "success"


def test_the_report_lists_the_health_events(xid_run):
    index = render_report(xid_run.root)
    summary = json.loads((index.parent / "summary.json").read_text())
    assert_valid({**summary})
    kinds = {(e["gpu"], e["kind"]) for e in summary["health_events"]}
    assert kinds == {("1", "xid"), ("1", "throttle")}
    html, markdown = index.read_text(), (index.parent / "report.md").read_text()
    for text in (e["text"] for e in summary["health_events"]):
        assert text in markdown
    assert (
        "GPU health" in html and "Xid 79: the GPU fell off the bus" in html and "clocks held down (power cap)" in html
    )


def test_an_ecc_increment_and_a_pending_repair_are_events(tmp_path):
    folder = new_run_folder(tmp_path / "runs", "tpp")
    rows = [HEALTH_COLUMNS] + [
        ["t", f"{s}.0", "0", "60", "300.0", "none", str(ecc), str(pending), "1", ""]
        for s, ecc, pending in ((0, 0, 0), (1, 0, 0), (2, 2, 1), (3, 2, 1))
    ]
    with open(folder.gpu_health_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    summary = json.loads((render_report(folder.root).parent / "summary.json").read_text())
    assert [(e["kind"], e["at_s"]) for e in summary["health_events"]] == [("ecc", 2.0), ("repair", 2.0)]
    assert "from 0 to 2" in summary["health_events"][0]["text"]


def test_the_process_tree_backend_writes_no_health_file(tmp_path):
    folder = new_run_folder(tmp_path / "runs", "single")
    sampler = MemorySampler(folder, hz=10, source="psutil")
    sampler.start()
    try:
        wait_for(lambda: sampler.samples_taken >= 1, "a sample")
    finally:
        sampler.stop()
    assert folder.gpu_memory_csv.is_file() and not folder.gpu_health_csv.exists()
    assert read_health_xids(folder.gpu_health_csv) == []


HEALTH_HEADER = (
    "time,elapsed_s,gpu,temperature_c,power_w,throttle,ecc_volatile_uncorrected,repair_pending,xid_watched,xid\n"
)


@pytest.mark.parametrize(
    "damage, note",
    [
        ("t,2.0,0,50,100," + "x" * 200_000 + ",0,0,1,\n", "stopped reading at line"),  # over csv's field limit
        ("t,2.0,0,50,100,none,0,0,1," + "9" * 5000 + "\n", None),  # an "Xid" longer than int() will parse
        ("t,2.0,0,50,100,none," + "9" * 5000 + ",0,1,\n", None),  # an ECC count as long
    ],
)
def test_a_damaged_health_csv_keeps_what_reads_and_never_crashes_the_report(tmp_path, damage, note):
    """A run folder is untrusted input: the report and the classifier keep the rows before the damage."""
    from runfixture import make_run

    root = make_run(tmp_path / "run", gpus=1, oom_gpu=None)
    health = root / "logs" / "gpu_health.csv"
    health.write_text(HEALTH_HEADER + "t,1.0,0,50,100,none,0,0,1,79\n" + damage)
    render_report(root)
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert [e["kind"] for e in summary["health_events"]] == ["xid"]  # the Xid 79 before the damage
    assert (note is None) or any(note in n for n in summary["notes"])
    assert [(x.gpu, x.xid) for x in read_health_xids(health)] == [(0, 79)]
