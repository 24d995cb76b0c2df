"""The GPU acceptance run: one command proves (or disproves) on a real NVIDIA driver what the tests can
only show against recordings and a fake NVML, in under five minutes on one GPU, and leaves the
evidence in one folder (docs/machines.md, "The GPU acceptance run").

    tests/gpu/run.sh [--out DIR] [--no-save-fixture]

Steps, in order (each passes, fails, or is skipped; the run exits 1 if any failed, else 0):
  record          `machine record` this box; the file loads, and NVML's GPUs are CUDA's (UUIDs, names);
                  saved as tests/fixtures/machines/gpu-run-*.json, which every fixture test then loads
  check           `check` live, `check --json` and `check --machine RECORDED --json`, both JSON documents
                  valid against avatardoctor/schemas/check.schema.json
  sampler         the runner's NVML sampler at 10 and 100 Hz while a workload holds 0, 1, 4 and 16 GiB:
                  every sample in a hold within the tolerance of baseline + context + reserved (below),
                  and the sampler's CPU cost measured
  oom             a real CUDA out-of-memory in a rank under the shim, launched by the runner: the
                  classifier names the GPU, the allocation and the phase, and the shim's record agrees
  memory-history  the demo as one rank on the GPU (NCCL) with --memory-history: the snapshot opens in
                  torch.cuda._memory_viz, and the shim's CUDA peaks are below what NVML sampled
  nccl            `avatardoctor nccl --backend nccl` on every GPU, the P2P copy matrix, and a plain
                  torch.distributed all_reduce timed the same way in the same run, which must agree
  demo            `avatardoctor demo` (5 ranks) on this box's GPUs: with fewer GPUs than ranks it runs
                  every rank on the CPU with gloo and never fails with "Duplicate GPU"

Without CUDA (no torch CUDA build, no device, no NVML) every step is "skipped: no CUDA" and the run
exits 0. It ignores CUDA_VISIBLE_DEVICES and runs everything with CUDA_DEVICE_ORDER=PCI_BUS_ID, so a CUDA
ordinal is the NVML index; the record step checks that they name the same GPUs. This process never
initialises CUDA itself (torch's view comes from a child): its context would sit in every memory figure.

The sampler's tolerance is 64 MiB + 0.5% of the hold. The context (what the workload's process holds
beyond torch's reserved memory: the CUDA context, its kernels, the driver's bookkeeping) is measured
once, at the hold of 0 GiB, and must stay put: the workload launches no kernel after it, so no
lazily loaded module can add to it. cudaMalloc maps whole 2 MiB pages and torch's reserved count is
those pages, so the rest is what the driver adds per mapping (page tables: ~0.1% of the mapping) and
the GPU's other tenants, which an acceptance box should not have. 64 MiB is far below the smallest
hold (1 GiB) a sampler that misreads would miss.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "machines"
SCHEMA = "avatardoctor.gpu-acceptance/1"
MIB, GIB = 2**20, 2**30

HOLDS_GIB = (0, 1, 4, 16)
HOLD_S = 1.0
EDGE_S = 0.05  # samples this close to a hold's end may read the memory being freed
SAMPLER_RATES = (10.0, 100.0)
TOLERANCE_MIB, TOLERANCE_SHARE = 64.0, 0.005
OOM_PHASE = "clip 1 denoise"  # what oom_entry.py prints before it runs out of memory
# avatardoctor's all_reduce algbw over the reference's: the median over the sizes, so that one size's jitter
# (on one GPU every size is launch-bound) cannot decide; a missing synchronise or a unit slip is 8x or more.
ALGBW_AGREEMENT = (0.5, 2.0)
DEMO_RANKS = 5
STEP_TIMEOUT_S = 240

TORCH_VIEW = """
import json
try:
    import torch
except ImportError:
    print(json.dumps({"torch": None})); raise SystemExit
view = {"torch": torch.__version__, "cuda": torch.version.cuda, "available": torch.cuda.is_available(), "devices": []}
for i in range(torch.cuda.device_count() if view["available"] else 0):
    p = torch.cuda.get_device_properties(i)
    uuid = getattr(p, "uuid", None)
    view["devices"].append({"ordinal": i, "name": p.name, "uuid": None if uuid is None else f"GPU-{uuid}",
                            "total_bytes": p.total_memory, "cc": [p.major, p.minor]})
