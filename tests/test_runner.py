"""The runner end to end: the real torchrun launching a fake Live Avatar checkout that behaves as the
real one does (and fails as it fails), real signals, real run folders, and no rank left behind."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

pytest.importorskip("torch", reason="the runner launches torchrun: the [torch] extra; .ci/run installs it")

from avatardoctor.ckpt.components import reference_summary  # noqa: E402
from avatardoctor.config import resolve_config  # noqa: E402
from avatardoctor.demo.memory import ROOT_UNSHARD_BYTES  # noqa: E402
from avatardoctor.estimates import DEFAULT_TERMS  # noqa: E402
from avatardoctor.machine.catalogue import catalogue_machine  # noqa: E402
from avatardoctor.planfile import PlanFile  # noqa: E402
from avatardoctor.predict import predict  # noqa: E402
from avatardoctor.runner.auto import execute_with_port_retry, launch_saved_plan  # noqa: E402
from avatardoctor.runner.run import RunOptions  # noqa: E402
from avatardoctor.runner.run import execute as execute_plan  # noqa: E402

CHECKOUT = Path(__file__).parent / "fixtures" / "fake_liveavatar"
ENTRY = ["minimal_inference/s2v_streaming_interact.py"]
HOSTILE = """it's "quoted"; $(touch /tmp/pwned) `id` & echo $HOME"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan(mode: str = "success", nproc: int = 2, port: int | None = None, prompt: str = "hello", **env) -> dict:
    return {
        "schema": "avatardoctor.plan/1",
        "mode": "tpp",
        "nproc": nproc,
        "master_port": port or free_port(),
        "env": {"FAKE_LIVEAVATAR_MODE": mode, "GLOO_SOCKET_IFNAME": "lo", **env},
        "argv": ["--num_clip", "2", "--infer_frames", "48", "--size", "384*256", "--prompt", prompt],
        "prediction": {"verdict": "fits", "gpus": []},
        "config": {"mode": "tpp", "num_clip": 2},
    }


def execute(doc: dict, opts: RunOptions):
    """The runner on a plan written here as a dict, read through the plan file's own reader."""
    return execute_plan(PlanFile.from_dict(doc, "test plan"), opts)


def checkout(tmp_path) -> Path:
    """A private copy of the fake checkout: the entry writes ./output/ there, as upstream does."""
    copy = tmp_path / "LiveAvatar"
    if not copy.exists():
        shutil.copytree(CHECKOUT, copy, ignore=shutil.ignore_patterns("output", "__pycache__"))
    return copy


def options(tmp_path, **kw) -> RunOptions:
    return RunOptions(
        out_dir=tmp_path / "runs",
        sample_hz=20,
        hang_timeout_s=kw.pop("hang", 60),
        cwd=checkout(tmp_path),
        entry=ENTRY,
        **kw,
    )


