"""The command line. It parses flags, calls the doctor, and renders; it judges nothing itself.

Heavy modules are imported inside the commands so `--help` and `check` start fast.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from avatardoctor import __version__, exitcodes
from avatardoctor.config import MODES
from avatardoctor.errors import InputError
from avatardoctor.upstream import Size, str2bool


def _boolean(value: str) -> bool:
    """--offload-model as the entry parses it (upstream.str2bool), with click's one-line error."""
    try:
        return str2bool(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a boolean (True/False)") from None


class FiniteRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with it is false): a number, in range, or an error."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


def _size_value(ctx, param, value: str | None) -> Size | None:
    """WIDTH*HEIGHT in pixels, parsed here once; whether upstream accepts it is la.asserts' to say."""
    try:
        return None if value is None else Size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def machine_options(fn):
    """--machine / --demo: which machine's facts to use (default: this one, through NVML)."""

    @click.option(
        "--machine",
        metavar="FILE|SPEC",
        help="A recorded machine (from `avatardoctor machine record`) or a catalogue box such as 5x4090, 8xH100.",
    )
    @click.option("--demo", is_flag=True, help="The seed articles' box: 5x RTX 4090 on PCIe.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def config_options(fn):
    """The Live Avatar configuration, in upstream's terms; unset flags take the upstream scripts' values."""
    options = [
        click.option(
            "--mode",
            type=click.Choice(MODES),
            help="Upstream tpp (5 GPUs) or single (default by visible GPU count: 5+ -> tpp), or the seeds' fsdp / seed-4gpu.",
        ),
        click.option(
            "--liveavatar", type=click.Path(path_type=Path), help="The Live Avatar checkout the launch runs in."
        ),
        click.option(
            "--ckpt-dir",
            help="The Wan2.2-S2V-14B folder (--ckpt_dir); relative to the checkout, as the launch sees it.",
        ),
        click.option(
            "--master-port",
            type=int,
            help="torchrun --master_port (default: the upstream script's, 29102 tpp / 29101 single).",
        ),
        click.option("--size", callback=_size_value, help="--size as upstream spells it, WIDTH*HEIGHT, e.g. 704*384."),
        click.option(
            "--infer-frames", type=click.IntRange(min=1), help="Frames per clip (whole blocks of 12; scripts use 48)."
        ),
        click.option("--sample-steps", type=click.IntRange(min=1), help="Denoising steps (scripts use 4)."),
        click.option("--sample-solver", help="Sampler (upstream runs euler only)."),
        click.option("--num-gpus-dit", type=click.IntRange(min=1), help="GPUs running the DiT (tpp: 4)."),
        click.option("--ulysses-size", type=click.IntRange(min=1), help="Sequence parallel size (upstream: 1)."),
        click.option(
            "--compile/--no-compile",
            default=None,
            help="ENABLE_COMPILE for the launch (scripts: true; eager holds more activations).",
        ),
        click.option(
            "--fp8/--no-fp8", default=None, help="Convert the DiT's Linear layers to FP8 (scripts pass --fp8)."
        ),
        click.option(
            "--offload-model", type=_boolean, metavar="BOOL", help="Swap models between CPU and GPU (True/False)."
        ),
        click.option("--lora-path", help="--lora_path_dmd: a local file or a Hugging Face repo id."),
        click.option(
            "--image",
            type=click.Path(path_type=Path),
            help="The reference image: its aspect sets the real height and width.",
        ),
        click.option("--audio", type=click.Path(path_type=Path), help="The driving audio: its length caps the clips."),
        click.option(
            "--audio-seconds",
            type=FiniteRange(min=0, max=7 * 24 * 3600),
            help="What if the audio lasts this long (s): instead of --audio's length.",
        ),
        click.option("--prompt", help="The prompt."),
        click.option(
            "--num-clip", type=click.IntRange(min=1), help="Clips to generate (upstream caps it by the audio's length)."
        ),
        click.option("--t5-cpu", is_flag=True, default=None, help="Keep T5 on the CPU."),
        click.option("--t5-fsdp", is_flag=True, default=None, help="Shard T5 over the DiT GPUs."),
        click.option(
            "--offload-kv-cache", is_flag=True, default=None, help="Keep the single-GPU KV caches on the CPU."
        ),
        click.option(
            "--enable-online-decode", is_flag=True, default=None, help="Decode each clip as it is made (single GPU)."
        ),
        click.option(
            "--gpus", metavar="LIST", help="The GPUs to use, as CUDA_VISIBLE_DEVICES would name them (e.g. 0,2,3,4,5)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="avatardoctor")
def cli():
    """Will this machine run this Live Avatar configuration? Ask before the ten-minute load."""


@cli.command()
@machine_options
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON report (avatardoctor.check/1).")
@click.option("-v", "--verbose", is_flag=True, help="Show the details of passing checks too.")
@click.option(
    "--deep", is_flag=True, help="Also run the live communication test on this machine (nccl.live: torchrun ranks)."
)
def check(machine, demo, as_json, verbose, deep, **config_flags):
    """Check the machine, the environment and the configuration. Exit 0 ready, 1 not ready, 2 bad input."""
    from avatardoctor.doctor import build_context, diagnose, with_live_test
    from avatardoctor.render import render_human, report_json

    ctx = build_context(machine, demo, **config_flags)
    report = diagnose(with_live_test(replace(ctx, deep=True)) if deep else ctx)
    if as_json:
        click.echo(report_json(report))
    else:
        from rich.console import Console

        render_human(report, Console(highlight=False), verbose=verbose)
    sys.exit(exitcodes.READY if report.ready else exitcodes.NOT_READY)


@cli.command("predict")
@machine_options
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON (avatardoctor.predict/1).")
def predict_command(machine, demo, as_json, **config_flags):
    """Predict every GPU's peak memory, phase by phase. Exit 0 fits (or tight), 1 won't fit or won't run, 2 bad input."""
    from rich.console import Console

    from avatardoctor.advice import hardware_advice, smallest_change
    from avatardoctor.doctor import build_context
    from avatardoctor.render import prediction_json, render_prediction

    ctx = build_context(machine, demo, **config_flags)
    prediction = ctx.prediction
    change = (
        None if prediction.verdict == "fits" else smallest_change(ctx.config, ctx.rank_gpus, ctx.components, ctx.terms)
    )
    advice = hardware_advice(ctx.config, ctx.components, ctx.terms)
    if as_json:
        click.echo(prediction_json(prediction, change, advice))
    else:
        render_prediction(prediction, change, advice, Console(highlight=False), machine=ctx.machine)
    sys.exit(exitcodes.NOT_READY if prediction.verdict in ("wont-fit", "wont-run") else exitcodes.READY)


BAR_WIDTH = 12


def live_line(tracker, sampler, plan) -> str:
    """The live view: phase, clips done of total with an ETA, each GPU's memory against its limit."""
    usable = {str(g["index"]): g.get("usable_gib") for g in ((plan.prediction or {}).get("gpus") or [])}
    bars = []
    for gpu, s in sorted(sampler.last().items()):
        used = s["memory_used_mib"] / 1024
        limit = usable.get(gpu) or (s["memory_total_mib"] or 0) / 1024 or None
        filled = min(BAR_WIDTH, round(BAR_WIDTH * used / limit)) if limit else 0
        bars.append(
            f"{gpu}: {'█' * filled}{'░' * (BAR_WIDTH - filled)} {used:.1f}/{limit:.1f} GiB"
            if limit
            else f"{gpu}: {used:.1f} GiB"
        )
    clips = f"clips {tracker.clips_done}" + (f"/{tracker.clip_total}" if tracker.clip_total else "")
    first = next((start for name, start, _ in tracker.phases() if name.startswith("clip")), None)
    if first is not None and tracker.clips_done and tracker.clip_total and tracker.last_output_s:
        per_clip = (tracker.last_output_s - first) / tracker.clips_done
        clips += f", ETA {per_clip * max(tracker.clip_total - tracker.clips_done, 0):.0f} s"
    return f"{tracker.current_phase or 'starting'} · {clips} · " + "  ".join(bars)


def _run_options(out_dir, sample_hz, hang_timeout, cwd, entry, status, no_shim=False, memory_history=False):
    from avatardoctor.runner.run import RunOptions

    def progress(tracker, sampler, plan):
        status.update(live_line(tracker, sampler, plan))

    return RunOptions(
        out_dir=out_dir,
        sample_hz=sample_hz,
        hang_timeout_s=hang_timeout,
        cwd=cwd,
        entry=entry,
        on_progress=progress,
        shim=not no_shim,
        memory_history=memory_history,
    )


def _say_result(result) -> None:
    f = result.failure
    click.echo(f"run folder: {result.folder.root}")
    click.echo(f"outcome: {f.cls}" + (f": {f.message}" if f.cls != "success" else ""))
    if f.remedy:
        click.echo(f"remedy: {f.remedy}")
    if result.report:
        click.echo(f"report: {result.report}")


RUN_OPTIONS = [
    click.option("--no-shim", is_flag=True, help="Run the entry without the per-rank memory shim."),
    click.option(
        "--memory-history",
        is_flag=True,
        help="Also save a PyTorch memory snapshot per rank (CUDA; opens in pytorch.org/memory_viz).",
    ),
    click.option(
        "--out-dir",
        type=click.Path(path_type=Path),
        default=Path("runs"),
        show_default=True,
        help="Where run folders go.",
    ),
    click.option(
        "--sample-hz",
        type=FiniteRange(0.1, 100),
        default=10.0,
        show_default=True,
        help="GPU memory samples per second.",
    ),
    click.option(
        "--hang-timeout",
        type=FiniteRange(min=1),
        default=300.0,
        show_default=True,
        help="Seconds without output, CPU work or GPU use that make a hang.",
    ),
]


def run_options(fn):
    for option in reversed(RUN_OPTIONS):
        fn = option(fn)
    return fn


@cli.command("run")
@machine_options
@config_options
@run_options
@click.option("--auto", is_flag=True, help="Check, plan and run; after an out-of-memory, step down and retry.")
@click.option(
    "--plan", "plan_file", type=click.Path(path_type=Path), help="Run a saved plan (avatardoctor plan -o FILE)."
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="With --auto: attempts after an out-of-memory.",
)
@click.option("--force", is_flag=True, help="Launch although checks fail (recorded loudly in the run folder).")
@click.option("--smoke", is_flag=True, help="The smallest run the plan allows: one clip at 384*256.")
@click.option(
    "--gradio",
    is_flag=True,
    help="Serve the Gradio entry with the plan (port 7860, or a free one) and record until stopped.",
)
def run_command(
    machine,
    demo,
    no_shim,
    memory_history,
    out_dir,
    sample_hz,
    hang_timeout,
    auto,
    plan_file,
    max_retries,
    force,
    smoke,
    gradio,
    **config_flags,
):
    """Launch Live Avatar with torchrun, record memory, explain what happened. Exit 0 success, 1 failure, 130 interrupted."""
    from rich.console import Console

    from avatardoctor.runner.auto import auto_run, launch_saved_plan
    from avatardoctor.upstream import ENTRY_SCRIPT, GRADIO_ENTRY

    if bool(auto) == bool(plan_file):
        raise InputError("run: pass --auto (check, plan and run) or --plan PLAN.json")
    if machine or demo:
        raise click.UsageError(
            "run launches on this machine: --machine and --demo are for what-ifs (check, predict, plan)"
        )
    console = Console(stderr=True, highlight=False)
    cwd = config_flags.get("liveavatar") or Path.cwd()
    with console.status("starting") as status:
        entry = [GRADIO_ENTRY] if gradio else [ENTRY_SCRIPT]
        options = _run_options(out_dir, sample_hz, hang_timeout, cwd, entry, status, no_shim, memory_history)
        if gradio:
            options.hang_timeout_s = float("inf")  # a server idles silently between requests
        if plan_file:
            # --liveavatar says where to launch (options.cwd); every other flag changes what is launched
            overrides = {k: v for k, v in config_flags.items() if v is not None and k != "liveavatar"}
            results = [
                launch_saved_plan(
                    plan_file, options, overrides, smoke, force, gradio, console.print, config_flags.get("liveavatar")
                )
            ]
        else:
            from avatardoctor.checks.base import Status
            from avatardoctor.doctor import build_context, diagnose

            ctx = build_context(machine, demo, gradio=gradio or None, **config_flags)  # the gradio entry's own rules
            failing = [r.id for r in diagnose(ctx).results if r.status is Status.FAIL]
            if failing and not force:
                raise click.ClickException(
                    f"not ready: {', '.join(failing)} failed (see `avatardoctor check`; --force launches anyway)"
                )
            options.not_ready = failing
            results = auto_run(
                ctx, options, 0 if gradio else max_retries, smoke, lambda line: console.print(line), gradio
            )
    for result in results:
        _say_result(result)
    last = results[-1].failure.cls if results else "nothing-to-run"
    sys.exit(0 if last == "success" else 130 if last == "interrupted" else 1)


@cli.command("demo")
@run_options
@click.option(
    "--nproc",
    type=click.IntRange(2, 8),
    default=5,
    show_default=True,
    help="Ranks: 4 DiT ranks and the VAE rank, as upstream TPP.",
)
@click.option(
    "--master-port",
    type=click.IntRange(1, 65535),
    help="torchrun --master_port (default: the upstream script's 29102, or the next free one).",
)
def demo_command(no_shim, memory_history, out_dir, sample_hz, hang_timeout, nproc, master_port):
    """The whole flow on any machine with torch: a tiny real checkpoint, plan, a small real TPP-like run, report."""
    import importlib.util

    from rich.console import Console

    from avatardoctor.ckpt.demo import cache_dir
    from avatardoctor.ckpt.skeleton import write_skeleton
    from avatardoctor.runner.auto import demo_plan, execute_with_port_retry

    if importlib.util.find_spec("torch") is None:
        raise InputError("demo: torch is not installed; install the [torch] extra: pip install 'avatardoctor[torch]'")
    console = Console(stderr=True, highlight=False)
    ckpt = cache_dir(os.environ) / "demo-tiny-v1"
    if not ckpt.is_dir():
        write_skeleton(ckpt, tiny=True)
    console.print(f"checkpoint: a tiny real one at {ckpt} (`avatardoctor ckpt verify` reads it as any other)")
    from avatardoctor.checks import host, nccl, ports, run_checks
    from avatardoctor.doctor import build_context
    from avatardoctor.render import MARKS

    ctx = build_context(mode="tpp", num_gpus_dit=nproc - 1, master_port=master_port)
    for r in run_checks(ctx, (ports.check_master_port, nccl.check_nccl_env, host.check_shm)).results:
        mark, style = MARKS[r.status]
        console.print(f"check: [{style}]{mark}[/] {r.id} {r.summary}", highlight=False)
    try:  # the demo's ranks write their outputs in --out-dir: it is their working folder
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out-dir {out_dir}: cannot create it ({e.strerror}); choose another folder") from None
    plan = demo_plan(ckpt, nproc, ctx.config.master_port)
    console.print("plan: " + plan.reasons[0])
    with console.status("starting") as status:
        options = _run_options(
            out_dir,
            sample_hz,
            hang_timeout,
            out_dir,
            ["-m", "avatardoctor.runner.demo_entry"],
            status,
            no_shim,
            memory_history,
        )
        result = execute_with_port_retry(plan, options, console.print)
    _say_result(result)
    sys.exit(0 if result.failure.cls == "success" else 1)


@cli.command("nccl")
@click.option(
    "--nproc", type=click.IntRange(min=1), help="Ranks on this node (default: this machine's GPUs, or 4 on CPU)."
)
@click.option(
    "--backend", type=click.Choice(["nccl", "gloo"]), help="nccl on GPUs (default when there are GPUs), gloo on CPU."
)
@click.option("--nnodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--node-rank", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True)
@click.option(
    "--timeout", "timeout_s", type=float, default=60.0, show_default=True, help="Seconds a rank may take to join."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as avatardoctor.check/1 JSON.")
def nccl_command(nproc, backend, nnodes, node_rank, master_addr, master_port, timeout_s, as_json):
    """Prove the ranks can talk as Live Avatar's TPP pipeline does, and measure it (nccl-tests style)."""
    import importlib.util
    import json

    from rich.console import Console

    from avatardoctor.checks import live, run_checks
    from avatardoctor.doctor import build_context
    from avatardoctor.nccltest.launch import NcclTest, run_test
    from avatardoctor.render import render_human

    if importlib.util.find_spec("torch") is None:
        raise InputError(
            "nccl: torch is not installed here; install the [torch] extra (pip install 'avatardoctor[torch]')"
        )
    ctx = build_context()
    backend = backend or ("nccl" if ctx.visible.gpus else "gloo")
    nproc = nproc or (len(ctx.visible.gpus) if backend == "nccl" else 4)
    test = NcclTest(backend, nproc, nnodes, node_rank, master_addr, master_port, timeout_s)
    from dataclasses import replace

    ctx = replace(ctx, nccl=run_test(test), nccl_backend=backend)
    report = run_checks(ctx, live.CHECKS)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "schema": "avatardoctor.check/1",
                    "verdict": report.verdict,
                    "checks": [r.to_dict() for r in report.results],
                },
                indent=2,
            )
        )
    else:
        title = f"live test: {nnodes * nproc} ranks ({backend}), node {node_rank} of {nnodes}, master {master_addr}:{master_port}"
        render_human(report, Console(highlight=False), verbose=True, title=title)
    sys.exit(exitcodes.READY if report.ready else exitcodes.NOT_READY)


@cli.command("plan")
@machine_options
@config_options
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Write the plan (avatardoctor.plan/1 JSON) to FILE."
)
@click.option("--force", is_flag=True, help="Let -o replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan JSON instead of the explanation.")
def plan_command(machine, demo, output, force, as_json, **config_flags):
    """Choose the best configuration upstream accepts that fits every GPU. Exit 0 planned, 1 nothing fits."""
    import json

    from rich.console import Console

    from avatardoctor.doctor import build_context
    from avatardoctor.files import write_new_file
    from avatardoctor.planner import make_plan, plan_document
    from avatardoctor.render import render_plan

    if output and output.exists() and not force:
        raise InputError(f"-o {output}: the file exists; pass --force to overwrite it or choose another name")
    ctx = build_context(machine, demo, **config_flags)
    plan = make_plan(ctx.config, ctx.visible.gpus, ctx.components, ctx.terms)
    doc = plan_document(plan, ctx)
    from avatardoctor.checks import audio, inputs, run_checks

    checked = run_checks(ctx, inputs.CHECKS + audio.CHECKS).results
    doc["input_checks"] = [r.to_dict() for r in checked if r.status.value != "skip"]
    if output and plan.chosen:
        write_new_file(output, json.dumps(doc, indent=2) + "\n", "-o", force)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        render_plan(doc, Console(highlight=False), output if plan.chosen else None)
    sys.exit(exitcodes.READY if plan.chosen else exitcodes.NOT_READY)


