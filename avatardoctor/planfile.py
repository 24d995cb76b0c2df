"""The plan file, `avatardoctor.plan/1`: one typed value, one reader that validates, one writer.

The planner writes it (`plan -o`, `run --auto`), the runner launches it and copies it into the run folder
as launched, `run --plan` reads it back. A plan is untrusted input once it is a file: every field is
checked before anything is created, and a bad one is one line naming the file and the field. Fields are
only ever added to /1, so an older plan (or one written by hand) without the newer ones still runs.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from avatardoctor import __version__
from avatardoctor.errors import InputError
from avatardoctor.files import UnreadableJson, read_json
from avatardoctor.upstream import SIZE_PATTERN

PLAN_SCHEMA = "avatardoctor.plan/1"
PLAN_LIMIT = 16 * 2**20
ARG_LIMIT = 128 * 1024  # Linux refuses one argument or environment entry this long or longer (MAX_ARG_STRLEN)
LAUNCH_LIMIT = 2**20  # all of them together, well inside the kernel's ARG_MAX (a quarter of the stack limit)
MAX_NPROC = 64
MODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # names the run folder: never a path
FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # a flag named in an error message: printable, one line
# The configuration fields a run may rebuild the plan from, with the type each must have.
INT_FIELDS = ("infer_frames", "sample_steps", "num_gpus_dit", "ulysses_size", "num_clip", "master_port")
BOOL_FIELDS = ("fp8", "offload_model", "t5_cpu", "t5_fsdp", "offload_kv_cache", "enable_online_decode", "compile")
STR_FIELDS = ("size", "ckpt_dir", "sample_solver", "lora_path", "prompt", "liveavatar", "image", "audio")


@dataclass(frozen=True)
class PlannedGpu:
    index: int
    name: str
    uuid: str | None = None


@dataclass(frozen=True)
class PlannedMachine:
    """What the plan was made for: `run --plan` refuses another box."""

    source: str  # "nvml", "recorded:<file>" or "catalogue:<spec>"
    hostname: str | None = None
    gpus: tuple[PlannedGpu, ...] = ()


@dataclass(frozen=True)
class PlanFile:
    mode: str
    nproc: int
    argv: tuple[str, ...]
    master_port: int = 29500
    env: dict[str, str] = field(default_factory=dict)
    entry: str | None = None  # relative to the Live Avatar checkout
    reasons: tuple[str, ...] = ()
    prediction: dict | None = None  # avatardoctor.predict's to_dict(), as planned
    config: dict | None = None  # the chosen LaunchConfig, field by field (config.to_dict())
    checkout: str | None = None  # the absolute Live Avatar checkout: where `run --plan` starts
    interpreter: str | None = None
    machine: PlannedMachine | None = None
    inputs_note: str | None = None  # what upstream uses for inputs the plan does not name
    server_port: int | None = None  # the gradio app's, when served
    input_checks: tuple[dict, ...] = ()  # `plan`'s input checks, as check --json writes them

    @property
    def num_clip(self) -> int | None:
        value = (self.config or {}).get("num_clip")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def visible_gpus(self) -> list[int] | None:
        """CUDA_VISIBLE_DEVICES as NVML indices: rank i drives the i-th."""
        visible = self.env.get("CUDA_VISIBLE_DEVICES")
        return [int(x) for x in visible.split(",") if x.strip().isdigit()] if visible else None

    def with_(self, **changes) -> PlanFile:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        doc = {"schema": PLAN_SCHEMA, "avatardoctor_version": __version__, **asdict(self)}
        doc["argv"], doc["reasons"], doc["input_checks"] = list(self.argv), list(self.reasons), list(self.input_checks)
        return doc

    @classmethod
    def from_dict(cls, doc, where: str) -> PlanFile:
        """Validated field by field: InputError "<where>: <field> ..." for the first bad one."""
        if not isinstance(doc, dict) or doc.get("schema") != PLAN_SCHEMA or not isinstance(doc.get("argv"), list):
            raise InputError(f"{where}: not a plan with arguments (write one with `avatardoctor plan -o FILE`)")
        if problem := plan_problem(doc):
            raise InputError(f"{where}: {problem} (write a plan with `avatardoctor plan -o FILE`)")
        optional_str = {
            k: doc.get(k) if isinstance(doc.get(k), str) else None
            for k in ("entry", "checkout", "interpreter", "inputs_note")
        }
        return cls(
            mode=doc.get("mode", "run"),
            nproc=doc["nproc"],
            argv=tuple(doc["argv"]),
            master_port=doc.get("master_port", 29500),
            env=dict(doc.get("env") or {}),
            reasons=tuple(r for r in doc.get("reasons") or [] if isinstance(r, str))
            if isinstance(doc.get("reasons"), list)
            else (),
            prediction=doc.get("prediction") if isinstance(doc.get("prediction"), dict) else None,
            config=doc.get("config") if isinstance(doc.get("config"), dict) else None,
            machine=_machine(doc.get("machine")),
            server_port=doc["server_port"] if _is_int(doc.get("server_port"), 0, 65535) else None,
            input_checks=tuple(c for c in doc.get("input_checks") or [] if isinstance(c, dict))
            if isinstance(doc.get("input_checks"), list)
            else (),
            **optional_str,
        )

    def config_flags(self, where: str) -> dict:
        """The launched configuration as flags, each field checked: what `run --plan` overrides."""
        from avatardoctor.config import MODES

        config = self.config
        if not isinstance(config, dict) or config.get("mode") not in MODES:
            raise InputError(f"{where}: no configuration to change (plan again with `avatardoctor plan -o FILE`)")
        flags: dict = {"mode": config["mode"]}
        for name in INT_FIELDS + BOOL_FIELDS + STR_FIELDS + ("audio_seconds",):
            value = config.get(name)
            if value is None:
                continue
            good = (
                _is_int(value, 1, 65535 if name == "master_port" else 10**9)
                if name in INT_FIELDS
                else isinstance(value, bool)
                if name in BOOL_FIELDS
                else is_number(value) and 0 <= value <= 7 * 24 * 3600
                if name == "audio_seconds"
                else isinstance(value, str)
                and not _launch_string_problem(name, value)
                and (name != "size" or SIZE_PATTERN.fullmatch(value))
            )
            if not good:
                raise InputError(
                    f"{where}: config.{name} is not a valid value (plan again with `avatardoctor plan -o FILE`)"
                )
            flags[name] = Path(value) if name in ("liveavatar", "image", "audio") else value
        return flags


def read_plan_file(path: Path) -> PlanFile:
    """A saved plan, validated before anything is created."""
    where = f"--plan {path}"
    try:
        doc = read_json(path, PLAN_LIMIT, "a plan (write one with `avatardoctor plan -o FILE`)")
    except UnreadableJson as err:
        raise InputError(f"{where}: {err}") from None
    return PlanFile.from_dict(doc, where)


def plan_json(plan: PlanFile) -> str:
    return json.dumps(plan.to_dict(), indent=2) + "\n"


def plan_problem(doc: dict) -> str | None:
    """The first field of a saved plan that would fail the launch or the run folder, or None: checked
    before anything is created, so that a bad plan leaves nothing behind."""
    if not _is_int(doc.get("nproc"), 1, MAX_NPROC):
        return f"nproc must be an integer from 1 to {MAX_NPROC}"
    if not _is_int(doc.get("master_port", 29500), 1, 65535):
        return "master_port must be an integer from 1 to 65535"
    if "mode" in doc and not (isinstance(doc["mode"], str) and MODE.fullmatch(doc["mode"])):
        return "mode must be a short name of letters, digits, - and _ (it names the run folder)"
    env = doc.get("env") or {}
    if not isinstance(doc.get("env", {}), (dict, type(None))):
        return "env must be an object of names to strings"
    for i, item in enumerate(doc["argv"]):
        if not isinstance(item, str):
            return f"argv[{i}] must be a string"
        flag = doc["argv"][i - 1] if i else None
        of_flag = f" (the value of {flag})" if isinstance(flag, str) and FLAG.fullmatch(flag) else ""
        if problem := _launch_string_problem(f"argv[{i}]{of_flag}", item):
            return problem
    for name, value in env.items():
        if not name or "=" in name or not isinstance(value, str):
            return f"env {name[:40]!r} must be a name without '=' with a string value"
        if problem := _launch_string_problem(f"env {name[:40]!r}", f"{name}={value}"):
            return problem
    if sum(len(os.fsencode(a)) + 1 for a in [*doc["argv"], *(f"{k}={v}" for k, v in env.items())]) > LAUNCH_LIMIT:
        return f"argv and env together are over {LAUNCH_LIMIT // 2**20} MiB"
    config = doc.get("config")
    num_clip = config.get("num_clip") if isinstance(config, dict) else None
    if config is not None and (not isinstance(config, dict) or not (num_clip is None or _is_int(num_clip, 0, 10**9))):
        return "config must be an object whose num_clip is an integer"
    prediction = doc.get("prediction")
    gpus = (prediction or {}).get("gpus") if isinstance(prediction, dict) else None
    if prediction is not None and (not isinstance(prediction, dict) or not isinstance(gpus, (list, type(None)))):
        return "prediction must be an object with a list of gpus"
    for i, gpu in enumerate(gpus or []):
        if not isinstance(gpu, dict) or not (_is_int(gpu.get("index"), 0, 1023) or _is_cpu_rank(gpu.get("index"))):
            return f"prediction.gpus[{i}] must be an object with an integer index (or cpu<rank>, the demo's)"
        if any(gpu.get(key) is not None and not is_number(gpu[key]) for key in ("peak_gib", "usable_gib")):
            return f"prediction.gpus[{i}]: peak_gib and usable_gib must be numbers"
    return None


CPU_RANK = re.compile(r"cpu[0-9]{1,2}")  # the demo's ranks on the CPU, as the sampler records them


def _is_cpu_rank(value) -> bool:
    return isinstance(value, str) and CPU_RANK.fullmatch(value) is not None


def _machine(value) -> PlannedMachine | None:
    if not isinstance(value, dict) or not isinstance(value.get("source"), str):
        return None
    gpus = (
        tuple(
            PlannedGpu(g["index"], g["name"], g.get("uuid") if isinstance(g.get("uuid"), str) else None)
            for g in value.get("gpus") or []
            if isinstance(g, dict) and _is_int(g.get("index"), 0, 1023) and isinstance(g.get("name"), str)
        )
        if isinstance(value.get("gpus"), list)
        else ()
    )
    hostname = value.get("hostname") if isinstance(value.get("hostname"), str) else None
    return PlannedMachine(value["source"], hostname, gpus)


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value) -> bool:
    """A finite int or float, not a bool: what a JSON number field may hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _launch_string_problem(field: str, text: str) -> str | None:
    """What the kernel (or the encoding to it) would refuse in one argument or environment entry."""
    if "\0" in text:
        return f"{field} contains a NUL character, which no argument or environment entry can carry"
    try:
        size = len(os.fsencode(text))
    except UnicodeError:
        return f"{field} contains characters that cannot be encoded for the command line"
    if size >= ARG_LIMIT:
        return f"{field} is {size} bytes; one argument must stay under {ARG_LIMIT // 1024} KiB"
    return None
