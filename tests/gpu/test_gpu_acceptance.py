"""The GPU acceptance run without a GPU: run.sh end to end in "no CUDA" mode, and every step's judgement
fed what the real code gives against a fake NVML (tests/fake_pynvml), the real runner and shim, the real
classifier and the real CLI. What only a GPU can give (a CUDA allocation, a memory snapshot, NCCL) is
the one thing these tests make up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import gpu_acceptance as acceptance
import pytest
from click.testing import CliRunner
from fake_pynvml import boxes, install

from avatardoctor.cli import cli
from avatardoctor.machine.nvml import NvmlBackend
from avatardoctor.machine.recorded import read_machine_file

MIB, GIB = 2**20, 2**30
GPU_RUNS = sorted(acceptance.FIXTURES.glob("gpu-run-*.json"))


def cuda_here() -> bool:
    return acceptance.why_no_cuda(acceptance.torch_view()) is None


# ---- the script, here ----------------------------------------------------------------------------------


@pytest.mark.skipif(cuda_here(), reason="CUDA works here: run tests/gpu/run.sh itself")
def test_without_cuda_every_step_is_skipped_and_the_run_exits_0(tmp_path):
    out = tmp_path / "results"
    fixtures_before = sorted(acceptance.FIXTURES.iterdir())
    run = subprocess.run(
        ["bash", str(acceptance.HERE / "run.sh"), "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [name for name, _ in acceptance.STEPS]
    assert all(": skipped: no CUDA (" in line for line in lines[:-1])
    assert lines[-1] == f"results: {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == acceptance.SCHEMA and summary["passed"] is True and summary["no_cuda"]
    assert {s["status"] for s in summary["steps"]} == {"skipped"}
    assert (out / "summary.md").read_text().count("| skipped |") == len(acceptance.STEPS)
    assert sorted(acceptance.FIXTURES.iterdir()) == fixtures_before  # nothing recorded, nothing saved


def test_a_step_that_crashes_fails_alone_and_says_where_its_traceback_is(tmp_path):
    def broken(box):
        raise KeyError("gpus")

    result = acceptance.run_step(acceptance.Box(tmp_path, []), "record", broken)
    assert result.status == "failed" and result.summary.startswith("crashed: KeyError: 'gpus'")
    assert "KeyError" in (tmp_path / "logs" / "record-traceback.txt").read_text()


@pytest.mark.parametrize("path", GPU_RUNS, ids=[p.stem for p in GPU_RUNS])
def test_machines_recorded_by_the_gpu_run_load_as_real_recordings(path):
    """Each fixture the record step saved (none until the run has been on a GPU: then this has cases)."""
    machine = read_machine_file(path)
    assert machine.gpus and machine.driver_version and machine.recorded_at and machine.nvml_error is None
    assert all(g.uuid.startswith("GPU-") for g in machine.gpus)


# ---- record ----------------------------------------------------------------------------------------------


def torch_devices(machine) -> list[dict]:
    """torch's view of a machine, as TORCH_VIEW prints it: CUDA ordinals in PCI order."""
    return [
        {"ordinal": g.index, "name": g.name, "uuid": g.uuid, "total_bytes": g.total_bytes - GIB, "cc": list(g.cc)}
        for g in machine.gpus
    ]


def test_record_passes_when_nvml_and_cuda_name_the_same_gpus(monkeypatch):
    install(monkeypatch, boxes.r535_hgx_h100())
    machine = NvmlBackend().snapshot()
    ok, summary, facts = acceptance.judge_record(machine, torch_devices(machine))
    assert ok, summary
    assert summary == "8 x NVIDIA H100 80GB HBM3, driver 535.183.01"
    assert facts["gpus"][0]["nvml_total_mib"] - facts["gpus"][0]["cuda_total_mib"] == 1024
    assert acceptance.fixture_name(machine).startswith("gpu-run-8xH100-80GB-HBM3-r535-")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda devices: devices.pop(), "NVML lists 8 GPUs, CUDA 7"),
        (lambda devices: devices[2].update(uuid="GPU-other"), "CUDA device 2 is GPU-other"),
        (lambda devices: devices[5].update(name="NVIDIA H800"), "CUDA device 5 is 'NVIDIA H800'"),
    ],
)
def test_record_fails_when_they_disagree(monkeypatch, change, message):
    install(monkeypatch, boxes.r535_hgx_h100())
    machine = NvmlBackend().snapshot()
    devices = torch_devices(machine)
    change(devices)
    ok, summary, _ = acceptance.judge_record(machine, devices)
    assert not ok and summary.startswith(message)


