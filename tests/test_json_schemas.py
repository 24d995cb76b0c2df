"""Every JSON document avatardoctor writes, produced by the real command or writer, against the schema it
names (avatardoctor/schemas, draft 2020-12); and each schema refuses what its writer never writes."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import MACHINES
from fake_pynvml import boxes, install
from runfixture import make_run
from schemas import SCHEMAS, assert_valid, problems, schemas

from avatardoctor import __version__
from avatardoctor.cli import cli

CHECKOUT = Path(__file__).parent / "fixtures" / "fake_liveavatar"
DOCUMENTS = {"calibration", "catalogue", "check", "ckpt", "compare", "debug", "env", "fleet", "machine"}
DOCUMENTS |= {"measurements", "plan", "predict", "report", "run", "skeleton"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def invoke(*args: str, codes=(0, 1), env: dict | None = None) -> dict:
    """The command through click's runner; its stdout parsed (nothing else may be on it)."""
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exit_code in codes, result.output
    return json.loads(result.stdout)


def process(*args: str, codes=(0,), timeout: float = 300, env: dict | None = None) -> dict:
    """The command as a real process; its stdout parsed."""
    run = subprocess.run(
        [sys.executable, "-m", "avatardoctor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert run.returncode in codes, run.stdout + run.stderr
    return json.loads(run.stdout)


def valid_and_versioned(doc: dict) -> dict:
    assert_valid(doc)
    assert doc["avatardoctor_version"] == __version__
    return doc


def test_one_schema_file_per_document_named_as_it_names_itself():
    assert {name.removeprefix("avatardoctor.").removesuffix("/1") for name in schemas()} == DOCUMENTS
    for name, schema in schemas().items():
        kind = name.removeprefix("avatardoctor.").removesuffix("/1")
        assert (SCHEMAS / f"{kind}.schema.json").is_file()
        assert schema["$id"] == f"https://avatardoctor.invalid/schemas/{name}"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("args", [["--demo"], ["--machine", "8xH100"], ["--machine", "1x4090"]])
def test_predict(args):
    doc = valid_and_versioned(invoke("predict", "--json", *args))
    if args[-1] == "1x4090":  # it does not fit: the advice is filled in, and checked too
        assert doc["prediction"]["verdict"] in ("wont-fit", "wont-run") and doc["hardware_advice"]


def test_plan_printed_and_written_as_one_document(tmp_path):
    printed = valid_and_versioned(invoke("plan", "--json", "--machine", "8xH100", "-o", str(tmp_path / "plan.json")))
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written == printed and printed["prediction"] is not None


def test_a_plan_where_nothing_fits():
    doc = valid_and_versioned(invoke("plan", "--json", "--demo"))
    assert "argv" not in doc and doc["reasons"]


@pytest.mark.parametrize("generation", sorted(g for g in boxes.GENERATIONS if "mig" not in g))  # MIG: not recorded
def test_machine_record(monkeypatch, tmp_path, generation):
    install(monkeypatch, boxes.GENERATIONS[generation]())
    valid_and_versioned(invoke("machine", "record", codes=(0,)))
    result = CliRunner().invoke(cli, ["machine", "record", "-o", str(tmp_path / "box.json")])
    assert result.exit_code == 0, result.output
    valid_and_versioned(json.loads((tmp_path / "box.json").read_text()))


@pytest.mark.parametrize("name", sorted(p.stem for p in MACHINES.glob("*.json")))
def test_recorded_machine_files_written_before_the_version_field_are_still_valid(name):
    doc = json.loads((MACHINES / f"{name}.json").read_text())
    assert problems("avatardoctor.machine/1", doc) == []


def test_machine_list():
    doc = valid_and_versioned(invoke("machine", "list", "--json", codes=(0,)))
    assert {"4090", "H100"} <= {c["model"] for c in doc["cards"]}


def test_ckpt_verify_sound_and_broken(full_skeleton, tmp_path):
    sound = valid_and_versioned(invoke("ckpt", "verify", "--json", str(full_skeleton)))
    assert sound["components"] is not None
    written = valid_and_versioned(invoke("ckpt", "skeleton", "--tiny", "--json", str(tmp_path / "tiny"), codes=(0,)))
    assert written["tiny"] and written["files"] > 0 and Path(written["root"]).is_dir()
    broken = valid_and_versioned(invoke("ckpt", "verify", "--json", written["root"]))
    assert broken["verdict"] == "broken"


def test_fleet(tmp_path):
    for i, args in enumerate([["--demo"], ["--machine", str(MACHINES / "5xH800-healthy.json")]]):
        (tmp_path / f"node{i}.json").write_text(json.dumps(invoke("check", "--json", *args)))
    (tmp_path / "bad.json").write_text("{")
    doc = valid_and_versioned(invoke("fleet", "--json", *map(str, sorted(tmp_path.iterdir())), codes=(2,)))
    assert {n["verdict"] for n in doc["nodes"]} >= {"unreadable"} and doc["outliers"]


def test_report_and_compare_of_run_folders(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", oom_gpu=None)
    printed = valid_and_versioned(invoke("report", "--json", str(a), codes=(0,)))
    assert printed == json.loads((a / "report" / "summary.json").read_text())
    compare = valid_and_versioned(
        invoke("report", "--json", "--compare", str(a), str(b), "-o", str(tmp_path / "cmp"), codes=(0,))
    )
    assert compare["schema"] == "avatardoctor.compare/1"
    assert [s["outcome"] for s in compare["compare"]] == ["oom", "success"]
    # a compare folder is still ours: drawn again without --force
    invoke("report", "--json", "--compare", str(a), str(b), "-o", str(tmp_path / "cmp"), codes=(0,))


def test_report_of_an_nvidia_smi_log(tmp_path):
    log = tmp_path / "gpu.csv"
    log.write_text(
        "timestamp, index, memory.used [MiB], memory.total [MiB]\n"
        + "".join(
            f"2026/11/20 09:00:{s:02d}.000, {g}, {1000 + 100 * s} MiB, 24564 MiB\n" for s in range(5) for g in (0, 1)
        )
    )
    doc = valid_and_versioned(invoke("report", "--json", str(log), codes=(0,)))
    assert doc["source"]["kind"] == "nvidia-smi" and len(doc["gpus"]) == 2


def test_calibrate_import_and_report(tmp_path):
    env = {"AVATARDOCTOR_HOME": str(tmp_path / "home")}
    measurements = {
        "schema": "avatardoctor.measurements/1",
        "measurements": [
            {
                "run_id": f"run{i}",
                "gpu_name": "NVIDIA H800",
                "role": "dit",
                "phase": "denoise",
                "measured_bytes": 40 * 2**30 + i * 2**28,
                "exact_bytes": 36 * 2**30,
                "processes": 5,
                "nccl_peers": 4,
                "token_dims": 1.0e9 + i * 1.0e8,
                "decode_pixels": 0.0,
                "recorded_at": "2026-11-20T09:00:00+00:00",
            }
            for i in range(4)
        ],
    }
    assert problems("avatardoctor.measurements/1", measurements) == []  # as written before the version field
    path = tmp_path / "m.json"
    path.write_text(json.dumps(measurements))
    doc = valid_and_versioned(invoke("calibrate", "--json", "--import", str(path), codes=(0,), env=env))
    assert doc["measurements"] == 4


def test_a_runs_measurements_and_their_import(tmp_path):
    """logs/measurements.json as the runner writes it after a run of an 8xH100 plan, then imported."""
    from datetime import datetime, timezone

    from avatardoctor.planfile import read_plan_file
    from avatardoctor.runner.folder import RunFolder
    from avatardoctor.runner.run import _write_measurements

    invoke("plan", "--json", "--machine", "8xH100", "-o", str(tmp_path / "plan.json"), codes=(0,))
    plan = read_plan_file(tmp_path / "plan.json")
    folder = RunFolder(tmp_path / "run")
    folder.logs.mkdir(parents=True)
    peaks = {str(g["index"]): g["peak_gib"] * 1024 for g in plan.prediction["gpus"]}
    _write_measurements(
        folder, plan, peaks, dict.fromkeys(peaks, 150.0), [("clip 1", 100.0, 200.0)], datetime.now(timezone.utc)
    )
    written = valid_and_versioned(json.loads(folder.measurements_json.read_text()))
    assert len(written["measurements"]) == plan.nproc
    env = {"AVATARDOCTOR_HOME": str(tmp_path / "home")}
    doc = valid_and_versioned(
        invoke("calibrate", "--json", "--import", str(folder.measurements_json), codes=(0,), env=env)
    )
    assert doc["measurements"] == plan.nproc


torch_only = pytest.mark.skipif(
    __import__("importlib").util.find_spec("torch") is None, reason="the [torch] extra: torchrun launches the ranks"
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """`avatardoctor demo --json`, once: a real run of five CPU ranks, its folder and its report."""
    out = tmp_path_factory.mktemp("demo")
    return process("demo", "--json", "--out-dir", str(out), "--master-port", str(free_port()), timeout=300)


@torch_only
def test_demo_prints_its_run_and_writes_a_valid_run_folder(demo_run):
    valid_and_versioned(demo_run)
    (attempt,) = demo_run["attempts"]
    assert demo_run["outcome"] == attempt["outcome"] == "success" and attempt["failure"] is None
    folder = Path(attempt["folder"])
    valid_and_versioned(json.loads((folder / "plan.json").read_text()))
    valid_and_versioned(json.loads((folder / "debug_info.json").read_text()))
    valid_and_versioned(json.loads(Path(attempt["report"]).with_name("summary.json").read_text()))


@torch_only
def test_run_plan_json(tmp_path):
    plan = {
        "schema": "avatardoctor.plan/1",
        "mode": "tpp",
        "nproc": 2,
        "master_port": free_port(),
        "env": {"FAKE_LIVEAVATAR_MODE": "oom:1:1", "GLOO_SOCKET_IFNAME": "lo"},
        "argv": ["--num_clip", "2", "--infer_frames", "48", "--size", "384*256", "--prompt", "hello"],
        "prediction": {"verdict": "fits", "gpus": []},
        "config": {"mode": "tpp", "num_clip": 2},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    args = ["run", "--json", "--plan", str(path), "--liveavatar", str(CHECKOUT), "--out-dir", str(tmp_path / "runs")]
    doc = valid_and_versioned(process(*args, codes=(1,)))
    assert doc["outcome"] == "oom" and doc["attempts"][0]["failure"]["class"] == "oom"
    folder = Path(doc["attempts"][0]["folder"])
    debug = valid_and_versioned(json.loads((folder / "debug_info.json").read_text()))
    assert debug["failure"] == doc["attempts"][0]["failure"]


@torch_only
def test_nccl_prints_a_whole_check_document():
    doc = process(
        "nccl", "--json", "--backend", "gloo", "--nproc", "2", "--master-port", str(free_port()), codes=(0, 1)
    )
    valid_and_versioned(doc)
    assert doc["schema"] == "avatardoctor.check/1" and any(c["id"] == "nccl.live" for c in doc["checks"])


# What each writer never writes: each schema must refuse it.
BROKEN = {
    "predict: a verdict it has not": ("predict", ["--demo"], lambda d: d["prediction"].update(verdict="maybe")),
    "predict: no version": ("predict", ["--demo"], lambda d: d.pop("avatardoctor_version")),
    "plan: argv as one string": ("plan", ["--machine", "8xH100"], lambda d: d.update(argv="--size 720*400")),
    "plan: an unknown field": ("plan", ["--machine", "8xH100"], lambda d: d.update(extra=1)),
    "plan: a port out of range": ("plan", ["--machine", "8xH100"], lambda d: d.update(master_port=70000)),
    "plan: a GPU without its index": ("plan", ["--machine", "8xH100"], lambda d: d["machine"]["gpus"][0].pop("index")),
    "catalogue: memory as text": ("machine list", [], lambda d: d["cards"][0].update(total_bytes="24 GB")),
    "catalogue: another schema": ("machine list", [], lambda d: d.update(schema="avatardoctor.catalogue/2")),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_document_is_refused(case):
    command, args, mutate = BROKEN[case]
    doc = copy.deepcopy(invoke(*command.split(), "--json", *args))
    name = doc["schema"]
    assert problems(name, doc) == []
    mutate(doc)
    assert problems(name, doc) != []


def test_broken_run_folder_documents_are_refused(tmp_path):
    run = make_run(tmp_path / "a")
    summary = invoke("report", "--json", str(run), codes=(0,))
    for mutate in (
        lambda d: d["gpus"][0].update(measured_peak_gib="41 GiB"),
        lambda d: d.pop("gpus"),
        lambda d: d["source"].update(kind="pdf"),
        lambda d: d["gpus"][0].update(headroom_at="later"),
    ):
        broken = copy.deepcopy(summary)
        mutate(broken)
        assert problems("avatardoctor.report/1", broken)
    assert problems("avatardoctor.report/1", {**summary, "throughput": {"added": "by a later /1"}}) == []  # open
    speed = summary["speed"]
    assert problems("avatardoctor.report/1", {**summary, "speed": {**speed, "per_rank": [{"rank": "0"}]}})
    debug = {"schema": "avatardoctor.debug/1", "avatardoctor_version": "0.1.0", "outcome": "oom", "exit_code": 1}
    assert problems("avatardoctor.debug/1", {**debug, "failure": None}) == []
    assert problems("avatardoctor.debug/1", debug)  # no failure field
    assert problems("avatardoctor.debug/1", {**debug, "failure": {"class": "oom"}})  # a failure without its fields
    m = {"schema": "avatardoctor.measurements/1", "measurements": [{"run_id": "r", "role": "encoder"}]}
    assert problems("avatardoctor.measurements/1", m)
