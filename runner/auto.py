"""`run --auto` and `demo`: check, plan, run, and after an out-of-memory step down and retry."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

from avatardoctor.files import FileTooLarge, read_limited
from avatardoctor.planner import describe, entry_argv, make_plan, plan_document
from avatardoctor.runner.run import RunOptions, RunResult, execute
from avatardoctor.upstream import GRADIO_ENV, GRADIO_LACKS, GRADIO_PORT, GRADIO_SERVER_PORT

PLAN_LIMIT = 16 * 2**20
ARG_LIMIT = 128 * 1024  # Linux refuses one argument or environment entry this long or longer (MAX_ARG_STRLEN)
LAUNCH_LIMIT = 2**20  # all of them together, well inside the kernel's ARG_MAX (a quarter of the stack limit)
MAX_NPROC = 64
MODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # names the run folder: never a path
FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # a flag named in an error message: printable, one line
SMOKE = {"num_clip": 1, "size": "384*256"}  # the seeds' "quick validation": one clip, the smallest size


def auto_run(ctx, options: RunOptions, max_retries: int, smoke: bool, log, gradio: bool = False) -> list[RunResult]:
    """Attempts, in order; each in its own folder. log(str) tells the user what happens."""
    results: list[RunResult] = []
    tried: set[str] = set()
    for attempt in range(max_retries + 1):
        plan = make_plan(ctx.config, ctx.visible.gpus, ctx.components, ctx.terms, frozenset(tried))
        if plan.chosen is None:
            log("nothing upstream accepts fits any more: " + plan.reasons[-1])
            break
        chosen = dataclasses.replace(plan.chosen, **SMOKE) if smoke else plan.chosen
        doc = plan_document(dataclasses.replace(plan, chosen=chosen), ctx)
        if gradio:
            doc = _serve(doc, log)
        if doc.get("inputs_note"):
            log(doc["inputs_note"])
        log(f"attempt {attempt + 1}: {describe(chosen)}")
        result = execute_with_port_retry(doc, options, log)
        results.append(result)
        log(f"attempt {attempt + 1}: {result.failure.cls}" + (f" ({result.failure.message})" if result.failure.cls != "success" else ""))
        if result.failure.cls != "oom":
            break
        tried.add(describe(plan.chosen))
        ctx = _learn_from_oom(ctx, doc, result, log)
    return results


def _learn_from_oom(ctx, doc: dict, result: RunResult, log):
    """Feed the measured peak back: what the GPU held plus what it tried to allocate, against what
    was predicted, raises the per-process estimate by the shortfall for the next plan."""
    f = result.failure
    predicted = {str(g["index"]): g for g in ((doc.get("prediction") or {}).get("gpus") or [])}
    held = result.peaks_mib.get(str(f.gpu)) if f.gpu is not None else None
    pred = (predicted.get(str(f.gpu)) or {}).get("peak_gib")
    if held is None or pred is None:
        return ctx
    needed_gib = (held + (f.tried_to_allocate_mib or 0)) / 1024
    shortfall = needed_gib - pred
    if shortfall <= 0:
        return ctx
    log(f"GPU {f.gpu} needed at least {needed_gib:.2f} GiB (held + the failed allocation), {pred:.2f} GiB predicted: "
        f"the next plan adds {shortfall:.2f} GiB per process")  # fmt: skip
    terms = dataclasses.replace(ctx.terms, context_bytes=ctx.terms.context_bytes + shortfall * 2**30,
                                source=f"{ctx.terms.source}, + {shortfall:.2f} GiB measured in an out-of-memory")  # fmt: skip
    return dataclasses.replace(ctx, terms=terms)


def _serve(doc: dict, log) -> dict:
    doc, note = gradio_plan(doc)
    if note:
        log(note)
    log(f"serving the Gradio app on port {doc['server_port']} until stopped (Ctrl-C)")
    return doc


def read_plan(path: Path) -> dict:
    """A saved plan, validated before anything is created (a bad one is one line naming the file and field)."""
    from avatardoctor.errors import InputError

    try:
        doc = json.loads(read_limited(path, PLAN_LIMIT).decode("utf-8"))
    except OSError as e:
        raise InputError(f"--plan {path}: cannot read ({e.strerror})") from None
    except FileTooLarge:
        raise InputError(f"--plan {path}: over 16 MiB, not a plan (write one with `avatardoctor plan -o FILE`)") from None
    except (ValueError, RecursionError) as e:
        raise InputError(f"--plan {path}: not valid JSON ({str(e)[:80]})") from None
    if not isinstance(doc, dict) or doc.get("schema") != "avatardoctor.plan/1" or not isinstance(doc.get("argv"), list):
        raise InputError(f"--plan {path}: not a plan with arguments (write one with `avatardoctor plan -o FILE`)")
    problem = plan_problem(doc)
    if problem:
        raise InputError(f"--plan {path}: {problem} (write a plan with `avatardoctor plan -o FILE`)")
    return doc


def launch_saved_plan(path: Path, options: RunOptions, overrides: dict, smoke: bool, force: bool, gradio: bool,
                      log=print, liveavatar: Path | None = None) -> RunResult:  # fmt: skip
    """`run --plan`: on the machine it was made for (or --force), in the checkout it names, with the user's
    flags over it and the prediction recomputed, or its smoke run; what is launched is what the run
    folder's plan.json says."""
    from avatardoctor.errors import InputError
    from avatardoctor.machine import backend_for

    doc = read_plan(path)
    if problem := machine_mismatch(doc, backend_for(None).snapshot()):
        if not force:
            raise InputError(f"--plan {path}: {problem}; plan again here (`avatardoctor plan -o FILE`), or pass --force")
        log(f"launching anyway (--force): {problem}")
    if liveavatar is None and isinstance(doc.get("checkout"), str):  # no --liveavatar: the plan's checkout
        options.cwd = Path(doc["checkout"])
    if overrides or smoke:
        doc = _replanned(doc, path, overrides, smoke, force, log)
    if doc.get("inputs_note"):
        log(doc["inputs_note"])
    return execute_with_port_retry(_serve(doc, log) if gradio else doc, options, log)


