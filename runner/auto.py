"""`run --auto` and `demo`: check, plan, run, and after an out-of-memory step down and retry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from avatardoctor.machine.ports import holders_text, port_holders, probe_port
from avatardoctor.planfile import PlanFile, read_plan_file
from avatardoctor.planner import describe, entry_argv, make_plan, plan_file
from avatardoctor.runner.run import RunOptions, RunResult, execute
from avatardoctor.upstream import GRADIO_ENV, GRADIO_LACKS, GRADIO_PORT, GRADIO_SERVER_PORT

SMOKE: dict[str, Any] = {"num_clip": 1, "size": "384*256"}  # the seeds' "quick validation": one clip, the smallest size


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
        doc = plan_file(dataclasses.replace(plan, chosen=chosen), ctx)
        if gradio:
            doc = _serve(doc, log)
        if doc.inputs_note:
            log(doc.inputs_note)
        log(f"attempt {attempt + 1}: {describe(chosen)}")
        result = execute_with_port_retry(doc, options, log)
        results.append(result)
        log(
            f"attempt {attempt + 1}: {result.failure.cls}"
            + (f" ({result.failure.message})" if result.failure.cls != "success" else "")
        )
        if result.failure.cls != "oom":
            break
        tried.add(describe(plan.chosen))
        ctx = _learn_from_oom(ctx, doc, result, log)
    return results


def _learn_from_oom(ctx, doc: PlanFile, result: RunResult, log):
    """Feed the measured peak back: what the GPU held plus what it tried to allocate, against what
    was predicted, raises the per-process estimate by the shortfall for the next plan."""
    f = result.failure
    predicted = {str(g["index"]): g for g in ((doc.prediction or {}).get("gpus") or [])}
    held = result.peaks_mib.get(str(f.gpu)) if f.gpu is not None else None
    pred = (predicted.get(str(f.gpu)) or {}).get("peak_gib")
    if held is None or pred is None:
        return ctx
    needed_gib = (held + (f.tried_to_allocate_mib or 0)) / 1024
    shortfall = needed_gib - pred
    if shortfall <= 0:
        return ctx
    log(
        f"GPU {f.gpu} needed at least {needed_gib:.2f} GiB (held + the failed allocation), {pred:.2f} GiB predicted: "
        f"the next plan adds {shortfall:.2f} GiB per process"
    )
    terms = dataclasses.replace(
        ctx.terms,
        context_bytes=ctx.terms.context_bytes + shortfall * 2**30,
        source=f"{ctx.terms.source}, + {shortfall:.2f} GiB measured in an out-of-memory",
    )
    return dataclasses.replace(ctx, terms=terms)


def _serve(doc: PlanFile, log) -> PlanFile:
    doc, note = gradio_plan(doc)
    if note:
        log(note)
    log(f"serving the Gradio app on port {doc.server_port} until stopped (Ctrl-C)")
    return doc


def launch_saved_plan(
    path: Path,
    options: RunOptions,
    overrides: dict,
    smoke: bool,
    force: bool,
    gradio: bool,
    log=print,
    liveavatar: Path | None = None,
) -> RunResult:
    """`run --plan`: on the machine it was made for (or --force), in the checkout it names, with the user's
    flags over it and the prediction recomputed, or its smoke run; what is launched is what the run
    folder's plan.json says."""
    from avatardoctor.errors import InputError
    from avatardoctor.machine import backend_for

    doc = read_plan_file(path)
    if problem := machine_mismatch(doc, backend_for(None).snapshot()):
        if not force:
            raise InputError(
                f"--plan {path}: {problem}; plan again here (`avatardoctor plan -o FILE`), or pass --force"
            )
        log(f"launching anyway (--force): {problem}")
    if liveavatar is None and doc.checkout:  # no --liveavatar: the plan's checkout
        options.cwd = Path(doc.checkout)
    if overrides or smoke:
        doc = _replanned(doc, path, overrides, smoke, force, log)
    if doc.inputs_note:
        log(doc.inputs_note)
    return execute_with_port_retry(_serve(doc, log) if gradio else doc, options, log)


def _port_lost(result: RunResult) -> bool:
    f = result.failure
    return f.cls == "nccl" and "address already in use" in f.message.lower()


def execute_with_port_retry(doc: PlanFile, options: RunOptions, log=print) -> RunResult:
    """Launch; when the master port was taken between the runner's check and torchrun's bind, once more on
    a port free now (a new run folder); after that, name who holds it."""
    result = execute(doc, options)
    if not _port_lost(result):
        return result
    used = json.loads(result.folder.plan_json.read_text()).get("master_port", doc.master_port)
    log(f"master port {used} was taken as the job started: once more on a free port")
    result = execute(doc.with_(master_port=used), options)  # execute moves a held port to the next free one
    if _port_lost(result):
        holders = holders_text(port_holders(used))
        result = dataclasses.replace(
            result,
            failure=dataclasses.replace(
                result.failure, remedy=f"{result.failure.remedy}; port {used} is held by {holders}"
            ),
        )
    return result


