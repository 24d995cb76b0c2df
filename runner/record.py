"""`avatardoctor record`: the plan a command line describes, so that any launch (upstream's own scripts, a
torchrun line typed by hand, a running job's command line) is recorded as `run` records its own.

Where the command is Live Avatar's entry (directly, under torchrun, or in one of upstream's
`infinite_inference_*.sh` scripts, whose torchrun line is read), the configuration is read from its flags;
anything else is recorded without one (mode `record`, one process: memory, log and outcome still are). A running
job's plan is read the same way from its launcher's command line (`--attach`), found through NVML when only its GPUs
are named (`--attach-gpus`, gpu_job).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath

import psutil

from avatardoctor.config import resolve_config
from avatardoctor.errors import InputError
from avatardoctor.files import FileTooLarge, read_limited
from avatardoctor.jobs import Attached
from avatardoctor.planfile import PlanFile
from avatardoctor.runner.run import attached_command
from avatardoctor.upstream import ENTRY_SCRIPT, GRADIO_ENTRY, SIZE_PATTERN, str2bool

SCRIPT_LIMIT = 2**20  # a launch script is a few lines
ENTRY_NAMES = (PurePath(ENTRY_SCRIPT).name, PurePath(GRADIO_ENTRY).name)
ENTRY_MODULES = ("avatardoctor.demo.workload",)  # the stand-in entry that prints what Live Avatar prints
LAUNCHER_MODULES = ("torch.distributed.run", "torch.distributed.launch")
LAUNCHER_SWITCHES = ("--standalone", "--no_python", "--no-python", "--run_path", "--run-path", "--module", "-m")
SHELLS = ("bash", "sh", "dash", "zsh")
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# The entry's flags (upstream's argparse names) as LaunchConfig's fields, with how each value reads.
INT_FLAGS = {f: f for f in ("infer_frames", "num_clip", "sample_steps", "num_gpus_dit", "ulysses_size")}
TEXT_FLAGS = {"size": "size", "ckpt_dir": "ckpt_dir", "sample_solver": "sample_solver", "lora_path_dmd": "lora_path"}
SWITCHES = ("fp8", "t5_cpu", "t5_fsdp", "dit_fsdp", "offload_kv_cache", "enable_online_decode")


def plan_for_command(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> PlanFile:
    """What the command launches, as a plan (the run folder's plan.json): its ranks, port, GPUs and, for
    Live Avatar's entry, its configuration. A script it names that cannot be read is an InputError."""
    words, assigned = _without_assignments(argv)
    if words and (PurePath(words[0]).name in SHELLS or words[0].endswith(".sh")):
        script = next((w for w in words if w.endswith(".sh")), None)
        if script is not None:
            words, more = _script_launch(cwd / script, words[words.index(script) + 1 :])
            assigned |= more
    launcher, entry, entry_args = _split_launch(words)
    nproc = _int(_option(launcher, "--nproc_per_node") or _option(launcher, "--nproc-per-node")) or 1
    port = _int(_option(launcher, "--master_port") or _option(launcher, "--master-port")) or 29500
    visible = assigned.get("CUDA_VISIBLE_DEVICES") or env.get("CUDA_VISIBLE_DEVICES")
    plan = PlanFile(
        mode="record",
        nproc=nproc,
        argv=tuple(entry_args),
        master_port=port if 0 < port < 65536 else 29500,
        env={"CUDA_VISIBLE_DEVICES": visible} if visible else {},
        entry=entry,
        checkout=str(cwd),
    )
    if entry is None or not (PurePath(entry).name in ENTRY_NAMES or entry in ENTRY_MODULES):
        return plan
    mode = "tpp" if nproc > 1 else "single"
    config = resolve_config(nproc, mode, gradio=PurePath(entry).name == PurePath(GRADIO_ENTRY).name or None)
    config = replace(config, **_config_flags(entry_args))
    return replace(plan, mode=mode, config=config.to_dict())


def attached_plan(job: Attached) -> PlanFile:
    """The plan a running job's command line describes (its first process: the launcher), read in that process's
    own folder, which its relative paths name, and with its own environment, which names its GPUs."""
    try:
        where, env = Path(job.roots[0].cwd()), job.roots[0].environ()
    except psutil.Error:  # another user's process: its command line is still readable
        where, env = Path.cwd(), dict(os.environ)
    return plan_for_command(attached_command(job), where, env)


def _without_assignments(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """`A=1 B=2 cmd ...` and `env A=1 cmd ...`: the command, and what it sets."""
    words, assigned = list(argv), {}
    while words and (words[0] == "env" or ASSIGNMENT.match(words[0])):
        word = words.pop(0)
        if word != "env":
            name, value = word.split("=", 1)
            assigned[name] = value
    return words, assigned


def _script_launch(script: Path, script_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The script's launch line (torchrun or the entry), its `"$@"` replaced by the script's arguments."""
    try:
        text = read_limited(script, SCRIPT_LIMIT).decode("utf-8", errors="replace")
    except FileTooLarge:
        raise InputError(f"{script}: larger than {SCRIPT_LIMIT // 2**20} MiB, not a launch script") from None
    except OSError as e:
        raise InputError(f"{script}: cannot read it ({e.strerror}); pass the launch script's path") from None
    exported: dict[str, str] = {}
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote: not a line this reads
            continue
        if words[:1] == ["export"]:
            exported |= dict(w.split("=", 1) for w in words[1:] if ASSIGNMENT.match(w))
            continue
        command, assigned = _without_assignments(words)
        if _split_launch(command)[1] is not None:
            expanded = [a for w in command for a in (script_args if w in ("$@", "${@}") else [w])]
            return expanded, exported | assigned
    return [], exported


def _launcher_args(words: Sequence[str]) -> list[str] | None:
    """What follows the launcher in `torchrun ...`, `python .../torchrun ...` (a running torchrun's command line:
    its script as the interpreter runs it) or `python -m torch.distributed.run ...`; None for anything else."""
    if words and PurePath(words[0]).name.startswith("python") and len(words) > 1:
        if words[1] == "-m":
            return list(words[3:]) if len(words) > 2 and words[2] in LAUNCHER_MODULES else None
        words = words[1:]
    return list(words[1:]) if words and PurePath(words[0]).name == "torchrun" else None


def _split_launch(words: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(launcher options, the entry script or module, its arguments) of `torchrun ...`,
    `python -m torch.distributed.run ...`, `python SCRIPT ...` or `python -m MODULE ...`."""
    rest = _launcher_args(words)
    if rest is None:
        if not words or not PurePath(words[0]).name.startswith("python"):
            return [], None, []
        if words[1:2] == ["-m"]:
            return [], (words[2] if len(words) > 2 else None), words[3:]
        return [], (words[1] if len(words) > 1 else None), words[2:]
    launcher = []
    while rest and rest[0].startswith("-"):
        word = rest.pop(0)
        launcher.append(word)
        if word in ("-m", "--module") and rest:
            return launcher, rest[0], rest[1:]
        if "=" not in word and word not in LAUNCHER_SWITCHES and rest:
            launcher.append(rest.pop(0))
    return launcher, (rest[0] if rest else None), rest[1:]


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _config_flags(args: list[str]) -> dict:
    """The entry's flags that say what runs, typed; a value the entry's argparse would refuse is left out
    (the launch itself will say so)."""
    found: dict = {f: f"--{f}" in args for f in SWITCHES}
    found["lora_path"] = None  # upstream merges a LoRA only with --load_lora
    for flag, field in {**INT_FLAGS, **TEXT_FLAGS, "offload_model": "offload_model"}.items():
        value = _option(args, f"--{flag}")
        if value is None:
            continue
        if field in INT_FLAGS.values():
            if (number := _int(value)) is not None:
                found[field] = number
        elif field == "offload_model":
            try:
                found[field] = str2bool(value)
            except ValueError:
                continue
        elif field == "size":
            if SIZE_PATTERN.fullmatch(value):
                found[field] = value
        elif field != "lora_path" or "--load_lora" in args:
            found[field] = value
    return found


# ---- --attach-gpus: the job on these GPUs, found through NVML -------------------------------------------------


@dataclass(frozen=True)
class GpuJob:
    """What runs on the named GPUs: the processes to watch (the torchrun launcher where it is visible, then the
    GPU processes themselves) and which GPU each compute process is on."""

    roots: tuple[int, ...]
    on_gpus: dict[int, tuple[int, ...]]  # NVML index -> the compute PIDs on it


def gpu_job(gpus: Sequence[int] | None) -> GpuJob:
    """The job whose compute processes use these GPUs (None: every GPU), or an InputError in one line: NVML
    unreadable, no such GPU, nothing on them, PIDs this PID namespace does not see, or two jobs."""
    from avatardoctor.machine.nvml import NvmlBackend  # only here: record of a command never loads NVML

    named = "all" if gpus is None else ",".join(map(str, gpus))
    machine = NvmlBackend().snapshot()
    if machine.nvml_error:
        raise InputError(f"--attach-gpus {named}: {machine.nvml_error}; use --attach PID")
    missing = sorted(set(gpus or ()) - {g.index for g in machine.gpus})
    if missing:
        raise InputError(
            f"--attach-gpus {named}: there is no GPU {missing[0]} (NVML sees {len(machine.gpus)}); "
            "pass indices as nvidia-smi shows them"
        )
    chosen = [g for g in machine.gpus if gpus is None or g.index in gpus]
    on_gpus = {g.index: tuple(p.pid for p in g.processes if p.kind == "compute") for g in chosen}
    if not any(on_gpus.values()):
        raise InputError(
            f"--attach-gpus {named}: no compute process on GPU {_gpu_list(on_gpus)}; "
            "start the job first, or name the GPUs it uses (nvidia-smi lists them)"
        )
    pids = sorted({pid for found in on_gpus.values() for pid in found})
    unseen = [pid for pid in pids if not _running(pid)]
    if unseen:
        raise InputError(
            f"--attach-gpus {named}: NVML lists PID {', '.join(map(str, unseen))}, which is not running in this PID "
            "namespace (inside a container NVML reports the host's PIDs); use --attach PID with the PID seen here"
        )
    launchers = {pid: _launcher(pid) for pid in pids}
    roots = sorted(set(launchers.values()))
    if len(roots) > 1 and set(roots) - set(pids):  # a torchrun and anything else: more than one job
        jobs_on = "; ".join(
            f"PID {r} on GPU {_gpu_list(i for i, found in on_gpus.items() if r in map(launchers.get, found))}"
            for r in roots
        )
        raise InputError(f"--attach-gpus {named}: the GPUs run {len(roots)} jobs ({jobs_on}); name one job's GPUs")
    # The launcher first (its command line is the plan's), then the GPU processes: all watched until each ends.
    return GpuJob(tuple(r for r in roots if r not in pids) + tuple(pids), on_gpus)


def _gpu_list(indices: Iterable[int]) -> str:
    return ",".join(str(i) for i in sorted(indices))


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _launcher(pid: int) -> int:
    """The torchrun process above this one, or the process itself where none is (or it cannot be seen)."""
    try:
        for parent in psutil.Process(pid).parents():
            if _launcher_args(parent.cmdline()) is not None:
                return parent.pid
    except psutil.Error:  # gone meanwhile, or another user's parent: watch the process itself
        pass
    return pid