print(json.dumps(view))
"""


@dataclass
class StepResult:
    name: str
    status: str  # passed, failed, skipped
    summary: str
    facts: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def line(self) -> str:
        return f"{self.name}: {self.status}: {self.summary}"


@dataclass
class Box:
    """What every step needs: where results go, this box's CUDA devices and NVML facts."""

    out: Path
    devices: list[dict]  # torch's view, CUDA ordinal = NVML index (CUDA_DEVICE_ORDER=PCI_BUS_ID)
    machine: object | None = None  # avatardoctor.machine.model.Machine, once recorded
    save_fixture: bool = True
    target: int = 0  # the GPU the one-GPU steps use: once recorded, the one with the most free memory

    def log(self, name: str) -> Path:
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        return self.out / "logs" / name


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1", **extra}


def run(box: Box, name: str, argv: list[str], timeout_s: float = STEP_TIMEOUT_S, **kw) -> subprocess.CompletedProcess:
    """A child process, its output kept in logs/NAME.out and logs/NAME.err."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=child_env(), **kw)
    box.log(f"{name}.out").write_text(done.stdout)
    box.log(f"{name}.err").write_text(done.stderr)
    return done


def avatardoctor(*args: str) -> list[str]:
    return [sys.executable, "-m", "avatardoctor", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- no CUDA: every step skips ----------------------------------------------------------------------


def torch_view() -> dict:
    done = subprocess.run([sys.executable, "-c", TORCH_VIEW], capture_output=True, text=True, env=child_env())
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {"torch": None}


def why_no_cuda(view: dict) -> str | None:
    """None where CUDA and NVML both work here, else why not, in a few words."""
    if view.get("torch") is None:
        return "torch is not installed"
    if view.get("cuda") is None:
        return f"torch {view['torch']} is a CPU build"
    if not view.get("available") or not view.get("devices"):
        return "torch sees no CUDA device"
    from avatardoctor.machine.nvml import NvmlMemoryReader, NvmlUnavailable

    try:
        NvmlMemoryReader().close()
    except NvmlUnavailable as err:
        return f"NVML: {err}"
    return None


# ---- record -------------------------------------------------------------------------------------------


def judge_record(machine, devices: list[dict]) -> tuple[bool, str, dict]:
    """NVML's GPUs (PCI order) are CUDA's (ordinals in PCI_BUS_ID order): same count, UUIDs and names."""
    facts = {
        "driver": machine.driver_version,
        "cuda_driver": machine.cuda_driver_version,
        "memory_info_version": machine.memory_info_version,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "nvml_total_mib": g.total_bytes / MIB,
                "nvml_reserved_mib": None if g.reserved_bytes is None else g.reserved_bytes / MIB,
                "cuda_total_mib": d["total_bytes"] / MIB if d else None,  # cudaDeviceProp.totalGlobalMem
            }
            for g, d in zip(machine.gpus, devices + [None] * len(machine.gpus))
        ],
    }
    if machine.nvml_error:
        return False, f"NVML: {machine.nvml_error}", facts
    if len(machine.gpus) != len(devices):
        return False, f"NVML lists {len(machine.gpus)} GPUs, CUDA {len(devices)}", facts
    for g, d in zip(machine.gpus, devices):
        if d["uuid"] is not None and d["uuid"] != g.uuid:
            return False, f"CUDA device {d['ordinal']} is {d['uuid']}, NVML GPU {g.index} is {g.uuid}", facts
        if d["name"] != g.name:
            return False, f"CUDA device {d['ordinal']} is {d['name']!r}, NVML GPU {g.index} is {g.name!r}", facts
    names = sorted({g.name for g in machine.gpus})
    return True, f"{len(machine.gpus)} x {', '.join(names)}, driver {machine.driver_version}", facts


def fixture_name(machine) -> str:
    model = re.sub(r"[^A-Za-z0-9]+", "-", machine.gpus[0].name.removeprefix("NVIDIA ")).strip("-")
    major = (machine.driver_version or "unknown").split(".")[0]
    return f"gpu-run-{len(machine.gpus)}x{model}-r{major}-{datetime.now(timezone.utc):%Y%m%d}.json"


def step_record(box: Box) -> StepResult:
    from avatardoctor.machine.recorded import read_machine_file

    path = box.out / "machine.json"
    done = run(box, "machine-record", avatardoctor("machine", "record", "-o", str(path)))
    if done.returncode != 0:
        return StepResult("record", "failed", f"machine record exited {done.returncode}: {done.stderr.strip()[-300:]}")
    box.machine = read_machine_file(path)
    if box.machine.gpus:
        box.target = max(box.machine.gpus, key=lambda g: g.free_bytes).index
    ok, summary, facts = judge_record(box.machine, box.devices)
    if ok and box.save_fixture:
        fixture = FIXTURES / fixture_name(box.machine)
        if not fixture.exists():
            shutil.copyfile(path, fixture)
        facts["fixture"] = str(fixture.relative_to(REPO))
        summary += f"; saved as {facts['fixture']}"
    return StepResult("record", "passed" if ok else "failed", summary, facts)


# ---- check --------------------------------------------------------------------------------------------


def check_validator():
    """check/1 with the schemas it names by $id (machine/1, predict/1), loaded as tests/schemas.py loads them
    (this script also runs alone, with only tests/gpu on its path)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from schemas import validator

    return validator("avatardoctor.check/1")