def _replanned(doc: PlanFile, path: Path, overrides: dict, smoke: bool, force: bool, log) -> PlanFile:
    """The plan with the user's flags (and the smoke run's) over it, predicted again on this machine."""
    from avatardoctor.doctor import build_context
    from avatardoctor.errors import InputError
    from avatardoctor.planner import Plan
    from avatardoctor.predict import VERDICT_WORDS

    flags = doc.config_flags(f"--plan {path}")
    gpus = overrides.pop("gpus", None) or doc.env.get("CUDA_VISIBLE_DEVICES")
    changed = {**overrides, **(SMOKE if smoke else {})}
    flags.update(changed)
    ctx = build_context(None, False, mode=flags.pop("mode"), gpus=gpus, **flags)
    prediction = ctx.prediction
    said = ", ".join(f"{k}={v}" for k, v in changed.items())
    log(
        f"the plan with {said}{' (the smoke run: one clip at the smallest size)' if smoke else ''}: "
        f"{VERDICT_WORDS[prediction.verdict]}: {prediction.explanation()}"
    )
    if prediction.verdict in ("wont-fit", "wont-run") and not force:
        raise InputError(
            f"--plan {path} with {said}: {VERDICT_WORDS[prediction.verdict]}; pass --force to launch anyway"
        )
    replanned = plan_file(Plan(ctx.config, prediction, (*doc.reasons, f"run --plan {path} with {said}")), ctx)
    return replanned.with_(env={**doc.env, **replanned.env})  # the plan's own variables stay


def machine_mismatch(doc: PlanFile, here) -> str | None:
    """Why this machine is not the one the plan was made for, or None (a plan without an identity: older
    or hand-written, is taken as made here)."""
    planned = doc.machine
    if planned is None:
        return None
    if planned.source != "nvml":
        return f"it was planned for {planned.source}, not for this machine"
    if planned.hostname and here.hostname and planned.hostname != here.hostname:
        return f"it was planned on {planned.hostname}, this is {here.hostname}"
    uuids = {g.uuid for g in here.gpus}
    gone = [g for g in planned.gpus if g.uuid not in uuids]
    if gone:
        return f"GPU {gone[0].index} ({gone[0].name}, {gone[0].uuid}) it was planned for is not on this machine"
    return None


def demo_plan(ckpt: Path, nproc: int = 5, master_port: int = 29500) -> PlanFile:
    """The demo's plan: upstream's TPP layout at the smallest size, on CPU ranks with gloo, each rank's peak
    predicted from the tiny checkpoint (avatardoctor.demo.memory)."""
    from avatardoctor.config import resolve_config
    from avatardoctor.demo.memory import demo_prediction

    config = resolve_config(
        nproc,
        "tpp",
        num_gpus_dit=nproc - 1,
        ckpt_dir=str(ckpt),
        size="384*256",
        num_clip=2,
        fp8=False,
        lora_path="",
        prompt="A friendly presenter says hello, soft studio lighting, realistic photo",
    )
    config = dataclasses.replace(config, save_file="demo_output.npz")
    return PlanFile(
        mode="demo",
        nproc=config.nproc,
        argv=tuple(entry_argv(config)),
        master_port=master_port,
        env={"GLOO_SOCKET_IFNAME": "lo", "ENABLE_COMPILE": "false"},
        entry="avatardoctor.demo.workload",
        reasons=("the built-in demo: TPP at 384*256 on CPU ranks",),
        prediction=demo_prediction(config, ckpt),
        config={
            "mode": "tpp",
            "nproc": config.nproc,
            "size": config.size,
            "num_clip": config.num_clip,
            "infer_frames": config.infer_frames,
        },
    )


PER_REQUEST = ("--prompt", "--image", "--audio", "--save_file", "--num_clip")  # the web page supplies these
GRADIO_NUM_CLIP = "100"  # the gradio scripts' --num_clip


def _free(port: int, what: str) -> tuple[int, str | None]:
    """The port when it is free, else the next free one (the port itself when none is) and a note naming who
    holds it."""
    probe = probe_port(port)
    if probe.free:
        return port, None
    held = f"{what} {port} is held by {holders_text(probe.holders)}"
    if probe.next_free is None:  # none free within SEARCH_SPAN above it: keep it (was "--server_port None")
        return port, f"{held}, and no port above it is free: keeping {port}, free it before launching"
    return probe.next_free, f"{held}: using {probe.next_free}"


def gradio_plan(doc: PlanFile, port: int = GRADIO_SERVER_PORT) -> tuple[PlanFile, str | None]:
    """The plan for the Gradio entry as upstream's gradio scripts launch it: their master port (unless the
    user chose one), their NCCL settings, no flag gradio_app.py refuses; and a free server port."""
    port, note = _free(port, "server port")
    notes = [note] if note else []
    master = doc.master_port
    explicit = "master_port" in ((doc.config or {}).get("explicit") or [])
    if doc.mode in GRADIO_PORT and not explicit:
        master, moved = _free(GRADIO_PORT[doc.mode], "master port")
        notes += [moved] if moved else []
    argv, i = [], 0
    while i < len(doc.argv):
        if doc.argv[i] in PER_REQUEST:
            i += 2
            continue
        if doc.argv[i] not in GRADIO_LACKS:
            argv.append(doc.argv[i])
        i += 1
    argv += ["--num_clip", GRADIO_NUM_CLIP, "--server_port", str(port), "--server_name", "0.0.0.0"]
    served = doc.with_(argv=tuple(argv), env={**doc.env, **GRADIO_ENV}, server_port=port, master_port=master)
    return served, "; ".join(notes) or None