def _port_lost(result: RunResult) -> bool:
    f = result.failure
    return f.cls == "nccl" and "address already in use" in f.message.lower()


def execute_with_port_retry(doc: dict, options: RunOptions, log=print) -> RunResult:
    """Launch; when the master port was taken between the runner's check and torchrun's bind, once more on
    a port free now (a new run folder); after that, name who holds it."""
    from avatardoctor.checks.ports import port_holders

    result = execute(doc, options)
    if not _port_lost(result):
        return result
    used = json.loads(result.folder.plan_json.read_text()).get("master_port", doc.get("master_port"))
    log(f"master port {used} was taken as the job started: once more on a free port")
    result = execute({**doc, "master_port": used}, options)  # execute moves a held port to the next free one
    if _port_lost(result):
        holders = ", ".join(f"PID {pid} ({name})" for pid, name in port_holders(used) if pid) or "another process"
        result = dataclasses.replace(
            result, failure=dataclasses.replace(result.failure, remedy=f"{result.failure.remedy}; port {used} is held by {holders}")
        )
    return result


def _replanned(doc: dict, path: Path, overrides: dict, smoke: bool, force: bool, log) -> dict:
    """The plan with the user's flags (and the smoke run's) over it, predicted again on this machine."""
    from avatardoctor.doctor import build_context
    from avatardoctor.errors import InputError
    from avatardoctor.planner import Plan
    from avatardoctor.predict import VERDICT_WORDS

    flags = plan_config(doc, path)
    gpus = overrides.pop("gpus", None) or (doc.get("env") or {}).get("CUDA_VISIBLE_DEVICES")
    changed = {**overrides, **(SMOKE if smoke else {})}
    flags.update(changed)
    ctx = build_context(None, False, mode=flags.pop("mode"), gpus=gpus, **flags)
    prediction = ctx.prediction
    said = ", ".join(f"{k}={v}" for k, v in changed.items())
    log(f"the plan with {said}{' (the smoke run: one clip at the smallest size)' if smoke else ''}: "
        f"{VERDICT_WORDS[prediction.verdict]}: {prediction.explanation()}")  # fmt: skip
    if prediction.verdict in ("wont-fit", "wont-run") and not force:
        raise InputError(f"--plan {path} with {said}: {VERDICT_WORDS[prediction.verdict]}; pass --force to launch anyway")
    reasons = (*(doc.get("reasons") or []), f"run --plan {path} with {said}")
    replanned = plan_document(Plan(ctx.config, prediction, tuple(reasons)), ctx)
    return {**replanned, "env": {**(doc.get("env") or {}), **replanned["env"]}}  # the plan's own variables stay


def machine_mismatch(doc: dict, here) -> str | None:
    """Why this machine is not the one the plan was made for, or None (a plan without an identity: older
    or hand-written, is taken as made here)."""
    planned = doc.get("machine")
    if not isinstance(planned, dict):
        return None
    source = planned.get("source")
    if source != "nvml":
        return f"it was planned for {source}, not for this machine"
    if planned.get("hostname") and here.hostname and planned["hostname"] != here.hostname:
        return f"it was planned on {planned['hostname']}, this is {here.hostname}"
    uuids = {g.uuid for g in here.gpus}
    gone = [g for g in planned.get("gpus") or [] if isinstance(g, dict) and g.get("uuid") not in uuids]
    if gone:
        return f"GPU {gone[0].get('index')} ({gone[0].get('name')}, {gone[0].get('uuid')}) it was planned for is not on this machine"
    return None


# The plan's configuration fields a run may rebuild it from, with the type each must have.
_INT_FIELDS = ("infer_frames", "sample_steps", "num_gpus_dit", "ulysses_size", "num_clip", "master_port")
_BOOL_FIELDS = ("fp8", "offload_model", "t5_cpu", "t5_fsdp", "offload_kv_cache", "enable_online_decode", "compile")
_STR_FIELDS = ("size", "ckpt_dir", "sample_solver", "lora_path", "prompt", "liveavatar", "image", "audio")
SIZE = re.compile(r"\d{1,5}\*\d{1,5}")