def schema_errors(validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message[:200]}" for e in validator.iter_errors(doc)]


def judge_check(runs: dict[str, subprocess.CompletedProcess], validator, gpus: int) -> tuple[bool, str, dict]:
    """Each run exits 0 (ready) or 1 (not ready), never 2 or with a traceback; the JSON validates; the
    live JSON describes this machine through NVML."""
    facts: dict = {}
    for name, done in runs.items():
        if done.returncode not in (0, 1) or "Traceback" in done.stderr:
            return False, f"{name} exited {done.returncode}: {done.stderr.strip()[-300:]}", facts
        if "--json" not in name:
            continue
        doc = json.loads(done.stdout)
        errors = schema_errors(validator, doc)
        facts[name] = {"verdict": doc["verdict"], "counts": doc["counts"], "schema_errors": errors}
        if errors:
            return False, f"{name}: {len(errors)} schema errors, the first: {errors[0]}", facts
    live = json.loads(runs["check --json"].stdout)["machine"]
    if live["source"] != "nvml" or len(live["gpus"]) != gpus or live["nvml_error"]:
        return False, f"check --json saw {len(live['gpus'])} GPUs from {live['source']} ({live['nvml_error']})", facts
    verdict = facts["check --json"]["verdict"]
    return True, f"live check {verdict}; check --json and check --machine --json valid ({len(runs)} runs)", facts


def step_check(box: Box) -> StepResult:
    recorded = box.out / "machine.json"
    runs = {
        "check": run(box, "check", avatardoctor("check", "-v")),
        "check --json": run(box, "check-json", avatardoctor("check", "--json")),
    }
    if recorded.exists():
        runs["check --machine --json"] = run(
            box, "check-machine-json", avatardoctor("check", "--machine", str(recorded), "--json")
        )
    for name, done in runs.items():
        if "--json" in name and done.returncode in (0, 1):
            (box.out / f"{name.replace(' --', '-').replace(' ', '-')}.json").write_text(done.stdout)
    ok, summary, facts = judge_check(runs, check_validator(), len(box.devices))
    return StepResult("check", "passed" if ok else "failed", summary, facts)


# ---- sampler ------------------------------------------------------------------------------------------


@dataclass
class SamplerRun:
    hz: float
    gpu: str
    samples: list[tuple[float, float]]  # (time.monotonic(), used MiB) of each sample of the GPU
    events: list[dict]  # the workload's: one start, then one per hold
    peak_mib: float
    thread_cpu_s: float
    wall_s: float
    mean_sample_s: float