def token() -> str:
    """A prompt that names one test's processes: torchrun and every rank carry it in their argv."""
    return f"avatardoctor-test-{uuid.uuid4().hex[:12]}"


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in (p.info["cmdline"] or [])) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def no_survivors(marker: str, timeout_s: float = 30.0) -> list[psutil.Process]:
    """The processes still carrying the marker once a killed process has had time to go (a busy
    machine takes a while to tear one down); empty as soon as they are gone."""
    deadline = time.monotonic() + timeout_s
    while (found := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_a_successful_run_leaves_a_folder_that_explains_itself(tmp_path):
    mark = token()
    result = execute(plan(prompt=mark), options(tmp_path))
    f = result.folder
    assert result.failure.cls == "success" and result.exit_code == 0
    assert f.root.name.endswith("-tpp") and f.plan_json.is_file()
    log = f.inference_log.read_text()
    assert log.startswith("[+") and "Finished." in log
    header = f.gpu_memory_csv.read_text().splitlines()[0]
    assert header == "time,elapsed_s,gpu,uuid,memory_used_mib,memory_total_mib,utilization_pct"
    debug = json.loads(f.debug_json.read_text())
    assert debug["outcome"] == "success" and debug["clips_done"] == 2 and debug["memory_source"] == "psutil"
    assert debug["gpus"][0]["gpu"] == "cpu" and debug["gpus"][0]["measured_peak_gib"] > 0.1  # the fake's 150 MB
    assert f.phases_csv.read_text().startswith("phase,start_s,end_s")
    assert result.report is not None and result.report.is_file()
    assert no_survivors(mark) == []


def test_the_prompt_reaches_the_entry_intact(tmp_path):
    argv_file = tmp_path / "argv.json"
    result = execute(plan("argv-echo", prompt=HOSTILE, FAKE_LIVEAVATAR_ARGV_FILE=str(argv_file)), options(tmp_path))
    assert result.failure.cls == "success"
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--prompt") + 1] == HOSTILE
    assert not Path("/tmp/pwned").exists()


def test_out_of_memory_is_classified_with_gpu_and_allocation(tmp_path):
    result = execute(plan("oom:2:1", CUDA_VISIBLE_DEVICES="3,5"), options(tmp_path))
    f = result.failure
    assert (
        f.cls == "oom" and f.gpu == 5
    )  # the job's GPU 1 is NVML's GPU 5 under CUDA_VISIBLE_DEVICES=3,5 and f.tried_to_allocate_mib == pytest.approx(2.31 * 1024, rel=0.01)
    debug = json.loads(result.folder.debug_json.read_text())
    assert debug["outcome"] == "oom" and debug["failure"]["class"] == "oom"
    summary = json.loads((result.folder.root / "report" / "summary.json").read_text())
    assert summary["outcome"] == "oom"


def test_an_upstream_assertion_names_its_fix(tmp_path):
    result = execute(plan("assert-world"), options(tmp_path))
    assert result.failure.cls == "assertion" and "--num-gpus-dit 4" in (result.failure.remedy or "")


def test_a_hang_is_stopped_and_leaves_no_rank_behind(tmp_path):
    mark = token()
    result = execute(plan("hang:1", prompt=mark), options(tmp_path, hang=3))
    assert result.failure.cls == "hang"
    assert "no output, no CPU work and ~0% GPU use for 3 s" in result.folder.inference_log.read_text()
    assert no_survivors(mark) == []


@pytest.mark.parametrize("how", ["compile:6", "redraw:6"])
def test_a_silent_first_compile_or_a_bar_redrawn_without_a_newline_is_no_hang(tmp_path, how):
    """ENABLE_COMPILE=true: the first torch.compile runs minutes on the CPU inside an unfinished tqdm bar,
    GPUs idle; a slow step redraws its bar with \r and ends no line. Neither is a hang at a 3 s timeout."""
    result = execute(plan(how, prompt=token()), options(tmp_path, hang=3))
    assert result.failure.cls == "success", result.failure
    assert "stopping the job" not in result.folder.inference_log.read_text()


def test_a_held_port_is_swapped_for_a_free_one(tmp_path):
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        result = execute(plan(port=port), options(tmp_path))
    assert result.failure.cls == "success"
    used = json.loads(result.folder.plan_json.read_text())["master_port"]
    assert used != port


def test_attempts_never_share_a_folder(tmp_path):
    a = execute(plan(), options(tmp_path))
    b = execute(plan(), options(tmp_path))
    assert a.folder.root != b.folder.root and a.folder.debug_json.is_file() and b.folder.debug_json.is_file()


def _runner(tmp_path, mode: str, mark: str, hang: int = 60) -> tuple[subprocess.Popen, Path]:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan(mode, prompt=mark)))
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "avatardoctor",
        "run",
        "--plan",
        str(plan_file),
        "--out-dir",
        str(out),
        "--liveavatar",
        str(checkout(tmp_path)),
        "--hang-timeout",
        str(hang),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out