@cli.command()
@click.argument("path", type=click.Path(path_type=Path), required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="The report folder (default: RUN/report, or LOG-report beside a CSV).",
)
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(path_type=Path),
    metavar="RUN_A RUN_B",
    help="Peaks side by side and timelines overlaid.",
)
@click.option("--fields", help="For a headerless nvidia-smi CSV: its --query-gpu list, e.g. timestamp,memory.used.")
@click.option("--force", is_flag=True, help="Write into an output folder that holds other files.")
def report(path, output, compare, fields, force):
    """Render a report from a run folder or a plain nvidia-smi CSV log (HTML, Markdown, JSON, PNG)."""
    from avatardoctor.reports.render import render_compare, render_report

    field_list = [f.strip() for f in fields.split(",")] if fields else None
    if compare:
        if path:
            raise InputError("report: give PATH or --compare RUN_A RUN_B, not both")
        index = render_compare(
            *compare, out=output or Path(f"compare-{compare[0].name}-{compare[1].name}"), force=force
        )
    elif path:
        index = render_report(path, output, force, field_list)
    else:
        raise InputError("report: give a run folder or CSV log as PATH, or --compare RUN_A RUN_B")
    click.echo(f"report: {index}")


@cli.command()
@click.argument("runs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--import",
    "import_file",
    type=click.Path(path_type=Path),
    help="Add measured runs from a JSON file (avatardoctor.measurements/1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the calibration report (avatardoctor.calibration/1).")
