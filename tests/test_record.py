"""`avatardoctor record`: upstream's scripts, any command, and a job someone else started, recorded through
real processes (the fake Live Avatar under the real torchrun, gloo on 127.0.0.1)."""

from __future__ import annotations

import contextlib
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

TESTS = Path(__file__).parent
CHECKOUT = TESTS / "fixtures" / "fake_liveavatar"
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


def avatardoctor(*args: str, cwd: Path, mode: str = "success", nvml: Path | None = None) -> subprocess.Popen:
    """avatardoctor in a process of its own; with `nvml`, a fake NVML spec (tests/fake_pynvml/__main__.py)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "FAKE_LIVEAVATAR_MODE": mode}
    env["GLOO_SOCKET_IFNAME"] = "lo"
    cmd = [sys.executable, "-m", "avatardoctor", *args]
    if nvml is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "fake_pynvml", str(nvml), *args]
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


# A stand-in entry under the real torchrun: each rank waits for the file GATE, then exits 0.
GATED_ENTRY = """import os, pathlib, time
while not pathlib.Path(os.environ["GATE"]).exists():
    time.sleep(0.1)
"""


class GatedJob:
    """`torchrun --nproc_per_node 2 minimal_inference/s2v_streaming_interact.py ...` (the stand-in above), started
    here as a user would start it; `ranks` once both are up; `spec` puts them on GPUs 0 and 1 of a fake NVML."""

    def __init__(self, tmp_path: Path):
        import psutil

        folder = tmp_path / "job"
        (folder / "minimal_inference").mkdir(parents=True)
        (folder / "minimal_inference" / "s2v_streaming_interact.py").write_text(GATED_ENTRY)
        self.gate, self.tmp_path = tmp_path / "go", tmp_path
        argv = [f"{BIN}/torchrun", "--nproc_per_node", "2", "--master_port", str(free_port())]
        argv += ["minimal_inference/s2v_streaming_interact.py", "--size", "704*384", "--infer_frames", "24"]
        env = {**os.environ, "GATE": str(self.gate)}
        self.proc = subprocess.Popen(argv, cwd=folder, env=env, start_new_session=True)
        launcher = psutil.Process(self.proc.pid)
        _wait(lambda: len(self._ranks(launcher)) == 2)
        self.ranks = self._ranks(launcher)

    @staticmethod
    def _ranks(launcher) -> list[int]:
        return sorted(c.pid for c in launcher.children() if "s2v_streaming_interact.py" in " ".join(c.cmdline()))

    def spec(self) -> Path:
        path = self.tmp_path / "nvml.json"
        path.write_text(json.dumps({"box": "r535_hgx_h100", "compute": {"0": self.ranks[:1], "1": self.ranks[1:]}}))
        return path

    def attach_args(self, how: str) -> list[str]:
        return ["--attach", str(self.proc.pid)] if how == "pid" else ["--attach-gpus", "0,1"]

    def close(self) -> None:
        """Kill the launcher's group and every rank (torchrun may start ranks in sessions of their own)."""
        for kill, target in [(os.killpg, self.proc.pid)] + [(os.kill, pid) for pid in self.ranks]:
            with contextlib.suppress(ProcessLookupError):
                kill(target, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def gated_job(tmp_path):
    job = GatedJob(tmp_path)
    yield job
    job.close()


def _attached(out_dir: Path) -> bool:
    return any("attached to PID" in f.read_text() for f in out_dir.glob("*/logs/inference.log"))


@pytest.mark.parametrize(
    "how, sig", [("pid", signal.SIGINT), ("gpus", signal.SIGINT), ("pid", signal.SIGTERM), ("gpus", signal.SIGTERM)]
)
def test_ctrl_c_or_kill_stops_watching_and_leaves_the_attached_job_running(tmp_path, gated_job, how, sig):
    out_dir = tmp_path / "runs"
    proc = avatardoctor(
        "record", "--out-dir", str(out_dir), *gated_job.attach_args(how), cwd=tmp_path, nvml=gated_job.spec()
    )
    _wait(lambda: _attached(out_dir))
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    debug = json.loads((only_folder(out_dir) / "debug_info.json").read_text())
    assert debug["outcome"] == "interrupted" and "still runs" in debug["failure"]["message"]
    assert gated_job.proc.poll() is None and all(map(_running, gated_job.ranks))


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("end", ["exits", "killed"])
def test_attach_gpus_finds_the_job_on_those_gpus_and_watches_it_until_it_ends(tmp_path, gated_job, end):
    out_dir = tmp_path / "runs"
    proc = avatardoctor(
        "record", "--out-dir", str(out_dir), "--attach-gpus", "0,1", cwd=tmp_path, nvml=gated_job.spec()
    )
    _wait(lambda: _attached(out_dir))
    if end == "exits":
        gated_job.gate.touch()
        assert gated_job.proc.wait(60) == 0
    else:
        gated_job.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err  # a watcher cannot read the exit code: "ended"
    folder = only_folder(out_dir)
    debug = json.loads((folder / "debug_info.json").read_text())
    assert debug["outcome"] == "ended"
    assert debug["command"][1:3] == [f"{BIN}/torchrun", "--nproc_per_node"]  # the launcher, not a rank
    log = (folder / "logs" / "inference.log").read_text()
    assert f"attached to PID {gated_job.proc.pid}, {gated_job.ranks[0]}, {gated_job.ranks[1]} (on GPU 0,1)" in log
    plan = json.loads((folder / "plan.json").read_text())
    assert (plan["mode"], plan["nproc"]) == ("tpp", 2)
    assert (plan["config"]["size"], plan["config"]["infer_frames"]) == ("704*384", 24)


def test_attach_to_a_pid_that_is_not_running_is_one_line_and_leaves_no_folder(tmp_path):
    job = subprocess.Popen([sys.executable, "-c", "pass"])
    job.wait()
    proc = avatardoctor("record", "--out-dir", str(tmp_path / "runs"), "--attach", str(job.pid), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and f"--attach {job.pid}" in err
    assert not (tmp_path / "runs").exists()


# ---- --attach-gpus: which job, read through the fake NVML --------------------------------------------------


def _box_with(box, compute: dict[int, list[int]]):
    from fake_pynvml.library import Process

    for index, gpu in enumerate(box.gpus):
        gpu.compute = [Process(pid, 2**30) for pid in compute.get(index, [])]
    return box


@pytest.fixture
def launchers():
    """Two processes named torchrun (as a running torchrun's command line reads), each with a child: two jobs."""
    started = [
        subprocess.Popen(["bash", "-c", "exec -a torchrun bash -c 'sleep 600 & wait'"], start_new_session=True)
        for _ in range(2)
    ]
    import psutil

    _wait(lambda: all(psutil.Process(p.pid).children() for p in started))
    yield [(p.pid, psutil.Process(p.pid).children()[0].pid) for p in started]
    for p in started:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_attach_gpus_watches_the_launcher_then_the_gpu_processes(monkeypatch, launchers):
    from fake_pynvml import boxes, install

    from avatardoctor.runner.record import gpu_job

    (launcher, child), _ = launchers
    install(monkeypatch, _box_with(boxes.r535_hgx_h100(), {2: [child]}))
    found = gpu_job(None)
    assert found.roots == (launcher, child) and found.on_gpus[2] == (child,) and found.on_gpus[3] == ()


def test_attach_gpus_refuses_two_jobs_naming_each(monkeypatch, launchers):
    from fake_pynvml import boxes, install

    from avatardoctor.runner.record import gpu_job

    (first, first_child), (second, second_child) = launchers
    install(monkeypatch, _box_with(boxes.r535_hgx_h100(), {0: [first_child], 5: [second_child]}))
    with pytest.raises(InputError, match=rf"run 2 jobs \(PID {first} on GPU 0; PID {second} on GPU 5\)"):
        gpu_job(None)
    assert gpu_job((5,)).roots == (second, second_child)  # one job's GPUs: no question


@pytest.mark.parametrize(
    "box, gpus, said",
    [
        ("r535_hgx_h100", (0, 1), "no compute process on GPU 0,1; start the job first"),
        ("r550_container_a100", (2,), "which is not running in this PID namespace (inside a container"),
        ("r550_container_a100", (7,), "there is no GPU 7 (NVML sees 4)"),
        ("driver_not_loaded", None, "the NVIDIA kernel driver is not loaded; use --attach PID"),
    ],
)
def test_attach_gpus_says_in_one_line_why_there_is_nothing_to_attach_to(monkeypatch, box, gpus, said):
    from fake_pynvml import boxes, install

    from avatardoctor.runner.record import gpu_job

    install(monkeypatch, getattr(boxes, box)())
    with pytest.raises(InputError, match=re.escape(said)) as err:
        gpu_job(gpus)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"--attach-gpus {'all' if gpus is None else ''}")


@pytest.mark.parametrize(
    "args, said",
    [
        (["--attach-gpus", "0,1"], "--attach-gpus 0,1: no compute process on GPU 0,1"),
        (["--attach-gpus", "0,x"], "--attach-gpus 0,x: give GPU indices"),
        (["--attach-gpus", "all", "--attach", "1"], "record: give one of a command after --"),
    ],
)
def test_attach_gpus_bad_input_is_one_line_exit_2_and_leaves_no_folder(tmp_path, args, said):
    spec = tmp_path / "nvml.json"
    spec.write_text(json.dumps({"box": "r535_hgx_h100"}))
    proc = avatardoctor("record", "--out-dir", str(tmp_path / "runs"), *args, cwd=tmp_path, nvml=spec)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.count("\n") == 1 and said in err, err
    assert not (tmp_path / "runs").exists()


def test_a_running_torchruns_command_line_is_read_as_torchrun():
    """A running torchrun's command line is its interpreter and script: /venv/bin/python3 /venv/bin/torchrun ..."""
    argv = [sys.executable, f"{BIN}/torchrun", "--nproc_per_node=2", "minimal_inference/s2v_streaming_interact.py"]
    plan = plan_for_command([*argv, "--size", "704*384"], CHECKOUT, {})
    assert (plan.mode, plan.nproc, (plan.config or {}).get("size")) == ("tpp", 2, "704*384")