def test_record_fails_on_a_box_nvml_cannot_describe(monkeypatch):
    install(monkeypatch, boxes.r550_mig_h100())
    ok, summary, _ = acceptance.judge_record(NvmlBackend().snapshot(), [{}, {}])
    assert not ok and "MIG mode" in summary


# ---- check -----------------------------------------------------------------------------------------------


def completed(args: list[str]) -> subprocess.CompletedProcess:
    result = CliRunner().invoke(cli, args)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def test_check_passes_on_a_live_box_and_its_recording(monkeypatch, tmp_path):
    install(monkeypatch, boxes.r570_one_h200())
    recorded = tmp_path / "machine.json"
    assert completed(["machine", "record", "-o", str(recorded)]).returncode == 0
    runs = {
        "check": completed(["check"]),
        "check --json": completed(["check", "--json"]),
        "check --machine --json": completed(["check", "--machine", str(recorded), "--json"]),
    }
    ok, summary, facts = acceptance.judge_check(runs, acceptance.check_validator(), gpus=1)
    assert ok, summary
    assert facts["check --json"]["schema_errors"] == [] and facts["check --machine --json"]["verdict"]


def test_check_fails_on_a_usage_error_an_invalid_document_or_another_machine(monkeypatch):
    install(monkeypatch, boxes.r570_one_h200())
    good = completed(["check", "--json"])
    validator = acceptance.check_validator()
    bad_usage = subprocess.CompletedProcess([], 2, "", "Error: --size: ...")
    assert not acceptance.judge_check({"check": bad_usage}, validator, 1)[0]
    doc = json.loads(good.stdout)
    doc["checks"][0]["status"] = "okay"
    invalid = subprocess.CompletedProcess([], 1, json.dumps(doc), "")
    ok, summary, _ = acceptance.judge_check({"check --json": invalid}, validator, 1)
    assert not ok and "schema errors" in summary
    ok, summary, _ = acceptance.judge_check({"check --json": good}, validator, gpus=2)
    assert not ok and "saw 1 GPUs from nvml" in summary


# ---- sampler ---------------------------------------------------------------------------------------------


def fake_workload(gpu, context_mib: float = 480, misread_mib: dict | None = None):
    """What workload.py does to a GPU, done to a fake one: each hold held until the sampler has taken
    two samples inside it (never a wall-clock guess), its events as workload.py prints them."""

    def workload(sampler) -> list[dict]:
        base = gpu.used
        events = [{"event": "start", "at": time.monotonic()}]
        for gib in acceptance.HOLDS_GIB:
            reserved = 2 * MIB + gib * GIB
            gpu.used = base + int((context_mib + (misread_mib or {}).get(gib, 0)) * MIB) + reserved
            start, taken = time.monotonic(), sampler.samples_taken
            acceptance.wait_for(lambda: sampler.samples_taken >= taken + 3, "samples inside the hold")
            time.sleep(acceptance.EDGE_S)
            events.append(
                {"event": "hold", "gib": gib, "reserved_bytes": reserved, "from": start, "to": time.monotonic()}
            )
        gpu.used = base
        return events

    return workload


