"""`avatardoctor record`: the plan a command line describes, so that any launch (upstream's own scripts, a
torchrun line typed by hand, a running job's command line) is recorded as `run` records its own.

Where the command is Live Avatar's entry (directly, under torchrun, or in one of upstream's
`infinite_inference_*.sh` scripts, whose torchrun line is read), the configuration is read from its flags;
anything else is recorded without one (mode `record`, one process: memory, log and outcome still are).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePath

from avatardoctor.config import resolve_config
from avatardoctor.errors import InputError
from avatardoctor.files import FileTooLarge, read_limited
from avatardoctor.planfile import PlanFile
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


def _split_launch(words: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(launcher options, the entry script or module, its arguments) of `torchrun ...`,
    `python -m torch.distributed.run ...`, `python SCRIPT ...` or `python -m MODULE ...`."""
    if not words:
        return [], None, []
    rest = words[1:]
    if PurePath(words[0]).name != "torchrun":
        if not PurePath(words[0]).name.startswith("python"):
            return [], None, []
        if rest[:1] == ["-m"] and len(rest) > 1:
            if rest[1] not in LAUNCHER_MODULES:
                return [], rest[1], rest[2:]
            rest = rest[2:]
        else:
            return [], (rest[0] if rest else None), rest[1:]
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
