"""The command line as a user runs it: real processes, exit codes, JSON schema, colour, bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MACHINES
from fakeenv import upstream_site

from avatardoctor.ckpt.safetensors_file import write_safetensors

CHECK_IDS = [
    "gpu.driver",
    "gpu.inventory",
    "gpu.visible",
    "gpu.vram",
    "gpu.processes",
    "gpu.fp8",
    "gpu.ecc",
    "gpu.retired_pages",
    "gpu.throttle",
    "gpu.xid",
    "topo.p2p",
    "topo.pcie",
    "nccl.env",
    "nccl.live",
    "net.master_port",
    "host.ram",
    "host.shm",
    "host.disk",
    "sw.python",
    "sw.torch",
    "sw.nccl",
    "sw.attention",
    "sw.pins",
    "sw.ffmpeg",
    "la.checkout",
    "la.commit",
    "la.asserts",
    "la.lora",
    "ckpt.layout",
    "ckpt.config",
    "ckpt.index",
    "ckpt.dit",
    "ckpt.t5",
    "ckpt.vae",
    "ckpt.tokenizer",
    "ckpt.wav2vec2",
    "input.image",
    "input.image.size",
    "input.prompt",
    "input.audio",
    "input.audio.silence",
    "input.audio.clips",
    "fit.peak",
    "fit.estimates",
]


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NCCL_", "TORCH_NCCL_", "CUDA_", "HF_"))}
    for key in ("NO_COLOR", "FORCE_COLOR", "COLUMNS"):
        env.pop(key, None)
    env.update(extra)
    return env


def avatardoctor(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avatardoctor", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        cwd=cwd,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_is_the_seeds_box_and_is_not_ready():
    r = avatardoctor("check", "--demo", env=cli_env(NO_COLOR="1"))
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""
    assert "machine: catalogue 5x4090 · mode: tpp (default for 5 visible GPUs), 5 processes" in r.stdout
    assert "[✗] fit.peak" in r.stdout and "the bf16 load alone is 31.58 GiB" in " ".join(r.stdout.split())
    assert "[!] topo.p2p" in r.stdout
    assert "5x4090: Not ready: " in r.stdout  # the seeds' box, judged as asked
    assert "\x1b[" not in r.stdout
    assert not any(line != line.rstrip() for line in r.stdout.splitlines())  # no trailing padding


def test_colour_follows_force_color_and_no_color():
    coloured = avatardoctor("check", "--demo", env=cli_env(FORCE_COLOR="1"))
    assert "\x1b[" in coloured.stdout
    plain = avatardoctor("check", "--demo", env=cli_env(FORCE_COLOR="1", NO_COLOR="1"))
    assert "\x1b[3" not in plain.stdout  # no colour codes (bold may stay)


def test_json_schema_field_by_field():
    r = avatardoctor("check", "--demo", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["schema"] == "avatardoctor.check/1"
    assert doc["verdict"] == "not-ready"
    assert [c["id"] for c in doc["checks"]] == CHECK_IDS
    for c in doc["checks"]:
        assert set(c) == {"id", "group", "status", "summary", "details", "remedy", "data"}
        assert c["status"] in ("pass", "warn", "fail", "skip")
        assert isinstance(c["summary"], str) and "\n" not in c["summary"]
        assert isinstance(c["details"], list) and all(isinstance(d, str) for d in c["details"])
        assert c["remedy"] is None or isinstance(c["remedy"], str)
    assert doc["counts"]["fail"] == sum(c["status"] == "fail" for c in doc["checks"])
    assert doc["machine"]["schema"] == "avatardoctor.machine/1"
    assert doc["machine"]["source"] == "catalogue:5x4090" and len(doc["machine"]["gpus"]) == 5
    assert doc["config"]["mode"] == "tpp" and doc["config"]["nproc"] == 5
    peak = next(c for c in doc["checks"] if c["id"] == "fit.peak")
    assert peak["status"] == "fail" and doc["prediction"] == peak["data"]["prediction"]
    assert doc["prediction"]["verdict"] == "wont-fit" and len(doc["prediction"]["gpus"]) == 5
    gpu0 = doc["prediction"]["gpus"][0]
    assert set(gpu0) >= {
        "index",
        "role",
        "phase",
        "peak_gib",
        "band_gib",
        "usable_gib",
        "headroom_gib",
        "loaded_gib",
        "verdict",
        "components",
    }
    assert {"weights", "root_unshard", "t5", "vae", "kv_cache", "activations", "context"} <= set(gpu0["components"])


def test_ready_machine_exits_zero(tmp_path, full_skeleton):
    """A healthy H800 box, Live Avatar's pinned software, ffmpeg, a checkout with its checkpoint
    and LoRA, and a free port: ready."""
    site = upstream_site(tmp_path / "site")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "ffmpeg").chmod(0o755)
    checkout = tmp_path / "LiveAvatar"
    for rel in (
        "minimal_inference/s2v_streaming_interact.py",
        "minimal_inference/gradio_app.py",
        "liveavatar/configs/s2v_causal_sft.yaml",
        "infinite_inference_multi_gpu.sh",
        "infinite_inference_single_gpu.sh",
    ):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("")
    (checkout / "ckpt").mkdir()
    (checkout / "ckpt" / "Wan2.2-S2V-14B").symlink_to(full_skeleton)  # where the upstream scripts look
    lora = checkout / "ckpt" / "LiveAvatar" / "liveavatar.safetensors"
    lora.parent.mkdir()
    write_safetensors(lora, [("blocks.0.self_attn.q.lora_A.weight", "BF16", (128, 5120))], os.urandom)
    env = cli_env(PYTHONPATH=str(site), PATH=f"{bin_dir}:{os.environ['PATH']}", NCCL_DEBUG="WARN")
    args = ["check", "--machine", str(MACHINES / "5xH800-healthy.json"), "--liveavatar", str(checkout)]
    args += ["--lora-path", "ckpt/LiveAvatar/liveavatar.safetensors"]
    r = avatardoctor(*args, "--master-port", str(free_port()), "--json", env=env)
    doc = json.loads(r.stdout)
    failing = [(c["id"], c["summary"]) for c in doc["checks"] if c["status"] == "fail"]
    assert r.returncode == 0, failing
    assert doc["verdict"] == "ready" and failing == []
    checks = {c["id"]: c for c in doc["checks"]}
    assert all(checks[i]["status"] == "pass" for i in checks if i.startswith("ckpt."))
    assert checks["ckpt.dit"]["summary"] == "DiT 30.35 GiB (16.30 B params), matches Wan2.2-S2V-14B"
    assert checks["la.lora"]["status"] == "pass"
    human = avatardoctor(*args, "--master-port", str(free_port()), env=env)
    assert human.returncode == 0 and human.stdout.rstrip().splitlines()[-1].startswith("5xH800-healthy.json: Ready")


def test_foreign_process_and_held_port_on_a_busy_box(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = avatardoctor(
            "check", "--machine", str(MACHINES / "5xH800-gpu2-busy.json"), "--master-port", str(port), "--json"
        )
    report = json.loads(r.stdout)
    doc = {c["id"]: c for c in report["checks"]}
    assert r.returncode == 0  # the recorded box is ready; the port held on this host does not answer for it
    assert doc["gpu.processes"]["status"] == "warn" and doc["gpu.processes"]["data"]["holders"][0]["pid"] == 4242
    assert doc["net.master_port"]["status"] == "fail" and "net.master_port" in report["this_host_failing"]
    assert f"held by PID {os.getpid()}" in doc["net.master_port"]["summary"]


def test_mismatched_cuda_visible_devices():
    env = cli_env(CUDA_VISIBLE_DEVICES="0,1,9,2")
    r = avatardoctor("check", "--machine", "5xH800", "--mode", "tpp", "--json", env=env)
    doc = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1
    assert doc["gpu.visible"]["status"] == "fail" and doc["gpu.visible"]["data"]["visible"] == [0, 1]


def test_without_nvml_check_still_reports(tmp_path):
    """This machine has no NVIDIA driver: a failed gpu.driver check, never a traceback."""
    r = avatardoctor("check", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    doc = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    if doc["gpu.driver"]["status"] == "pass":  # pragma: no cover - only on a GPU machine
        pytest.skip("NVML works here")
    assert doc["gpu.driver"]["status"] == "fail" and "--machine" in doc["gpu.driver"]["remedy"]
    assert doc["gpu.vram"]["status"] == "skip"


@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "--machine", "no-such-file.json"], "neither a file nor a COUNTxMODEL"),
        (["check", "--machine", "5xA100"], "A100-40GB and A100-80GB"),
        (["check", "--machine", "5x4090", "--demo"], "--demo and --machine"),
        (["check", "--mode", "quad"], "Invalid value for '--mode'"),
        (["check", "--offload-model", "maybe"], "is not a boolean"),
        (["check", "--bogus"], "No such option '--bogus'"),
        (["predict", "--machine", "5xH800", "--size", "12x9"], "'12x9' is not WIDTH*HEIGHT"),
        (["predict", "--machine", "5xH800", "--gpus", "0,9"], "--gpus 0,9: entry '9': there is no GPU 9 (5 found)"),
        (["check", "--machine", "5xH800", "--infer-frames", "-4"], "Invalid value for '--infer-frames'"),
        (
            ["run", "--plan", "/nonexistent/plan.json"],
            "--plan /nonexistent/plan.json: cannot read (No such file or directory)",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_clear_line(args, message):
    r = avatardoctor(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    assert r.stdout == ""


def test_bad_machine_file_exits_2_naming_the_file(tmp_path):
    bad = tmp_path / "box.json"
    bad.write_text('{"schema": "avatardoctor.machine/1", "gpus": [{"index": 0}]}')
    r = avatardoctor("check", "--machine", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == f"Error: --machine {bad}: gpus[0].name is missing"


def test_machine_record_without_nvml_says_why():
    r = avatardoctor("machine", "record")
    if r.returncode == 0:  # pragma: no cover - only on a GPU machine
        pytest.skip("NVML works here")
    assert r.returncode == 1 and "cannot record this machine" in r.stderr and "Traceback" not in r.stderr


def test_machine_list_names_every_catalogue_model():
    r = avatardoctor("machine", "list")
    assert r.returncode == 0
    for model in ("3090", "4090", "5090", "A6000", "L40S", "A100-40GB", "A100-80GB", "H100", "H800", "H200"):
        assert f"\n{model} " in r.stdout
    assert "NVIDIA H200" in r.stdout and "143771 MiB" in r.stdout


def test_check_imports_neither_torch_nor_pandas_nor_matplotlib():
    code = (
        "import sys\n"
        "from avatardoctor.cli import cli\n"
        "try:\n"
        "    cli(['check', '--demo', '--json'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stderr


def test_console_script_is_installed():
    exe = shutil.which("avatardoctor", path=str(Path(sys.executable).parent))
    assert exe, "pip install must put the avatardoctor command next to the interpreter"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("avatardoctor, version ")


def test_demo_builds_its_skeleton_once_in_the_cache_folder():
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "avatardoctor" / "skeleton-wan2.2-s2v-14b-v1"
    avatardoctor("check", "--demo")
    assert (cache / "diffusion_pytorch_model.safetensors.index.json").is_file()
    built = cache.stat().st_mtime_ns
    r = avatardoctor("check", "--demo", "--json")
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["ckpt.dit"]["status"] == "pass" and cache.stat().st_mtime_ns == built
