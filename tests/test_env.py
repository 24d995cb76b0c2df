"""`avatardoctor env`: the paste-ready bug report, as a user runs it (real processes), holding no secret; and
`--python PATH`, the software checks reading another interpreter's environment (this one as PATH, and a
fake interpreter script that answers as a real one would)."""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import make_ctx
from fake_pynvml import boxes, install
from fakeenv import upstream_site
from runfixture import make_run
from test_cli import avatardoctor, cli_env

from avatardoctor.bugreport import SCHEMA
from avatardoctor.checks import software
from avatardoctor.checks.base import Status
from avatardoctor.cli import cli
from avatardoctor.machine.interpreter import inspect_interpreter

TOKEN = "hf_s3cr3t-value-nobody-may-see"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((resources.files("avatardoctor") / "schemas" / "env.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == schema["properties"]["schema"]["const"] == SCHEMA
    return jsonschema.Draft202012Validator(schema)


def assert_valid(validator, doc: dict) -> None:
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)] == []


def failed_run(home: Path) -> Path:
    """A run folder under $HOME whose command and failure name home paths and this host."""
    run = make_run(home / "runs" / "20261120-090000-tpp", gpus=2, seconds=20, hz=1)
    debug = json.loads((run / "debug_info.json").read_text())
    debug["command"] = ["torchrun", "--nproc_per_node", "5", "minimal_inference/s2v_streaming_interact.py"]
    debug["command"] += ["--ckpt_dir", f"{home}/LiveAvatar/ckpt/Wan2.2-S2V-14B", "--prompt", "a | b"]
    debug["failure"]["message"] = (
        f"[rank2]: {socket.gethostname()}:4242 torch.OutOfMemoryError in {home}/LiveAvatar/liveavatar/x.py"
    )
    debug["failure"]["remedy"] = f"free {home}/x on {socket.gethostname()}, or a smaller --size 480*256"
    (run / "debug_info.json").write_text(json.dumps(debug))
    return run


def secret_env(home: Path) -> dict:
    return cli_env(
        HOME=str(home), HF_TOKEN=TOKEN, MY_SERVICE_PASSWORD=TOKEN, NCCL_DEBUG="INFO", CUDA_VISIBLE_DEVICES="0"
    )


def assert_nothing_secret(text: str, home: Path) -> None:
    assert TOKEN not in text and "HF_TOKEN" not in text and "MY_SERVICE_PASSWORD" not in text
    assert str(home) not in text
    for name in {socket.gethostname(), socket.gethostname().split(".")[0]}:
        assert not re.search(r"(?<![\w.-])" + re.escape(name) + r"(?![\w-])", text), name


def test_env_markdown_holds_no_secret_and_names_the_run_and_its_failure(tmp_path):
    home = tmp_path / "home"
    run = failed_run(home)
    r = avatardoctor("env", str(run), env=secret_env(home))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert_nothing_secret(out, home)
    assert out.startswith("### Environment (avatardoctor env ")
    assert "| NCCL/CUDA variables | `CUDA_VISIBLE_DEVICES=0`, `NCCL_DEBUG=INFO` |" in out
    assert "| Python | " in out and "| torch | " in out and "| flash-attn | " in out
    assert "--ckpt_dir '~/LiveAvatar/ckpt/Wan2.2-S2V-14B' --prompt 'a | b'" in out  # quoted, in a fence
    assert "**Last failure:** oom (phase clip 4 denoise, gpu 2)" in out
    assert "<host>:4242 torch.OutOfMemoryError in ~/LiveAvatar/liveavatar/x.py" in out
    assert "avatardoctor's remedy: free ~/x on \\<host>, or a smaller --size 480\\*256" in out  # as written, shown


def test_env_json_follows_its_schema_and_holds_no_secret(tmp_path, validator):
    home = tmp_path / "home"
    run = failed_run(home)
    r = avatardoctor("env", str(run), "--json", env=secret_env(home))
    assert r.returncode == 0, r.stderr
    assert_nothing_secret(r.stdout, home)
    doc = json.loads(r.stdout)
    assert_valid(validator, doc)
    assert doc["environment"] == {"CUDA_VISIBLE_DEVICES": "0", "NCCL_DEBUG": "INFO"}
    assert doc["run"]["folder"] == "~/runs/20261120-090000-tpp"
    assert doc["run"]["outcome"] == "oom" and doc["run"]["failure"]["gpu"] == "2"
    assert doc["python"]["version"] == ".".join(map(str, sys.version_info[:3]))