def measure_sampler(folder: Path, hz: float, gpu: int, workload: Callable) -> SamplerRun:
    """The runner's sampler (NVML, this GPU only) around workload(sampler), which returns its events."""
    from avatardoctor.runner.folder import RunFolder
    from avatardoctor.runner.sampler import MemorySampler

    run_folder = RunFolder(folder)
    sampler = MemorySampler(run_folder, hz=hz, source="nvml", gpu_indices=[gpu])
    sampler.start()
    try:
        wait_for(lambda: sampler.samples_taken >= 3, "three baseline samples")
        events = workload(sampler)
        after = sampler.samples_taken
        wait_for(lambda: sampler.samples_taken > after, "a sample after the workload")
    finally:
        sampler.stop()
    samples = []
    with run_folder.gpu_memory_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["gpu"] == str(gpu) and row["memory_used_mib"]:
                samples.append((sampler.started_monotonic + float(row["elapsed_s"]), float(row["memory_used_mib"])))
    return SamplerRun(
        hz,
        str(gpu),
        samples,
        events,
        sampler.peaks_mib().get(str(gpu), 0.0),
        sampler.thread_cpu_seconds,
        samples[-1][0] - sampler.started_monotonic if samples else 0.0,
        sampler.mean_sample_seconds,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.01)


def tolerance_mib(reserved_mib: float) -> float:
    return TOLERANCE_MIB + TOLERANCE_SHARE * reserved_mib


def judge_sampler(measured: SamplerRun) -> tuple[bool, str, dict]:
    """Every sample inside a hold within the tolerance of baseline + context + reserved; the peak too."""
    start = next((e["at"] for e in measured.events if e["event"] == "start"), None)
    holds = [e for e in measured.events if e["event"] == "hold"]
    baseline = [used for t, used in measured.samples if start is not None and t < start]
    facts: dict = {
        "hz": measured.hz,
        "samples": len(measured.samples),
        "cpu_share_of_a_core": measured.thread_cpu_s / measured.wall_s if measured.wall_s else None,
        "mean_sample_ms": measured.mean_sample_s * 1e3,
        "holds": [],
    }
    if not baseline or not holds or holds[0]["gib"] != 0:
        return False, f"{measured.hz:g} Hz: no baseline or no 0 GiB hold to measure the context from", facts

    def inside(hold: dict) -> list[float]:
        return [used for t, used in measured.samples if hold["from"] <= t <= hold["to"] - EDGE_S]

    base = statistics.median(baseline)
    first = inside(holds[0])
    if not first:
        return False, f"{measured.hz:g} Hz: no sample inside the 0 GiB hold", facts
    context = statistics.median(first) - base - holds[0]["reserved_bytes"] / MIB
    facts.update(baseline_mib=base, context_mib=context)
    problems = []
    for hold in holds:
        seen = inside(hold)
        reserved = hold["reserved_bytes"] / MIB
        expected = base + context + reserved
        worst = max((abs(used - expected) for used in seen), default=None)
        facts["holds"].append(
            {
                "gib": hold["gib"],
                "reserved_mib": reserved,
                "expected_mib": expected,
                "samples": len(seen),
                "min_mib": min(seen, default=None),
                "max_mib": max(seen, default=None),
                "worst_error_mib": worst,
            }
        )
        if worst is None:
            problems.append(f"no sample inside the {hold['gib']} GiB hold")
        elif worst > tolerance_mib(reserved):
            problems.append(f"{hold['gib']} GiB hold: a sample {worst:.0f} MiB from {expected:.0f} MiB")
    top = max(holds, key=lambda h: h["reserved_bytes"])
    top_expected = base + context + top["reserved_bytes"] / MIB
    facts["peak_mib"], facts["peak_expected_mib"] = measured.peak_mib, top_expected
    if abs(measured.peak_mib - top_expected) > tolerance_mib(top["reserved_bytes"] / MIB):
        problems.append(f"peak {measured.peak_mib:.0f} MiB, expected {top_expected:.0f} MiB")
    cost = facts["cpu_share_of_a_core"]
    summary = (
        f"{measured.hz:g} Hz: {len(holds)} holds within {TOLERANCE_MIB:.0f} MiB + {TOLERANCE_SHARE:.1%}, "
        f"context {context:.0f} MiB, sampler {cost or 0:.1%} of a core"
    )
    return not problems, "; ".join(problems) if problems else summary, facts