def calibrate(runs, import_file, as_json):
    """Fit the memory model's estimated terms to measured runs; show default vs calibrated.

    RUNS: run folders (`avatardoctor calibrate runs/*/`): each GPU run recorded its measured peaks."""
    import json

    from rich.console import Console

    from avatardoctor.calibration import calibration_report, import_measurements, record, render_calibration
    from avatardoctor.runner.folder import RunFolder

    found = import_measurements(import_file) if import_file else []
    for run in runs:
        path = RunFolder(run).measurements_json if run.is_dir() else run
        if run.is_dir() and not path.is_file():
            click.echo(
                f"{run}: no GPU measurements (recorded where NVML sampled the GPUs, for runs that ended)", err=True
            )
            continue
        found += import_measurements(path, named="")
    if runs and not found and not import_file:
        raise InputError(f"calibrate: none of the {len(runs)} run folders holds measurements (logs/measurements.json)")
    if found:
        record(found)
    report = calibration_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_calibration(report, Console(highlight=False))


@cli.command("fleet")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the merged view (avatardoctor.fleet/1).")
def fleet_command(files, as_json):
    """Merge `check --json` reports from many nodes: a row per node, then the outliers.
    Exit 0 every node ready, 1 a node not ready, 2 a file unreadable."""
    import json

    from rich.console import Console

    from avatardoctor.fleet import fleet_document, merge_fleet, read_nodes, render_fleet

    merged = merge_fleet(read_nodes(files))
    for node in merged.nodes:
        if node.error:  # also on stderr, so `fleet --json > fleet.json` still says which file is bad
            click.echo(f"Error: {node.file}: {node.error}", err=True)
    if as_json:
        click.echo(json.dumps(fleet_document(merged), indent=2))
    else:
        render_fleet(merged, Console(highlight=False))
    sys.exit(merged.exit_code)