def test_env_reads_the_gpus_and_driver_from_nvml(monkeypatch, validator, clean_env):
    install(monkeypatch, boxes.r535_hgx_h100())
    result = CliRunner().invoke(cli, ["env", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert_valid(validator, doc)
    assert len(doc["gpus"]) == 8 and doc["driver_version"].startswith("535.")
    assert {g["compute_capability"] for g in doc["gpus"]} == {"9.0"}
    text = CliRunner().invoke(cli, ["env"]).stdout
    assert f"| GPUs | 8 x {doc['gpus'][0]['name']} (" in text and "cc 9.0)" in text


def test_check_for_issue_prints_the_same_report():
    r = avatardoctor("check", "--for-issue", "--json")
    assert r.returncode in (0, 1), r.stderr
    assert json.loads(r.stdout)["schema"] == SCHEMA


def test_env_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    r = avatardoctor("env", str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        f"Error: env {tmp_path}: not a run folder (no debug_info.json); pass a folder `run` or `record` wrote"
    )


# ---- --python PATH -----------------------------------------------------------------------------------


def fake_python(tmp_path: Path, site: Path) -> Path:
    """An interpreter as the doctor sees one: asked for its path it answers with `site`; `import flash_attn`
    fails as a wheel built for another torch does."""
    script = tmp_path / "bin" / "python3.10"
    script.parent.mkdir()
    answer = json.dumps({"executable": str(script), "version": [3, 10, 14], "path": [str(site)]})
    script.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f"  *json.dumps*) echo {shlex.quote(answer)} ;;\n"
        "  'import flash_attn') echo 'ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c10' >&2; exit 1 ;;\n"
        "  *) exit 3 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


def sw_results(doc: dict) -> dict:
    return {c["id"]: c for c in doc["checks"] if c["id"].startswith("sw.")}


def test_python_this_interpreter_reads_the_same_and_names_it_in_the_remedies():
    plain = sw_results(json.loads(avatardoctor("check", "--json").stdout))
    r = avatardoctor("check", "--json", "--python", sys.executable)
    assert r.returncode in (0, 1), r.stderr
    named = sw_results(json.loads(r.stdout))
    assert {k: v["status"] for k, v in named.items()} == {k: v["status"] for k, v in plain.items()}
    assert {k: v["data"] for k, v in named.items()} == {k: v["data"] for k, v in plain.items()}
    pip_remedies = [c for c in named.values() if c["remedy"] and "pip " in c["remedy"]]
    assert pip_remedies  # this venv lacks what Live Avatar imports: sw.pins fails at least
    for c in pip_remedies:
        assert c["remedy"].startswith(f"{shlex.quote(sys.executable)} -m pip "), c
        assert plain[c["id"]]["remedy"].startswith("pip "), plain[c["id"]]


def test_python_another_interpreter_is_inspected_not_this_one(tmp_path):
    site = upstream_site(tmp_path / "site")
    python = fake_python(tmp_path, site)
    r = avatardoctor("check", "--json", "--python", str(python))
    assert r.returncode in (0, 1), r.stderr
    found = sw_results(json.loads(r.stdout))
    assert found["sw.python"]["status"] == "pass" and found["sw.python"]["data"]["version"] == "3.10.14"
    assert found["sw.python"]["data"]["executable"] == str(python)
    assert found["sw.torch"]["data"]["version"] == "2.8.0+cu128"  # the fake site's, not this venv's CPU torch
    assert found["sw.pins"]["status"] == "pass" and found["sw.attention"]["status"] == "pass"
    env = json.loads(avatardoctor("env", "--json", "--python", str(python)).stdout)
    assert env["torch"] == {"version": "2.8.0+cu128", "cuda": "12.8"} and env["flash_attn"] == "2.8.3"


def test_python_deep_imports_in_that_interpreter_and_the_remedy_names_it(tmp_path):
    site = upstream_site(tmp_path / "site")
    python = fake_python(tmp_path, site)
    ctx = replace(make_ctx("5xH800-healthy"), python=inspect_interpreter(str(python)), deep=True)
    result = software.check_attention.run(ctx)
    assert result.status is Status.FAIL
    assert "undefined symbol" in result.summary
    assert result.remedy == (
        f"reinstall it for this torch and CUDA: {python} -m pip uninstall -y flash-attn && "
        f"{python} -m pip install flash-attn==2.8.3 --no-build-isolation"
    )


def not_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "notpython"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: str(tmp / "missing" / "python"), "no such program"),
        (lambda tmp: str(tmp), "cannot run it"),
        (lambda tmp: not_python(tmp, "echo hello"), "did not answer as a Python interpreter"),
        (lambda tmp: not_python(tmp, "echo 'python: broken' >&2; exit 4"), "exited with 4 (python: broken)"),
        (lambda tmp: not_python(tmp, "while :; do echo y; done"), "did not answer"),  # output without end
    ],
)
def test_python_that_is_not_one_is_a_one_line_error_naming_the_flag(tmp_path, make, says):
    given = make(tmp_path)
    for command in ("check", "env"):
        r = avatardoctor(command, "--python", given)
        assert r.returncode == 2 and r.stdout == ""
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: --python {given}: "), r.stderr
        assert says in lines[0]
