"""`avatardoctor record`: upstream's scripts, any command, and a job someone else started, recorded through
real processes (the fake Live Avatar under the real torchrun, gloo on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from avatardoctor.errors import InputError
from avatardoctor.runner.record import plan_for_command

CHECKOUT = Path(__file__).parent / "fixtures" / "fake_liveavatar"
BIN = str(Path(sys.executable).parent)  # torchrun, as the scripts call it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkout(tmp_path: Path) -> Path:
    """A private copy of the fake checkout whose scripts use a free port (never a fixed one)."""
    copy = tmp_path / "LiveAvatar"
    shutil.copytree(CHECKOUT, copy, ignore=shutil.ignore_patterns("output", "__pycache__"))
    for script in copy.glob("*.sh"):
        script.write_text(re.sub(r"--master_port=\d+", f"--master_port={free_port()}", script.read_text()))
    return copy


def avatardoctor(*args: str, cwd: Path, mode: str = "success", mark: str = "") -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "FAKE_LIVEAVATAR_MODE": mode}
    env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "avatardoctor", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_folder(out: Path) -> Path:
    (folder,) = out.iterdir()
    return folder


# ---- reading the launch from the command line -------------------------------------------------------


def test_upstream_scripts_torchrun_line_gives_the_configuration():
    plan = plan_for_command(["bash", "infinite_inference_multi_gpu.sh", "--num_clip", "3"], CHECKOUT, {})
    assert (plan.mode, plan.nproc, plan.master_port) == ("tpp", 5, 29102)
    assert plan.visible_gpus == [0, 1, 2, 3, 4] and plan.entry == "minimal_inference/s2v_streaming_interact.py"
    config = plan.config or {}
    assert (config["size"], config["infer_frames"], config["num_clip"], config["num_gpus_dit"]) == ("720*400", 48, 3, 4)
    assert config["offload_model"] is False and config["fp8"] is False and config["lora_path"] is None
    assert plan.argv[-2:] == ("--num_clip", "3")  # the script's "$@"


def test_a_torchrun_line_and_python_m_torch_distributed_run_read_alike():
    entry = ["minimal_inference/s2v_streaming_interact.py", "--size", "704*384", "--fp8", "--infer_frames", "24"]
    for launcher in (
        ["torchrun", "--nproc_per_node", "2", "--master_port=29555"],
        ["python3", "-m", "torch.distributed.run", "--nproc-per-node=2", "--master_port", "29555"],
    ):
        plan = plan_for_command(["CUDA_VISIBLE_DEVICES=3,4", *launcher, *entry], CHECKOUT, {})
        assert (plan.mode, plan.nproc, plan.master_port, plan.visible_gpus) == ("tpp", 2, 29555, [3, 4])
        assert (plan.config or {})["fp8"] is True and (plan.config or {})["infer_frames"] == 24


def test_any_other_command_is_recorded_without_a_configuration():
    plan = plan_for_command(["python3", "train.py", "--lr", "1"], CHECKOUT, {"CUDA_VISIBLE_DEVICES": "1"})
    assert (plan.mode, plan.nproc, plan.config, plan.visible_gpus) == ("record", 1, None, [1])


def test_a_script_that_cannot_be_read_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="missing.sh: cannot read it"):
        plan_for_command(["bash", "missing.sh"], tmp_path, {})


# ---- recording through real processes ----------------------------------------------------------------


def test_record_runs_upstreams_script_and_writes_the_run_folder(tmp_path):
    la = checkout(tmp_path)
    proc = avatardoctor(
        "record",
        "--out-dir",
        str(tmp_path / "runs"),
        "--",
        "bash",
        "infinite_inference_single_gpu.sh",
        "--num_clip",
        "3",
        cwd=la,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    folder = only_folder(tmp_path / "runs")
    assert folder.name.endswith("-single") and "outcome: success" in out
    debug = json.loads((folder / "debug_info.json").read_text())
    assert debug["outcome"] == "success" and debug["clips_done"] == 3
    assert debug["command"][:2] == ["bash", "infinite_inference_single_gpu.sh"]
    assert json.loads((folder / "plan.json").read_text())["config"]["num_clip"] == 3
    phases = (folder / "logs" / "phases.csv").read_text()
    assert "clip 3 denoise" in phases and (folder / "report" / "summary.json").is_file()


def test_record_runs_an_arbitrary_command(tmp_path):
    code = "import sys; print('hello from a plain command'); sys.exit(3)"
    proc = avatardoctor("record", "--out-dir", str(tmp_path / "runs"), "--", sys.executable, "-c", code, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    folder = only_folder(tmp_path / "runs")
    assert folder.name.endswith("-record")
    assert "hello from a plain command" in (folder / "logs" / "inference.log").read_text()
    debug = json.loads((folder / "debug_info.json").read_text())
    assert debug["outcome"] == "crashed" and debug["exit_code"] == 3


def _pids_with(mark: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            if mark in " ".join(p.info["cmdline"] or []) or mark in (p.info["environ"] or {}).values():
                found.append(p.pid)
        except psutil.Error:
            continue
    return found


def _wait(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_ctrl_c_during_record_stops_every_process_and_records_interrupted(tmp_path):
    la, mark = checkout(tmp_path), f"record-test-{uuid.uuid4().hex[:10]}"
    proc = avatardoctor(
        "record",
        "--out-dir",
        str(tmp_path / "runs"),
        "--",
        "bash",
        "infinite_inference_single_gpu.sh",
        "--prompt",
        mark,
        cwd=la,
        mode="hang:1",
    )
    log = tmp_path / "runs"
    # A line of the job's in the log: the runner reads output only once its signal handlers are in place.
    _wait(lambda: any("COMPILE:" in f.read_text() for f in log.glob("*/logs/inference.log")))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert json.loads((only_folder(tmp_path / "runs") / "debug_info.json").read_text())["outcome"] == "interrupted"
    _wait(lambda: not _pids_with(mark), 30)


def test_a_recorded_command_that_hangs_is_stopped(tmp_path):
    la, mark = checkout(tmp_path), f"record-test-{uuid.uuid4().hex[:10]}"
    proc = avatardoctor(
        "record",
        "--out-dir",
        str(tmp_path / "runs"),
        "--hang-timeout",
        "3",
        "--",
        "bash",
        "infinite_inference_single_gpu.sh",
        "--prompt",
        mark,
        cwd=la,
        mode="hang:2",
    )
    proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert json.loads((only_folder(tmp_path / "runs") / "debug_info.json").read_text())["outcome"] == "hang"
    _wait(lambda: not _pids_with(mark), 30)


def _started_job(tmp_path: Path, la: Path, mark: str) -> tuple[subprocess.Popen, Path]:
    """A job we start ourselves, waiting for `go` before it launches, its output in a file."""
    log = tmp_path / "job.log"
    go = tmp_path / "go"
    script = f"while [ ! -e {go} ]; do sleep 0.1; done; exec bash infinite_inference_single_gpu.sh --prompt {mark}"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "FAKE_LIVEAVATAR_MODE": "success"}
    with open(log, "wb") as out:
        job = subprocess.Popen(["bash", "-c", script], cwd=la, env=env, stdout=out, stderr=subprocess.STDOUT)
    return job, log


def test_attach_watches_a_job_it_did_not_start_until_it_exits(tmp_path):
    la, mark = checkout(tmp_path), f"record-test-{uuid.uuid4().hex[:10]}"
    job, log = _started_job(tmp_path, la, mark)
    out_dir = tmp_path / "runs"
    proc = avatardoctor("record", "--out-dir", str(out_dir), "--attach", str(job.pid), "--log", str(log), cwd=tmp_path)
    _wait(
        lambda: (
            out_dir.is_dir()
            and any(out_dir.glob("*/logs/inference.log"))
            and "attached to PID" in next(out_dir.glob("*/logs/inference.log")).read_text()
        )
    )
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=300)
    assert job.wait(60) == 0
    assert proc.returncode == 0, err
    folder = only_folder(out_dir)
    debug = json.loads((folder / "debug_info.json").read_text())
    assert debug["outcome"] == "success" and debug["clips_done"] == 2
    assert "clip 2 denoise" in (folder / "logs" / "phases.csv").read_text()


def test_ctrl_c_stops_watching_and_leaves_the_attached_job_running(tmp_path):
    la, mark = checkout(tmp_path), f"record-test-{uuid.uuid4().hex[:10]}"
    job, _ = _started_job(tmp_path, la, mark)  # never told to go: it waits
    out_dir = tmp_path / "runs"
    try:
        proc = avatardoctor("record", "--out-dir", str(out_dir), "--attach", str(job.pid), cwd=tmp_path)
        _wait(lambda: any("attached to PID" in f.read_text() for f in out_dir.glob("*/logs/inference.log")))
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode == 130
        debug = json.loads((only_folder(out_dir) / "debug_info.json").read_text())
        assert debug["outcome"] == "interrupted" and "still runs" in debug["failure"]["message"]
        assert job.poll() is None
    finally:
        job.kill()
        job.wait()


def test_attach_to_a_pid_that_is_not_running_is_one_line_and_leaves_no_folder(tmp_path):
    job = subprocess.Popen([sys.executable, "-c", "pass"])
    job.wait()
    proc = avatardoctor("record", "--out-dir", str(tmp_path / "runs"), "--attach", str(job.pid), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and f"--attach {job.pid}" in err
    assert not (tmp_path / "runs").exists()