def plan_config(doc: dict, path: Path) -> dict:
    """The configuration a saved plan launches, as flags, each field checked: what `run --plan` overrides."""
    from avatardoctor.config import MODES
    from avatardoctor.errors import InputError

    config = doc.get("config")
    if not isinstance(config, dict) or config.get("mode") not in MODES:
        raise InputError(f"--plan {path}: no configuration to change (plan again with `avatardoctor plan -o FILE`)")
    flags: dict = {"mode": config["mode"]}
    for name in _INT_FIELDS + _BOOL_FIELDS + _STR_FIELDS + ("audio_seconds",):
        value = config.get(name)
        if value is None:
            continue
        good = (
            _is_int(value, 1, 65535 if name == "master_port" else 10**9) if name in _INT_FIELDS
            else isinstance(value, bool) if name in _BOOL_FIELDS
            else _is_number(value) and 0 <= value <= 7 * 24 * 3600 if name == "audio_seconds"
            else isinstance(value, str) and not _launch_string_problem(name, value) and (name != "size" or SIZE.fullmatch(value))
        )  # fmt: skip
        if not good:
            raise InputError(f"--plan {path}: config.{name} is not a valid value (plan again with `avatardoctor plan -o FILE`)")
        flags[name] = Path(value) if name in ("liveavatar", "image", "audio") else value
    return flags


def _is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value) -> bool:
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
        if not isinstance(gpu, dict) or not _is_int(gpu.get("index"), 0, 1023):
            return f"prediction.gpus[{i}] must be an object with an integer index"
        if any(gpu.get(key) is not None and not _is_number(gpu[key]) for key in ("peak_gib", "usable_gib")):
            return f"prediction.gpus[{i}]: peak_gib and usable_gib must be numbers"
    return None


def demo_plan(ckpt: Path, nproc: int = 5) -> dict:
    """The demo's plan: upstream's TPP layout at the smallest size, on CPU ranks with gloo."""
    from avatardoctor.config import resolve_config

    config = resolve_config(nproc, "tpp", ckpt_dir=str(ckpt), size="384*256", num_clip=2, fp8=False, lora_path="",
                            prompt="A friendly presenter says hello, soft studio lighting, realistic photo")  # fmt: skip
    config = dataclasses.replace(config, save_file="demo_output.npz")
    return {
        "schema": "avatardoctor.plan/1", "mode": "demo", "entry": "avatardoctor.runner.demo_entry", "nproc": config.nproc,
        "master_port": 29500, "env": {"GLOO_SOCKET_IFNAME": "lo", "ENABLE_COMPILE": "false"},
        "argv": entry_argv(config), "prediction": None, "reasons": ["the built-in demo: TPP at 384*256 on CPU ranks"],
        "config": {"mode": "tpp", "nproc": config.nproc, "size": config.size, "num_clip": config.num_clip, "infer_frames": config.infer_frames},
    }  # fmt: skip


PER_REQUEST = ("--prompt", "--image", "--audio", "--save_file", "--num_clip")  # the web page supplies these
GRADIO_NUM_CLIP = "100"  # the gradio scripts' --num_clip


def _free(port: int, what: str) -> tuple[int, str | None]:
    """The port when it is free, else the next free one and a note naming who holds it."""
    from avatardoctor.checks.ports import bind_error, free_port_near, port_holders

    if bind_error(port) is None:
        return port, None
    holders = ", ".join(f"PID {pid} ({name})" for pid, name in port_holders(port) if pid) or "another process"
    free = free_port_near(port)
    return free, f"{what} {port} is held by {holders}: using {free}"


def gradio_plan(doc: dict, port: int = GRADIO_SERVER_PORT) -> tuple[dict, str | None]:
    """The plan for the Gradio entry as upstream's gradio scripts launch it: their master port (unless the
    user chose one), their NCCL settings, no flag gradio_app.py refuses; and a free server port."""
    port, note = _free(port, "server port")
    notes = [note] if note else []
    master = doc.get("master_port")
    explicit = "master_port" in ((doc.get("config") or {}).get("explicit") or [])
    if doc.get("mode") in GRADIO_PORT and not explicit:
        master, moved = _free(GRADIO_PORT[doc["mode"]], "master port")
        notes += [moved] if moved else []
    argv, i = [], 0
    while i < len(doc["argv"]):
        if doc["argv"][i] in PER_REQUEST:
            i += 2
            continue
        if doc["argv"][i] not in GRADIO_LACKS:
            argv.append(doc["argv"][i])
        i += 1
    argv += ["--num_clip", GRADIO_NUM_CLIP, "--server_port", str(port), "--server_name", "0.0.0.0"]
    env = {**(doc.get("env") or {}), **GRADIO_ENV}  # a validated plan may say env: null
    served = {**doc, "argv": argv, "env": env, "server_port": port, "master_port": master}
    return served, "; ".join(notes) or None