@cli.group()
def machine():
    """Record this machine's GPU facts, or list the built-in catalogue."""


@machine.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def record(output, force):
    """Write this machine's facts (NVML) as JSON that --machine FILE replays."""
    import json

    from avatardoctor.files import write_new_file
    from avatardoctor.machine.nvml import NvmlBackend

    facts = NvmlBackend().snapshot()
    if facts.nvml_error:
        click.echo(f"Error: cannot record this machine: {facts.nvml_error}", err=True)
        sys.exit(exitcodes.NOT_READY)
    text = json.dumps(facts.to_dict(), indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    write_new_file(output, text, "-o", force)
    click.echo(f"recorded {len(facts.gpus)} GPU{'s' if len(facts.gpus) != 1 else ''} to {output}", err=True)


@machine.command("list")
def list_machines():
    """The catalogue: models for --machine COUNTxMODEL."""
    from avatardoctor.machine.catalogue import CARDS

    click.echo(f"{'MODEL':<11} {'NVML NAME':<26} {'MEMORY':>10}  {'CC':<5} BOX")
    for c in CARDS:
        box = (
            f"HGX, NVSwitch NV{c.nvlinks_per_pair}"
            if c.nvlinks_per_pair
            else f"PCIe Gen{c.pcie_gen}" + ("" if c.pcie_p2p else ", no P2P")
        )
        click.echo(f"{c.key:<11} {c.name:<26} {c.total_mib:>6} MiB  {c.cc[0]}.{c.cc[1]:<3} {box}")
    click.echo("\nuse as --machine COUNTxMODEL, e.g. --machine 5x4090 or --machine 8xH100")


@cli.group()
def ckpt():
    """Verify a Wan2.2-S2V-14B checkpoint, or write a skeleton one."""


@ckpt.command()
@click.argument("directory")
@click.option(
    "--liveavatar",
    type=click.Path(path_type=Path),
    help="The checkout the launch starts in: a relative DIRECTORY is resolved there.",
)
@click.option("--lora-path", help="Also verify this LoRA (a local file, or a Hugging Face repo id).")
@click.option(
    "--deep", is_flag=True, help="Also hash every file (sha256, in parallel) and check every .pth entry's CRC."
)
@click.option(
    "--manifest",
    type=click.Path(path_type=Path),
    help="Compare the hashes with this sha256sum-format file (implies --deep).",
)
@click.option(
    "--write-manifest",
    type=click.Path(path_type=Path),
    help="Write the hashes as a sha256sum-format file (implies --deep).",
)
@click.option("--force", is_flag=True, help="Let --write-manifest replace an existing file.")
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON report (avatardoctor.ckpt/1).")
@click.option("-v", "--verbose", is_flag=True, help="Show the details of passing checks too.")
def verify(directory, liveavatar, lora_path, deep, manifest, write_manifest, force, as_json, verbose):
    """Verify a checkpoint: from its headers in seconds, or with --deep its content at disk speed.
    Exit 0 sound, 1 broken, 2 bad usage, 130 interrupted."""
    from dataclasses import replace

    from rich.console import Console

    from avatardoctor.checks import ckpt as ckpt_checks
    from avatardoctor.checks import liveavatar as la_checks
    from avatardoctor.checks import run_checks
    from avatardoctor.doctor import checkpoint_context
    from avatardoctor.render import render_human

    deep = deep or bool(manifest or write_manifest)
    if write_manifest and write_manifest.exists() and not force:  # say so before reading 45 GB, not after
        raise InputError(
            f"--write-manifest {write_manifest}: the file exists; pass --force to overwrite it or choose another name"
        )
    ctx = checkpoint_context(directory, liveavatar, lora_path)
    checks = ckpt_checks.CHECKS + ((la_checks.lora,) if lora_path else ())
    if deep and not ctx.checkpoint.root_problem:
        from avatardoctor.ckpt.deep import gather_deep
        from avatardoctor.ckpt.hashing import HashingInterrupted
        from avatardoctor.ckpt.manifest import relative_digests
        from avatardoctor.ckpt.manifest import write_manifest as write_sha256sum

        try:
            facts = gather_deep(ctx.checkpoint, manifest, Console(stderr=True))
        except HashingInterrupted as stopped:
            click.echo(str(stopped), err=True)
            sys.exit(130)
        ctx = replace(ctx, checkpoint=replace(ctx.checkpoint, deep=facts))
        checks += ckpt_checks.DEEP_CHECKS
        if write_manifest:
            write_sha256sum(relative_digests(facts.hashed.digests, ctx.checkpoint.root), write_manifest, force)
            click.echo(f"wrote {len(facts.hashed.digests)} sha256 lines to {write_manifest}", err=True)
    report = run_checks(ctx, checks)
    if as_json:
        import json

        summary = ctx.checkpoint.summary
        doc = {
            "schema": "avatardoctor.ckpt/1",
            "verdict": "sound" if report.ready else "broken",
            "root": str(ctx.checkpoint.root),
            "layout": ctx.checkpoint.layout,
            "components": summary.to_dict() if summary else None,
            "checks": [r.to_dict() for r in report.results],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        render_human(report, Console(highlight=False), verbose, title=f"checkpoint: {ctx.checkpoint.root}")
    sys.exit(exitcodes.READY if report.ready else exitcodes.NOT_READY)


@ckpt.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--layout",
    "which",
    type=click.Choice(["upstream", "seed"]),
    default="upstream",
    show_default=True,
    help="Live Avatar's real layout, or the one the seed articles describe.",
)
@click.option(
    "--tiny",
    is_flag=True,
    help="Small shapes with real random data (a few hundred KB) instead of full-size sparse files.",
)
def skeleton(directory, which, tiny):
    """Write a Wan2.2-S2V-14B checkpoint with real headers and no weights (sparse files: seconds, almost no disk)."""
    from avatardoctor.ckpt.skeleton import write_skeleton
    from avatardoctor.units import gib, mib

    root = write_skeleton(directory, which, tiny)
    files = [p for p in root.rglob("*") if p.is_file()]
    apparent = sum(p.stat().st_size for p in files)
    on_disk = sum(p.stat().st_blocks * 512 for p in files)
    kind = "tiny" if tiny else "full-size"
    click.echo(
        f"wrote a {kind} {which} skeleton to {root}: {len(files)} files, {gib(apparent)} apparent, {mib(on_disk)} on disk"
    )


def main() -> None:
    """Every error is one line on stderr naming the flag or file (exit 2 for bad usage or input)."""
    try:
        code = cli.main(prog_name="avatardoctor", standalone_mode=False)
    except InputError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(exitcodes.USAGE)
    except click.UsageError as err:
        hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
        click.echo(f"Error: {err.format_message()}{hint}", err=True)
        sys.exit(exitcodes.USAGE)
    except click.ClickException as err:
        click.echo(f"Error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    sys.exit(code or 0)