@pytest.mark.parametrize("hz", acceptance.SAMPLER_RATES)
def test_the_sampler_step_passes_when_nvml_tracks_the_allocations(monkeypatch, tmp_path, hz):
    box = boxes.r570_one_h200()
    install(monkeypatch, box)
    measured = acceptance.measure_sampler(tmp_path / "run", hz, 0, fake_workload(box.gpus[0]))
    ok, summary, facts = acceptance.judge_sampler(measured)
    assert ok, summary
    assert facts["context_mib"] == pytest.approx(480, abs=0.2)  # the CSV keeps 0.1 MiB
    assert [h["gib"] for h in facts["holds"]] == list(acceptance.HOLDS_GIB)
    assert all(h["samples"] >= 2 and h["worst_error_mib"] < 0.2 for h in facts["holds"])
    assert facts["peak_mib"] == pytest.approx(facts["peak_expected_mib"], abs=0.2)
    assert 0 <= facts["cpu_share_of_a_core"] and facts["mean_sample_ms"] > 0


def test_the_sampler_step_fails_when_a_hold_is_misread(monkeypatch, tmp_path):
    """The 16 GiB hold reads 200 MiB high: past 64 MiB + 0.5% of 16 GiB (146 MiB)."""
    box = boxes.r570_one_h200()
    install(monkeypatch, box)
    workload = fake_workload(box.gpus[0], misread_mib={16: 200})
    ok, summary, _ = acceptance.judge_sampler(acceptance.measure_sampler(tmp_path / "run", 100, 0, workload))
    assert not ok and "16 GiB hold: a sample 200 MiB from" in summary and "peak" in summary


def test_the_sampler_step_fails_without_a_sample_in_a_hold():
    events = [{"event": "start", "at": 1.0}, {"event": "hold", "gib": 0, "reserved_bytes": 2 * MIB, "from": 2, "to": 3}]
    events.append({"event": "hold", "gib": 1, "reserved_bytes": GIB + 2 * MIB, "from": 4.0, "to": 5.0})
    measured = acceptance.SamplerRun(10, "0", [(0.5, 100.0), (2.5, 600.0)], events, 600.0, 0.01, 5.0, 0.001)
    ok, summary, _ = acceptance.judge_sampler(measured)
    assert not ok and "no sample inside the 1 GiB hold" in summary


# ---- oom -------------------------------------------------------------------------------------------------

REQUEST = 150 * GIB
# What oom_entry.py prints, ending with torch's own out-of-memory message for that request (its format
# in torch 2.x's CUDACachingAllocator; tests/fixtures/logs/tpp_oom_clip3_rank2.log has a recorded one).
OOM_ENTRY = f"""
import torch
print("Creating WanS2V pipeline.", flush=True)
print("Generating video ...", flush=True)
print("complete prepare conditional inputs", flush=True)
print("acceptance: requesting {REQUEST} bytes on cuda:0 (74 GiB free, 68 GiB held)", flush=True)
raise torch.OutOfMemoryError(
    "CUDA out of memory. Tried to allocate 150.00 GiB. GPU 0 has a total capacity of 139.72 GiB of which 74.12 GiB "
    "is free. Including non-PyTorch memory, this process has 65.60 GiB memory in use. Of the allocated memory "
    "64.00 GiB is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated."
)
"""


@pytest.fixture(scope="module")
def oom_run(tmp_path_factory):
    """The real runner and shim run a rank that dies of that message (CUDA_VISIBLE_DEVICES=3: the rank's GPU 0
    is NVML's GPU 3); then the shim's observer records the allocation, as CUDA's allocator would have it call."""
    pytest.importorskip("torch", reason="the rank imports torch: the [torch] extra")
    from avatardoctor.runner.shim import Recorder

    tmp = tmp_path_factory.mktemp("oom")
    entry = tmp / "oom_entry.py"
    entry.write_text(OOM_ENTRY)
    result = acceptance.launch(acceptance.Box(tmp, [], target=3), "gpu-oom", [str(entry)])
    rank = acceptance.rank_record(result.folder)
    recorder = Recorder(0, tmp)
    recorder.on_oom(0, REQUEST, 64 * GIB, 74 * GIB)
    rank["oom"] = recorder.doc["oom"]
    return result.failure.to_dict(), rank, result.folder.inference_log.read_text()


def test_the_oom_step_passes_on_the_runners_own_classification(oom_run):
    failure, rank, log = oom_run
    ok, summary, facts = acceptance.judge_oom(failure, rank, log, expected_gpu=3)
    assert ok, summary
    assert summary == "GPU 3, 150 GiB, during clip 1 denoise; the shim agrees"
    assert facts["failure"]["tried_to_allocate_mib"] == 150 * 1024