def nvidia_workload(box: Box, hz: float) -> Callable:
    """workload.py on the target GPU, as a function of the sampler (which it does not need)."""

    def start(_sampler) -> list[dict]:
        argv = [sys.executable, str(HERE / "workload.py"), ",".join(map(str, fitting_holds(box))), str(HOLD_S)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            env=child_env(CUDA_VISIBLE_DEVICES=str(box.target)),
        )
        box.log(f"workload-{hz:g}hz.err").write_text(done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"the workload exited {done.returncode}: {done.stderr.strip()[-300:]}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]

    return start


def fitting_holds(box: Box) -> list[int]:
    free_gib = next(g.free_bytes for g in box.machine.gpus if g.index == box.target) / GIB
    return [gib for gib in HOLDS_GIB if gib <= free_gib - 4]  # room for the context and the allocator


def step_sampler(box: Box) -> StepResult:
    if box.machine is None:
        return StepResult("sampler", "failed", "no recorded machine (the record step failed)")
    results, facts = [], {}
    for hz in SAMPLER_RATES:
        measured = measure_sampler(box.out / f"sampler-{hz:g}hz", hz, box.target, nvidia_workload(box, hz))
        ok, summary, rate_facts = judge_sampler(measured)
        results.append((ok, summary))
        facts[f"{hz:g}hz"] = rate_facts
    ok = all(r for r, _ in results)
    return StepResult("sampler", "passed" if ok else "failed", " | ".join(s for _, s in results), facts)


# ---- oom ----------------------------------------------------------------------------------------------


def judge_oom(failure: dict, rank: dict | None, log_text: str, expected_gpu: int) -> tuple[bool, str, dict]:
    """The classifier, from the real message, names the GPU (as NVML numbers it), the allocation and the
    phase; the shim's OOM observer saw the same allocation on the rank's device."""
    asked = re.search(r"acceptance: requesting (\d+) bytes", log_text)
    request_mib = int(asked[1]) / MIB if asked else None
    oom = (rank or {}).get("oom") or {}
    facts = {"failure": failure, "shim_oom": oom, "request_mib": request_mib, "shim_exit": (rank or {}).get("exit")}
    problems = []
    if request_mib is None:
        problems.append("the entry never asked for the allocation")
    if failure.get("class") != "oom":
        problems.append(f"classified {failure.get('class')!r}: {failure.get('message', '')[:200]}")
    if failure.get("gpu") != expected_gpu:
        problems.append(f"GPU {failure.get('gpu')} named, expected {expected_gpu}")
    if failure.get("phase") != OOM_PHASE:
        problems.append(f"phase {failure.get('phase')!r}, expected {OOM_PHASE!r}")
    tried = failure.get("tried_to_allocate_mib")
    if request_mib is not None and (tried is None or abs(tried - request_mib) > 0.01 * 1024):  # torch prints x.xx GiB
        problems.append(f"tried to allocate {tried} MiB, the entry asked for {request_mib:.0f} MiB")
    if not oom:
        problems.append("the shim recorded no out-of-memory (its observer was not attached?)")
    elif request_mib is not None:
        if oom.get("device") != 0 or abs(oom.get("tried_to_allocate_mib", 0) - request_mib) > 0.1:
            problems.append(f"the shim saw {oom.get('tried_to_allocate_mib')} MiB on device {oom.get('device')}")
    if not str(facts["shim_exit"]).startswith("OutOfMemoryError"):
        problems.append(f"the shim says the rank ended with {facts['shim_exit']!r}")
    if problems:
        return False, "; ".join(problems), facts
    return True, f"GPU {expected_gpu}, {request_mib / 1024:.0f} GiB, during {OOM_PHASE}; the shim agrees", facts


def launch(box: Box, mode: str, entry: list[str], argv: tuple[str, ...] = (), memory_history: bool = False):
    """One rank on the target GPU, by the runner (runner.run.execute), as `avatardoctor run` launches."""
    from avatardoctor.planfile import PlanFile
    from avatardoctor.runner.run import RunOptions, execute

    env = {"CUDA_VISIBLE_DEVICES": str(box.target), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    plan = PlanFile(mode=mode, nproc=1, argv=argv, master_port=free_port(), env=env)
    options = RunOptions(
        out_dir=box.out / "runs",
        sample_hz=10,
        hang_timeout_s=120,
        cwd=box.out,
        entry=entry,
        memory_history=memory_history,
    )
    return execute(plan, options)


def rank_record(folder) -> dict | None:
    path = folder.ranks / "rank0.json"
    return json.loads(path.read_text()) if path.exists() else None


def step_oom(box: Box) -> StepResult:
    result = launch(box, "gpu-oom", [str(HERE / "oom_entry.py")])
    log_text = result.folder.inference_log.read_text(errors="replace")
    ok, summary, facts = judge_oom(result.failure.to_dict(), rank_record(result.folder), log_text, box.target)
    facts["run_folder"] = str(result.folder.root)
    return StepResult("oom", "passed" if ok else "failed", summary, facts)


# ---- memory-history -----------------------------------------------------------------------------------


def judge_memory_history(
    outcome: str, log_text: str, snapshot_opened: dict[str, int], rank: dict | None, nvml_peak_mib: float | None
) -> tuple[bool, str, dict]:
    """The demo ran on the GPU with NCCL; torch's tools open its snapshot; the shim's CUDA peaks are real
    and below what NVML sampled on that GPU (which adds the context to torch's reserved memory)."""
    events = (rank or {}).get("events") or []
    reserved = max((e.get("max_reserved_mib") or 0 for e in events), default=0)
    allocated = max((e.get("max_allocated_mib") or 0 for e in events), default=0)
    facts = {"outcome": outcome, "viz": snapshot_opened, "max_reserved_mib": reserved, "max_allocated_mib": allocated}
    facts["nvml_peak_mib"] = nvml_peak_mib
    problems = []
    if outcome != "success":
        problems.append(f"the demo ended {outcome}")
    if "demo: 1 rank on GPU 0 with nccl" not in log_text:
        problems.append("the demo did not run on the GPU with NCCL")
    for tool, code in snapshot_opened.items():
        if code != 0:
            problems.append(f"torch.cuda._memory_viz {tool} exited {code}")
    if not snapshot_opened:
        problems.append("no memory snapshot (ranks/rank0-memory.pickle)")
    if not 0 < allocated <= reserved:
        problems.append(f"the shim's CUDA peaks: {allocated} MiB allocated, {reserved} MiB reserved")
    if nvml_peak_mib is None or nvml_peak_mib < reserved:
        problems.append(f"NVML's sampled peak {nvml_peak_mib} MiB is below torch's reserved {reserved} MiB")
    if problems:
        return False, "; ".join(problems), facts
    return True, f"snapshot opens; shim peaks {allocated:.0f}/{reserved:.0f} MiB, NVML {nvml_peak_mib:.0f} MiB", facts


def step_memory_history(box: Box) -> StepResult:
    from avatardoctor.demo.checkpoints import demo_checkpoint
    from avatardoctor.runner.auto import demo_plan

    plan = demo_plan(demo_checkpoint(os.environ))  # its argv: one rank runs it as one GPU (the entry reads WORLD_SIZE)
    result = launch(box, "gpu-demo", ["-m", "avatardoctor.demo.workload"], plan.argv, memory_history=True)
    snapshot = result.folder.ranks / "rank0-memory.pickle"
    opened = {}
    if snapshot.exists():
        for tool, extra in (("stats", []), ("trace_plot", ["-o", str(box.out / "memory-trace.html")])):
            done = run(
                box, f"memory-viz-{tool}", [sys.executable, "-m", "torch.cuda._memory_viz", tool, str(snapshot), *extra]
            )
            opened[tool] = done.returncode
    log_text = result.folder.inference_log.read_text(errors="replace")
    peak = result.peaks_mib.get(str(box.target))
    ok, summary, facts = judge_memory_history(result.failure.cls, log_text, opened, rank_record(result.folder), peak)
    facts["run_folder"] = str(result.folder.root)
    return StepResult("memory-history", "passed" if ok else "failed", summary, facts)


# ---- nccl ---------------------------------------------------------------------------------------------


def judge_nccl(
    cli: subprocess.CompletedProcess, document_errors: list[str], outcome, reference: dict | None, world: int
):
    """`nccl --json` is a valid check/1 document whose nccl.live passes with NCCL on every GPU; its busbw
    is algbw x 2(n-1)/n; its algbw agrees with the reference's; the P2P matrix covers every pair."""
    facts = {"world_size": world, "reference": reference, "p2p_gbs": outcome.p2p_gbs, "allreduce": outcome.allreduce}
    problems = []
    if cli.returncode not in (0, 1):
        problems.append(f"avatardoctor nccl exited {cli.returncode}: {cli.stderr.strip()[-200:]}")
    else:
        live = next(c for c in json.loads(cli.stdout)["checks"] if c["id"] == "nccl.live")
        facts["cli"] = {
            "status": live["status"],
            "summary": live["summary"],
            "busbw_gbs": live["data"].get("busbw_gbs"),
        }
        if live["status"] != "pass":
            problems.append(f"nccl.live {live['status']}: {live['summary']}")
    problems += [f"nccl --json against the check/1 schema: {e}" for e in document_errors]
    if not outcome.ok:
        problems.append(f"the test: {outcome.summary}")
    factor = 2 * (world - 1) / world
    for row in outcome.allreduce:
        if abs(row["busbw_gbs"] - row["algbw_gbs"] * factor) > 0.002 + 1e-3 * row["algbw_gbs"]:
            problems.append(f"busbw {row['busbw_gbs']} is not algbw {row['algbw_gbs']} x {factor:.3f}")
    if not reference or not outcome.allreduce:
        problems.append("no reference all_reduce figures" if not reference else "no all_reduce figures")
    else:
        pairs = list(zip(outcome.allreduce, reference["allreduce"]))
        ratio = statistics.median(
            ours["algbw_gbs"] / theirs["algbw_gbs"] if theirs["algbw_gbs"] else float("inf") for ours, theirs in pairs
        )
        facts["algbw_ratio"] = ratio
        if len(pairs) != len(reference["allreduce"]) or not ALGBW_AGREEMENT[0] <= ratio <= ALGBW_AGREEMENT[1]:
            problems.append(f"algbw {ratio:.2f}x the reference's (median over {len(pairs)} sizes)")
    matrix = outcome.p2p_gbs
    if not matrix or len(matrix) != world or any(len(r) != world or min(r) <= 0 for r in matrix):
        problems.append(f"the P2P matrix is not {world} x {world} positive figures: {matrix}")
    if problems:
        return False, "; ".join(problems), facts
    busbw = outcome.allreduce[-1]["busbw_gbs"]
    return True, f"{world} rank(s) on NCCL, busbw {busbw} GB/s, algbw {facts['algbw_ratio']:.2f}x the reference", facts


def step_nccl(box: Box) -> StepResult:
    from avatardoctor.nccltest.launch import NcclTest, run_test

    world = min(len(box.devices), 8)
    port = str(free_port())
    cli = run(
        box, "nccl", avatardoctor("nccl", "--backend", "nccl", "--nproc", str(world), "--json", "--master-port", port)
    )
    errors = schema_errors(check_validator(), json.loads(cli.stdout)) if cli.returncode in (0, 1) else []
    test = NcclTest("nccl", world, master_port=free_port())
    outcome = run_test(test)  # the same launch as the command above, for the P2P matrix the JSON leaves out
    reference_file = box.out / "allreduce-reference.json"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world)]
    torchrun += ["--master_port", str(free_port()), str(HERE / "allreduce_reference.py")]
    sizes = ",".join(map(str, test.sizes))
    run(box, "allreduce-reference", [*torchrun, "--out", str(reference_file), "--sizes", sizes, "--iters", "5"])
    reference = json.loads(reference_file.read_text()) if reference_file.exists() else None
    ok, summary, facts = judge_nccl(cli, errors, outcome, reference, world)
    if box.machine is not None:  # what NVML says about the pairs, beside what the copies measured
        facts["nvml_pairs"] = [asdict(p) for p in box.machine.pairs]
    return StepResult("nccl", "passed" if ok else "failed", summary, facts)