def _wait_for_ranks(mark: str, count: int = 3, timeout: float = 60) -> None:
    """torchrun and both ranks are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(processes_with(mark)) >= count:
            return
        time.sleep(0.1)
    raise AssertionError("the ranks never started")


def test_ctrl_c_stops_every_rank_and_records_interrupted(tmp_path):
    mark = token()
    proc, out = _runner(tmp_path, "hang:2", mark)
    _wait_for_ranks(mark)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode == 130, proc.stderr.read()
    (folder,) = out.iterdir()
    assert json.loads((folder / "debug_info.json").read_text())["outcome"] == "interrupted"
    assert no_survivors(mark) == []


def test_a_runner_killed_outright_leaves_no_rank_behind(tmp_path):
    mark = token()
    proc, _ = _runner(tmp_path, "hang:2", mark)
    _wait_for_ranks(mark)
    proc.kill()  # SIGKILL: no handler runs; the reaper must clean up
    proc.wait(30)
    assert no_survivors(mark) == []


def test_the_memory_csv_survives_a_rank_killed_with_sigkill(tmp_path):
    mark = token()
    proc, out = _runner(tmp_path, "hang:2", mark, hang=5)
    _wait_for_ranks(mark)
    rank = max(processes_with(mark), key=lambda p: p.pid)  # the last rank started
    os.kill(rank.pid, signal.SIGKILL)
    proc.wait(60)
    (folder,) = out.iterdir()
    lines = (folder / "logs" / "gpu_memory.csv").read_text().splitlines()
    assert len(lines) > 2 and all(len(line.split(",")) == 7 for line in lines)
    assert json.loads((folder / "debug_info.json").read_text())["outcome"] in ("crashed", "hang")
    assert no_survivors(mark) == []


def test_a_bad_plan_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text('{"schema": "avatardoctor.plan/1", "argv": "rm -rf /"}')
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "run", "--plan", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and r.stderr.startswith("Error: --plan") and "Traceback" not in r.stderr


def test_saved_plan_runs(tmp_path):
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan()))
    assert launch_saved_plan(plan_file, options(tmp_path), {}, False, False, False).failure.cls == "success"


def test_the_demo_end_to_end(tmp_path):
    """The demo shows the point: each rank (cpu0..cpu4) measured beside its predicted peak, the phases,
    and the root unshard as a rise and fall on every rank during the load."""
    port = free_port()  # the demo takes --master-port as run does
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "demo", "--out-dir", str(tmp_path / "runs"), "--master-port", str(port)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outcome: success" in r.stdout and "report: " in r.stdout
    report = Path(r.stdout.split("report: ")[1].strip())
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["outcome"] == "success" and summary["clips_done"] == 2
    launched = json.loads((report.parent.parent / "plan.json").read_text())["master_port"]
    assert launched == port or (launched > port and "held" in r.stdout + r.stderr)  # taken meanwhile: the next free one
    ranks = {g["gpu"]: g for g in summary["gpus"] if g["gpu"] != "cpu"}
    assert sorted(ranks) == [f"cpu{r}" for r in range(5)]
    for rank in ranks.values():  # each rank beside its own prediction; the unshard makes the load its peak
        assert rank["predicted_peak_gib"] > 0 and rank["predicted_phase"] == "load", rank
    assert any("in place of the CUDA context" in note for note in summary["notes"])  # says what the model lacks
    phases = {p["phase"]: p for p in summary["phases"]}
    assert {"load", "clip 1 denoise", "clip 2 denoise"} <= set(phases)
    # plain torchrun mixes the ranks' unprefixed output: each rank's speed is its shim's record of its own clips
    per_rank = {r["rank"]: r for r in summary["speed"]["per_rank"]}
    assert sorted(per_rank) == list(range(5)) and summary["speed"]["per_rank_note"] is None
    last_clip_end = float(phases["clip 2 denoise"]["end_s"])
    for rank in per_rank.values():  # on the run's clock: after the launch, before the runner saw the last clip end
        assert len(rank["clip_s"]) == 2 and 0 < rank["load_s"] <= last_clip_end, rank
    samples = list(csv.DictReader((report.parent.parent / "logs" / "gpu_memory.csv").open()))
    load = float(phases["load"]["start_s"]), float(phases["load"]["end_s"])
    half = ROOT_UNSHARD_BYTES / 2**20 / 2
    for rank in ranks:
        trace = [(float(s["elapsed_s"]), float(s["memory_used_mib"])) for s in samples if s["gpu"] == rank]
        at, peak = max(((t, mib) for t, mib in trace if load[0] <= t <= load[1]), key=lambda x: x[1])
        before = min(mib for t, mib in trace if t < at)  # the rank's lowest before it: not listed yet at load start
        after = min(mib for t, mib in trace if at < t <= float(phases["clip 1 denoise"]["end_s"]))
        assert peak - before >= half and peak - after >= half, (rank, before, peak, after)  # up, held, freed


def test_a_hang_says_whether_stacks_were_captured(tmp_path):
    result = execute(plan("hang:1", prompt=token()), options(tmp_path, hang=3))
    log = result.folder.inference_log.read_text()
    if shutil.which("py-spy"):
        assert "stacks of" in log and any((result.folder.logs / "stacks").iterdir())
    else:
        assert "py-spy is not installed: no stacks captured" in log


def test_the_shim_writes_each_ranks_record_even_when_the_entry_raises(tmp_path):
    ok = execute(plan(prompt=token()), options(tmp_path))
    debug = json.loads(ok.folder.debug_json.read_text())
    assert [r["rank"] for r in debug["ranks"]] == [0, 1] and all(r["exit"] == "ok" for r in debug["ranks"])
    rank0 = json.loads((ok.folder.ranks / "rank0.json").read_text())
    events = [e["event"] for e in rank0["events"]]
    assert events[-1] == "exit" and any(e.startswith("phase: ") for e in events)
    assert max(e["max_rss_mib"] for e in rank0["events"]) > 150  # the fake's 150 MB while denoising
    failed = execute(plan("oom:1:1", prompt=token()), options(tmp_path / "oom"))
    ranks = {r["rank"]: r for r in json.loads(failed.folder.debug_json.read_text())["ranks"]}
    assert ranks[1]["exit"] == "exit 1"  # written in the shim's finally, after the entry raised


def test_the_outcome_is_told_before_the_report_is_drawn(tmp_path):
    """The CLI says the outcome the moment it is on disk; the report (a second or two of drawing) follows."""
    told = []

    def on_outcome(failure):
        folder = next((tmp_path / "runs").iterdir())
        told.append((failure.cls, (folder / "debug_info.json").is_file(), (folder / "report").exists()))

    result = execute(plan(prompt=token()), options(tmp_path, on_outcome=on_outcome))
    assert told == [("success", True, False)] and result.report is not None and result.report.is_file()


def test_no_shim_runs_the_entry_directly(tmp_path):
    result = execute(plan(prompt=token()), options(tmp_path, shim=False))
    assert result.failure.cls == "success" and json.loads(result.folder.debug_json.read_text())["ranks"] == []
    assert result.folder.rank_clips_csv.read_text() == "rank,clip,start_s,end_s\n"  # nothing to time each rank by
    assert "avatardoctor.runner.shim" not in " ".join(json.loads(result.folder.debug_json.read_text())["command"])


def test_gradio_serves_on_a_free_port_and_records_until_stopped(tmp_path):
    from avatardoctor.runner.auto import gradio_plan

    with socket.socket() as held:  # someone already serves on 7860's stand-in
        held.bind(("0.0.0.0", 0))
        held.listen()
        taken = held.getsockname()[1]
        doc, note = gradio_plan(PlanFile.from_dict(plan(prompt="x"), "test plan"), taken)
    assert doc.server_port != taken and f"server port {taken} is held" in note
    assert "--prompt" not in doc.argv and list(doc.argv[-4:]) == [
        "--server_port",
        str(doc.server_port),
        "--server_name",
        "0.0.0.0",
    ]
    assert doc.env["TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC"] == "86400"
    mark = token()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps({**plan(prompt=mark), "argv": [*plan(prompt=mark)["argv"], "--base_seed", mark]}))
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "avatardoctor",
        "run",
        "--plan",
        str(plan_file),
        "--gradio",
        "--out-dir",
        str(out),
        "--liveavatar",
        str(checkout(tmp_path)),
        "--hang-timeout",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, log = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        logs = list(out.glob("*/logs/inference.log"))
        if logs and "Running on local URL" in logs[0].read_text():
            log = logs[0]
            break
        time.sleep(0.3)
    assert log is not None, "the app never started"
    port = int(log.read_text().split("http://0.0.0.0:")[1].split()[0])
    time.sleep(3)  # longer than --hang-timeout: a quiet server is not a hang
    with socket.create_connection(("127.0.0.1", port), timeout=5):  # a real client reaches it
        pass
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode == 130
    debug = json.loads((log.parent.parent / "debug_info.json").read_text())
    assert debug["outcome"] == "interrupted" and "gradio_app.py" in " ".join(debug["command"])
    assert no_survivors(mark) == []


def test_a_gradio_session_reports_each_requests_peak_and_the_growth(tmp_path):
    """The fake app keeps 128 MiB more after each request (the README's OOM after several runs): through the
    real runner, sampler and report child, each request is found in the log and its rank's peak grows by that."""
    mark = token()
    plan_file = tmp_path / "plan.json"
    doc = plan(prompt=mark, FAKE_GRADIO_GROW_MIB="128", FAKE_GRADIO_HOLD_S="0.5")
    plan_file.write_text(json.dumps({**doc, "argv": [*doc["argv"], "--base_seed", mark]}))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "avatardoctor", "run", "--plan", str(plan_file), "--gradio", "--out-dir", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--liveavatar", str(checkout(tmp_path))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline, log = time.monotonic() + 60, None
    while log is None and time.monotonic() < deadline:
        logs = list(out.glob("*/logs/inference.log"))
        log = logs[0] if logs and "Running on local URL" in logs[0].read_text() else None
        time.sleep(0.3)
    assert log is not None, "the app never started"
    port = int(log.read_text().split("http://0.0.0.0:")[1].split()[0])
    memory_csv = log.parent / "gpu_memory.csv"
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client, client.makefile("rwb") as stream:
            stream.write(b"generate\n")
            stream.flush()
            assert stream.readline() == b"done\n"
        seen, deadline = memory_csv.read_text().count(",cpu0,"), time.monotonic() + 30
        while memory_csv.read_text().count(",cpu0,") <= seen and time.monotonic() < deadline:
            time.sleep(0.1)  # until a sample of what this request left held
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    summary = json.loads((log.parent.parent / "report" / "summary.json").read_text())
    assert [r["outcome"] for r in summary["requests"]] == ["done", "done", "done"]
    peaks = [r["peak_gib"]["cpu0"] for r in summary["requests"]]
    assert peaks[0] < peaks[1] < peaks[2]
    growth = {g["gpu"]: g for g in summary["memory_growth"]["gpus"]}
    assert 0.09 <= growth["cpu0"]["gib_per_request"] <= 0.16  # 128 MiB = 0.125 GiB
    assert "Requests" in (log.parent.parent / "report" / "index.html").read_text()
    assert no_survivors(mark) == []


def test_the_live_view_shows_phase_clips_eta_and_memory_bars():
    from avatardoctor.render import live_line
    from avatardoctor.runner.logparse import LogTracker

    class Sampler:
        def last(self):
            return {"0": {"memory_used_mib": 40 * 1024, "memory_total_mib": 81559, "utilization_pct": 90}}

    tracker = LogTracker(1, 4)
    for at, line in [(1.0, "complete prepare conditional inputs"), (2.0, "100%|██████████| 4/4 [00:01<00:00]")]:
        tracker.feed(line, at)
    line = live_line(
        tracker,
        Sampler(),
        PlanFile(mode="single", nproc=1, argv=(), prediction={"gpus": [{"index": 0, "usable_gib": 80.0}]}),
    )
    assert "0: ██████░░░░░░ 40.0/80.0 GiB" in line and "clips " in line


def test_an_oom_raises_the_next_plans_estimate_by_the_shortfall(tmp_path):
    from conftest import make_ctx

    from avatardoctor.runner.auto import _learn_from_oom
    from avatardoctor.runner.classify import Failure
    from avatardoctor.runner.run import RunResult

    ctx = make_ctx("5xH800-healthy")
    doc = PlanFile(mode="tpp", nproc=5, argv=(), prediction={"gpus": [{"index": 2, "peak_gib": 40.0}]})
    oom = Failure("oom", "CUDA out of memory", None, gpu=2, tried_to_allocate_mib=2048.0)
    result = RunResult(folder=None, failure=oom, exit_code=1, peaks_mib={"2": 41 * 1024.0}, report=None)
    lines = []
    learned = _learn_from_oom(ctx, doc, result, lines.append)
    assert learned.terms.context_bytes - ctx.terms.context_bytes == pytest.approx(3 * 2**30)  # 41 + 2 - 40
    assert "needed at least 43.00 GiB" in lines[0]
    assert learned.prediction.gpus[0].peak_bytes > ctx.prediction.gpus[0].peak_bytes


def test_auto_smoke_plans_and_runs_one_small_clip(tmp_path, monkeypatch):
    from conftest import make_ctx

    from avatardoctor.runner.auto import auto_run

    monkeypatch.setenv("FAKE_LIVEAVATAR_MODE", "success")  # the launch inherits the runner's environment
    ctx = make_ctx("5xH800-healthy", prompt=token())
    results = auto_run(ctx, options(tmp_path), max_retries=0, smoke=True, log=lambda line: None)
    (result,) = results
    argv = json.loads(result.folder.plan_json.read_text())["argv"]
    assert argv[argv.index("--num_clip") + 1] == "1" and argv[argv.index("--size") + 1] == "384*256"
    assert result.failure.cls == "success"


def test_auto_steps_down_after_each_oom(tmp_path, monkeypatch):
    from conftest import make_ctx

    from avatardoctor.runner.auto import auto_run

    monkeypatch.setenv("FAKE_LIVEAVATAR_MODE", "oom:1:0")  # every attempt runs out of memory
    lines: list[str] = []
    results = auto_run(
        make_ctx("5xH800-healthy", prompt=token()), options(tmp_path), max_retries=1, smoke=False, log=lines.append
    )
    assert [r.failure.cls for r in results] == ["oom", "oom"]
    first, second = (json.loads(r.folder.plan_json.read_text()) for r in results)
    assert first["reasons"][-1] != second["reasons"][-1]  # a different, smaller configuration
    assert any(r.startswith("skipped ") for r in second["reasons"])
    assert results[0].folder.root != results[1].folder.root


def test_rank_records_land_in_the_run_folder_with_a_relative_out_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out-dir runs, as the CLI's default: relative to where the runner starts
    result = execute(plan(prompt=token()), RunOptions(out_dir=Path("runs"), cwd=checkout(tmp_path), entry=ENTRY))
    assert sorted(p.name for p in (tmp_path / result.folder.ranks).glob("rank*.json")) == ["rank0.json", "rank1.json"]


# ---- the plan is a contract: run --plan launches what the plan says, here ---------------------------


def single_plan(tmp_path, mark: str) -> Path:
    doc = {
        **plan(nproc=1, prompt=mark),
        "config": {"mode": "single", "num_clip": 2, "prompt": mark},
        "checkout": str(checkout(tmp_path)),
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


def test_run_plan_starts_in_the_checkout_the_plan_names(tmp_path, monkeypatch):
    path = single_plan(tmp_path, token())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    opts = options(tmp_path)
    opts.cwd = elsewhere  # as the CLI sets it without --liveavatar
    result = launch_saved_plan(path, opts, {}, False, False, False)
    assert result.failure.cls == "success", result.failure
    assert (checkout(tmp_path) / "output").is_dir() and not (elsewhere / "output").exists()


def test_run_plan_smoke_derives_one_small_clip_and_records_what_it_launched(tmp_path):
    """No GPU here: the recomputed prediction cannot fit, so --force; the run folder's plan is the smoke run's."""
    path = single_plan(tmp_path, token())
    saved, lines = path.read_text(), []
    result = launch_saved_plan(path, options(tmp_path), {}, True, True, False, log=lines.append)
    assert result.failure.cls == "success", result.failure
    launched = json.loads(result.folder.plan_json.read_text())
    argv = launched["argv"]
    assert argv[argv.index("--num_clip") + 1] == "1" and argv[argv.index("--size") + 1] == "384*256"
    assert launched["env"]["FAKE_LIVEAVATAR_MODE"] == "success"  # the plan's own variables stay
    assert any("the smoke run" in line for line in lines) and path.read_text() == saved  # the user's plan untouched


def test_run_plan_refuses_a_plan_made_for_another_machine(tmp_path):
    doc = {**plan(), "machine": {"source": "catalogue:5xH800", "hostname": None, "gpus": []}}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "run", "--plan", str(path), "--out-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "planned for catalogue:5xH800, not for this machine" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_run_plan_whose_checkout_is_gone_is_one_line_and_leaves_no_folder(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**plan(), "checkout": str(tmp_path / "moved-away")}))
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "run", "--plan", str(path), "--out-dir", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.startswith(
        f"Error: the Live Avatar checkout {tmp_path / 'moved-away'} is not a folder"
    )
    assert r.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_run_with_machine_is_a_usage_error():
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "run", "--auto", "--machine", "5xH800"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--machine and --demo are for what-ifs" in r.stderr


def test_run_plan_flags_override_the_plan_and_the_run_folder_says_so(tmp_path):
    path = single_plan(tmp_path, token())
    result = launch_saved_plan(path, options(tmp_path), {"infer_frames": 24}, False, True, False, log=lambda line: None)
    assert result.failure.cls == "success", result.failure
    launched = json.loads(result.folder.plan_json.read_text())
    assert launched["argv"][launched["argv"].index("--infer_frames") + 1] == "24"
    assert launched["config"]["infer_frames"] == 24 and launched["reasons"][-1].endswith("with infer_frames=24")
    assert launched["prediction"]["verdict"] == "wont-fit"  # recomputed on this GPU-less machine, launched with --force


def test_a_master_port_lost_at_launch_is_tried_once_more_then_its_holder_named(tmp_path):
    lines = []
    result = execute_with_port_retry(
        PlanFile.from_dict(plan("nccl-port", prompt=token()), "test plan"), options(tmp_path), lines.append
    )
    assert result.failure.cls == "nccl" and "is held by" in result.failure.remedy
    assert any("once more on a free port" in line for line in lines)
    assert len(list((tmp_path / "runs").iterdir())) == 2  # each attempt in its own folder


def test_the_run_folder_the_runner_writes_is_the_one_the_report_reads_field_by_field(tmp_path):
    from avatardoctor.reports.runfolder import read_run_folder

    doc = {
        **plan(prompt=token()),
        "machine": {"source": "nvml", "hostname": None, "gpus": [{"index": 0, "name": "NVIDIA H800", "uuid": "GPU-0"}]},
    }
    result = execute(doc, options(tmp_path))
    debug = json.loads(result.folder.debug_json.read_text())
    read = read_run_folder(result.folder.root)
    assert read.notes == []
    assert read.debug.outcome == debug["outcome"] == "success"
    assert read.debug.clips_done == debug["clips_done"] == 2
    assert read.debug.durations["total_s"] == debug["durations"]["total_s"]
    assert read.debug.gpu_names == debug["gpu_names"] == {"0": "NVIDIA H800"}
    assert (
        read.plan.config["mode"] == "tpp" and read.plan.config["num_clip"] == 2 and read.plan.prompt == doc["argv"][-1]
    )
    with open(result.folder.phases_csv) as f:
        assert list(read.phases["phase"]) == [line.split(",")[0] for line in f.read().splitlines()[1:]]
    # the job's process tree, and each rank's processes as a device of its own
    assert read.timeline.gpus == ["cpu", "cpu0", "cpu1"] and len(read.timeline.samples) > 0


def test_a_gpu_run_leaves_measurements_that_calibrate_learns_from(tmp_path):
    """The NVML path cannot run here: the measurements come from the plan's real prediction and a
    recorded peak per GPU, as the runner computes them at the end of a GPU run."""
    from avatardoctor.runner.run import measurements

    m = catalogue_machine("5xH800")
    cfg = resolve_config(5, "tpp")
    prediction = predict(cfg, m.gpus, reference_summary(), DEFAULT_TERMS).to_dict()
    doc = PlanFile(mode="tpp", nproc=5, argv=(), prediction=prediction)
    phases = [
        ("load", 0.0, 60.0),
        ("lora merge", 60.0, 80.0),
        ("text encoding", 80.0, 100.0),
        ("clip 1 denoise", 100.0, 200.0),
    ]
    peaks = {str(i): 40_000.0 + i for i in range(5)}
    found = measurements(
        doc, peaks, {str(i): 150.0 for i in range(5)}, phases, "run-1", "2026-12-02T05:00:00+00:00", {"0": 36_000.0}
    )  # the shim's torch.cuda.max_memory_allocated of rank 0
    assert [x.phase for x in found] == ["denoise"] * 4 + ["decode"]  # the VAE rank has no denoise phase: its peak's
    assert found[0].role == "dit" and found[4].role == "vae" and found[0].nccl_peers == 4 and found[0].token_dims > 0
    gpu0 = prediction["gpus"][0]["calibration"]["denoise"]
    assert found[0].exact_bytes == gpu0["exact_bytes"] and found[0].measured_bytes == 40_000 * 2**20
    assert found[0].allocated_bytes == 36_000 * 2**20 and found[1].allocated_bytes == 0  # reserved and allocated both

    run = tmp_path / "runs" / "run-1"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "measurements.json").write_text(
        json.dumps({"schema": "avatardoctor.measurements/1", "measurements": [dataclasses.asdict(x) for x in found]})
    )
    empty = tmp_path / "runs" / "cpu-run"
    empty.mkdir()
    env = {**os.environ, "AVATARDOCTOR_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "calibrate", str(run), str(empty), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "cpu-run: no GPU measurements" in r.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "calibrate", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert (
        missing.returncode == 2
        and missing.stderr == f"Error: {tmp_path / 'nope'}: cannot read (No such file or directory)\n"
    )
    assert json.loads(r.stdout)["measurements"] == 5
    after = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "predict", "--machine", "5xH800", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert json.loads(after.stdout)["prediction"]["estimates_from"].startswith("calibrated from 1 run")