def test_the_oom_remedy_names_the_gpu_as_the_failure_does(oom_run):
    failure, _, _ = oom_run
    assert failure["gpu"] == 3 and failure["remedy"].startswith("GPU 3 ran out of memory")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, r: f.update(gpu=0), "GPU 0 named, expected 3"),
        (lambda f, r: f.update(phase="load"), "phase 'load'"),
        (lambda f, r: f.update(tried_to_allocate_mib=2048.0), "tried to allocate 2048.0 MiB"),
        (lambda f, r: f.update({"class": "crashed"}), "classified 'crashed'"),
        (lambda f, r: r.update(oom=None), "the shim recorded no out-of-memory"),
        (lambda f, r: r["oom"].update(device=1), "the shim saw"),
        (lambda f, r: r.update(exit="ok"), "the shim says the rank ended with 'ok'"),
    ],
)
def test_the_oom_step_fails_when_any_part_disagrees(oom_run, change, message):
    failure, rank, log = json.loads(json.dumps(oom_run[:2])) + [oom_run[2]]
    change(failure, rank)
    ok, summary, _ = acceptance.judge_oom(failure, rank, log, expected_gpu=3)
    assert not ok and message in summary


# ---- memory-history ----------------------------------------------------------------------------------------

DEMO_ON_GPU = "[+    2.000s] demo: 1 rank on GPU 0 with nccl\n"
SHIM_EVENTS = {"events": [{"event": "exit", "max_allocated_mib": 12.5, "max_reserved_mib": 22.0}]}


def test_the_memory_history_step_passes_when_the_snapshot_opens_and_the_peaks_agree():
    viz = {"stats": 0, "trace_plot": 0}
    ok, summary, _ = acceptance.judge_memory_history("success", DEMO_ON_GPU, viz, SHIM_EVENTS, 540.0)
    assert ok and summary == "snapshot opens; shim peaks 12/22 MiB, NVML 540 MiB"


@pytest.mark.parametrize(
    "args, message",
    [
        (("crashed", DEMO_ON_GPU, {"stats": 0}, SHIM_EVENTS, 540.0), "the demo ended crashed"),
        (("success", "demo: 1 rank on the CPU with gloo", {"stats": 0}, SHIM_EVENTS, 540.0), "not run on the GPU"),
        (("success", DEMO_ON_GPU, {}, SHIM_EVENTS, 540.0), "no memory snapshot"),
        (("success", DEMO_ON_GPU, {"trace_plot": 1}, SHIM_EVENTS, 540.0), "trace_plot exited 1"),
        (("success", DEMO_ON_GPU, {"stats": 0}, {"events": [{"event": "exit"}]}, 540.0), "the shim's CUDA peaks"),
        (("success", DEMO_ON_GPU, {"stats": 0}, SHIM_EVENTS, 20.0), "below torch's reserved"),
    ],
)
def test_the_memory_history_step_fails_on_each_missing_piece(args, message):
    ok, summary, _ = acceptance.judge_memory_history(*args)
    assert not ok and message in summary


# ---- nccl ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nccl_json(tmp_path_factory) -> subprocess.CompletedProcess:
    """The real `avatardoctor nccl --json`, on gloo: the document the step reads, as the command prints it."""
    pytest.importorskip("torch", reason="the ranks import torch: the [torch] extra")
    argv = [sys.executable, "-m", "avatardoctor", "nccl", "--backend", "gloo", "--nproc", "2", "--json"]
    argv += ["--master-port", str(acceptance.free_port())]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    )


def outcome_from(cli: subprocess.CompletedProcess, world: int = 2, p2p=((200.0, 150.0), (150.0, 200.0))):
    """The NcclOutcome the step gets from run_test, rebuilt from the command's rows, with a P2P matrix."""
    from avatardoctor.nccltest.launch import NcclOutcome

    live = next(c for c in json.loads(cli.stdout)["checks"] if c["id"] == "nccl.live")
    rows = live["data"]["allreduce"]
    return NcclOutcome(True, None, "talked", None, {}, rows, [], [list(r) for r in p2p], [], 0, 1.0)