# ---- demo ---------------------------------------------------------------------------------------------


def judge_demo(code: int, text: str, gpus: int) -> tuple[bool, str, dict]:
    """`avatardoctor demo` succeeds with its five ranks whatever the GPU count: NCCL on a GPU per rank,
    else gloo on the CPU, and never NCCL's "Duplicate GPU"."""
    from avatardoctor.demo.workload import placement

    expected = f"demo: {placement(0, DEMO_RANKS, gpus).note}"
    facts = {"exit_code": code, "gpus": gpus, "expected": expected}
    problems = []
    if re.search(r"[Dd]uplicate GPU", text):
        problems.append("NCCL refused: duplicate GPU")
    if expected not in text:
        problems.append(f"missing {expected!r}")
    if code != 0:
        problems.append(f"exit code {code}")
    if problems:
        return False, "; ".join(problems), facts
    return True, expected.removeprefix("demo: "), facts


def step_demo(box: Box) -> StepResult:
    out_dir = box.out / "demo"
    done = run(box, "demo", avatardoctor("demo", "--out-dir", str(out_dir), "--master-port", str(free_port())))
    logs = "".join(p.read_text(errors="replace") for p in out_dir.glob("*/logs/inference.log"))
    ok, summary, facts = judge_demo(done.returncode, done.stdout + done.stderr + logs, len(box.devices))
    return StepResult("demo", "passed" if ok else "failed", summary, facts)