def reference_from(outcome, scale: float) -> dict:
    return {"world_size": 2, "allreduce": [{**r, "algbw_gbs": r["algbw_gbs"] * scale} for r in outcome.allreduce]}


def document_errors(cli) -> list[str]:
    return acceptance.schema_errors(acceptance.check_validator(), json.loads(cli.stdout))


def test_the_nccl_commands_json_is_a_check_document(nccl_json):
    assert nccl_json.returncode == 0, nccl_json.stderr
    assert document_errors(nccl_json) == []
    broken = subprocess.CompletedProcess([], 0, nccl_json.stdout.replace('"status": "pass"', '"status": "good"'), "")
    assert document_errors(broken)


def test_the_nccl_step_passes_when_the_figures_agree(nccl_json):
    outcome = outcome_from(nccl_json)
    ok, summary, facts = acceptance.judge_nccl(nccl_json, [], outcome, reference_from(outcome, 1.3), world=2)
    assert ok, summary
    assert facts["algbw_ratio"] == pytest.approx(1 / 1.3, rel=1e-3)


@pytest.mark.parametrize(
    "spoil, message",
    [
        ({"scale": 3.0}, "0.33x the reference's"),
        ({"p2p": ((200.0,),)}, "the P2P matrix is not 2 x 2"),
        ({"busbw": 2.0}, "is not algbw"),
        ({"reference": None}, "no reference all_reduce figures"),
        ({"exit": 2}, "avatardoctor nccl exited 2"),
        ({"document": ["checks/0/status: 'good' is not one of"]}, "nccl --json against the check/1 schema"),
    ],
)
def test_the_nccl_step_fails_on_each_disagreement(nccl_json, spoil, message):
    cli = nccl_json if "exit" not in spoil else subprocess.CompletedProcess([], spoil["exit"], "", "Error: ...")
    outcome = outcome_from(nccl_json, p2p=spoil.get("p2p", ((200.0, 150.0), (150.0, 200.0))))
    if "busbw" in spoil:
        outcome.allreduce[-1] = {**outcome.allreduce[-1], "busbw_gbs": outcome.allreduce[-1]["algbw_gbs"] * 2}
    reference = spoil.get("reference", reference_from(outcome, spoil.get("scale", 1.0)))
    ok, summary, _ = acceptance.judge_nccl(cli, spoil.get("document", []), outcome, reference, world=2)
    assert not ok and message in summary


# ---- demo ------------------------------------------------------------------------------------------------


def test_the_demo_step_on_fewer_gpus_than_ranks_expects_gloo_on_the_cpu():
    text = "[+ 3.1s] demo: 5 ranks on the CPU with gloo (1 GPU for 5 ranks)\n"
    ok, summary, facts = acceptance.judge_demo(0, text, gpus=1)
    assert ok and summary == "5 ranks on the CPU with gloo (1 GPU for 5 ranks)" and facts["exit_code"] == 0
    ok, summary, _ = acceptance.judge_demo(0, text, gpus=8)
    assert not ok and "missing 'demo: 5 ranks on GPUs 0-4 with nccl'" in summary


def test_the_demo_step_fails_on_nccls_duplicate_gpu():
    text = "demo: 5 ranks on GPUs 0-4 with nccl\n"
    text += "ncclInvalidUsage: Duplicate GPU detected : rank 1 and rank 0 both on CUDA device 1a000\n"
    ok, summary, _ = acceptance.judge_demo(1, text, gpus=5)
    assert not ok and summary == "NCCL refused: duplicate GPU; exit code 1"


def test_the_recorded_machine_of_the_gpu_run_would_be_named_after_the_box(monkeypatch):
    install(monkeypatch, boxes.r470_workstation())
    name = acceptance.fixture_name(NvmlBackend().snapshot())
    assert name.startswith("gpu-run-4xGeForce-RTX-3090-r470-") and name.endswith(".json")