# ---- the run ------------------------------------------------------------------------------------------

STEPS: tuple[tuple[str, Callable[[Box], StepResult]], ...] = (
    ("record", step_record),
    ("check", step_check),
    ("sampler", step_sampler),
    ("oom", step_oom),
    ("memory-history", step_memory_history),
    ("nccl", step_nccl),
    ("demo", step_demo),
)


def run_step(box: Box, name: str, step: Callable[[Box], StepResult]) -> StepResult:
    started = time.monotonic()
    try:
        result = step(box)
    except Exception as err:  # a step that crashes is a finding, not the end of the run
        box.log(f"{name}-traceback.txt").write_text(traceback.format_exc())
        result = StepResult(
            name, "failed", f"crashed: {type(err).__name__}: {str(err)[:300]} (logs/{name}-traceback.txt)"
        )
    result.seconds = round(time.monotonic() - started, 1)
    return result


def write_summary(out: Path, view: dict, no_cuda: str | None, results: list[StepResult]) -> None:
    doc = {
        "schema": SCHEMA,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "no_cuda": no_cuda,
        "torch": view,
        "passed": not any(r.status == "failed" for r in results),
        "steps": [asdict(r) for r in results],
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    lines = [f"# GPU acceptance run, {doc['hostname']}, {doc['finished_at']}", ""]
    lines += ["| step | status | seconds | summary |", "|---|---|---:|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds} | {r.summary.replace('|', '/')} |" for r in results]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The GPU acceptance run (docs/machines.md).")
    parser.add_argument("--out", type=Path, help="the results folder (default: tests/gpu/results/<UTC time>-<host>)")
    parser.add_argument(
        "--no-save-fixture", action="store_true", help="do not copy the recorded machine into tests/fixtures"
    )
    args = parser.parse_args(argv)
    # The run is about the whole box, numbered as NVML numbers it: each step chooses its own GPUs.
    hidden = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if hidden is not None:
        print(f"CUDA_VISIBLE_DEVICES={hidden} is ignored: the run covers every GPU of this box")
    view = torch_view()
    no_cuda = why_no_cuda(view)
    # A run without CUDA proves nothing about a GPU: its folder is named so (and git ignores it).
    stamp = f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{socket.gethostname()}" + ("-no-cuda" if no_cuda else "")
    out = args.out or HERE / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    box = Box(out.resolve(), view.get("devices") or [], save_fixture=not args.no_save_fixture)
    results = []
    for name, step in STEPS:
        result = StepResult(name, "skipped", f"no CUDA ({no_cuda})") if no_cuda else run_step(box, name, step)
        results.append(result)
        print(result.line, flush=True)
    write_summary(box.out, view, no_cuda, results)
    print(f"results: {box.out}")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
