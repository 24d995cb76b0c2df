"""The command line. It parses flags, calls the doctor, and renders; it judges nothing itself.

Heavy modules are imported inside the commands so `--help` and `check` start fast.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from avatardoctor import __version__, exitcodes
from avatardoctor.errors import InputError
from avatardoctor.options import config_options, machine_options, python_option, run_options
from avatardoctor.toolcommands import COMMANDS


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
@python_option
@click.option(
    "--for-issue", is_flag=True, help="Print the paste-ready bug report instead (as `avatardoctor env`; --json too)."
)
def check(machine, demo, as_json, verbose, deep, python, for_issue, **config_flags):
    """Check the machine, the environment and the configuration. Exit 0 ready, 1 not ready, 2 bad input, 3 a crash.

    With --machine or --demo the question is whether the named box runs the configuration: this host's
    software (sw.*, its port and disk) is listed apart and does not decide the exit code."""
    from avatardoctor.doctor import build_context, diagnose, with_live_test
    from avatardoctor.render import render_human, report_json

    if for_issue and (machine or demo):
        raise InputError("check --for-issue reports this machine: --machine and --demo are for what-ifs")
    ctx = build_context(machine, demo, python=python, **config_flags)
    report = diagnose(with_live_test(replace(ctx, deep=True)) if deep else ctx)
    if for_issue:
        from avatardoctor.bugreport import env_document, env_text

        click.echo(env_text(env_document(report, ctx, None), as_json), nl=False)
    elif as_json:
        click.echo(report_json(report))
    else:
        from rich.console import Console

        render_human(report, Console(highlight=False), verbose=verbose)
    sys.exit(exitcodes.for_checks(report.ready, bool(report.crashed)))


@cli.command("env")
@click.argument("run", required=False, type=click.Path(path_type=Path))
@click.option("--liveavatar", type=click.Path(path_type=Path), help="The Live Avatar checkout: its commit is reported.")
@python_option
@click.option("--json", "as_json", is_flag=True, help="Print the versioned JSON (avatardoctor.env/1).")
def env_command(run, liveavatar, python, as_json):
    """A paste-ready bug report for Live Avatar's issues: GPUs, driver, CUDA, torch, flash-attn, the pinned
    packages, the checkout's commit and, from a run folder RUN, the launch command and its failure. It holds
    no secret: of the environment only the NCCL and CUDA variables, $HOME as ~, no host name."""
    from avatardoctor.bugreport import env_document, env_text
    from avatardoctor.doctor import build_context, diagnose
    from avatardoctor.reports.runfolder import read_run_folder
    from avatardoctor.runner.folder import RunFolder

    if run is not None and not RunFolder(run).debug_json.is_file():
        raise InputError(f"env {run}: not a run folder (no debug_info.json); pass a folder `run` or `record` wrote")
    ctx = build_context(python=python, liveavatar=liveavatar)
    doc = env_document(diagnose(ctx), ctx, read_run_folder(run) if run else None)
    click.echo(env_text(doc, as_json), nl=False)


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


def _run_options(out_dir, sample_hz, hang_timeout, cwd, entry, status, no_shim=False, memory_history=False):
    from avatardoctor.render import live_line
    from avatardoctor.runner.run import RunOptions

    def progress(tracker, sampler, plan):
        status.update(live_line(tracker, sampler, plan))

    def outcome(failure):
        status.update(f"outcome: {failure.cls} · drawing the report")

    return RunOptions(
        out_dir=out_dir,
        sample_hz=sample_hz,
        hang_timeout_s=hang_timeout,
        cwd=cwd,
        entry=entry,
        on_progress=progress,
        on_outcome=outcome,
        shim=not no_shim,
        memory_history=memory_history,
    )


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
    as_json,
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
    _echo_results(results, as_json)
    sys.exit(exitcodes.for_run(results[-1].failure.cls if results else "nothing-to-run"))


def _echo_results(results, as_json: bool) -> None:
    """What run and demo print on stdout when the run ends: its lines, or with --json its document."""
    from avatardoctor.render import run_json, run_result_lines

    if as_json:
        click.echo(run_json(results))
        return
    for result in results:
        click.echo("\n".join(run_result_lines(result)))


@cli.command("record", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@run_options
@click.option(
    "--attach",
    "attach",
    multiple=True,
    type=click.IntRange(min=1),
    metavar="PID",
    help="Watch a running job's process (repeatable) until it exits or Ctrl-C; it is never stopped.",
)
@click.option(
    "--attach-gpus",
    "attach_gpus",
    callback=lambda _ctx, _param, value: _gpu_indices(value),
    metavar="0,1,...|all",
    help="Watch the job whose compute processes use these GPUs (NVML; its torchrun where visible) until it exits.",
)
@click.option(
    "--log",
    "log_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --attach or --attach-gpus: the job's output file, followed from its end (phases, clips, outcome).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def record_command(
    no_shim, memory_history, out_dir, sample_hz, hang_timeout, as_json, attach, attach_gpus, log_file, command
):
    """Record any launch as `run` records its own: `record -- bash infinite_inference_multi_gpu.sh`,
    `record --attach PID` or `record --attach-gpus 0,1`. Exit 0 success, 1 failure, 130 interrupted."""
    from rich.console import Console

    from avatardoctor.runner.record import attached_plan, gpu_job, plan_for_command
    from avatardoctor.runner.run import Watch, execute

    if sum(map(bool, (command, attach, attach_gpus))) != 1:
        raise InputError(
            "record: give one of a command after -- (record -- bash infinite_inference_multi_gpu.sh), "
            "--attach PID or --attach-gpus 0,1"
        )
    if log_file and command:
        raise InputError("record: --log follows an attached job's output; a recorded command's output is captured")
    if log_file and not log_file.is_file():
        raise InputError(f"--log {log_file}: no such file; pass the file the job's output goes to")
    if no_shim or memory_history:
        raise InputError("record: --no-shim and --memory-history are for `run`: record runs the command as given")
    cwd = Path.cwd()
    gpus: tuple[int, ...] = ()
    if attach_gpus:
        found = gpu_job(None if attach_gpus == "all" else attach_gpus)  # nothing there: one line, before any folder
        attach, gpus = found.roots, tuple(i for i, pids in found.on_gpus.items() if pids)
    if attach:
        from avatardoctor.jobs import attach as attached

        plan = attached_plan(attached(attach))  # a PID not running: one line, before any folder
    else:
        plan = plan_for_command(command, cwd, dict(os.environ))
    console = Console(stderr=True, highlight=False)
    with console.status("starting") as status:
        options = _run_options(out_dir, sample_hz, hang_timeout, cwd, [], status)
        result = execute(plan, options, Watch(tuple(command), tuple(attach), log_file, gpus))
    _echo_results([result], as_json)
    sys.exit(exitcodes.for_run(result.failure.cls))


def _gpu_indices(value: str | None) -> tuple[int, ...] | str | None:
    """--attach-gpus: `all`, or NVML indices as nvidia-smi shows them (each once, in the order given)."""
    if value is None or value.strip() == "all":
        return None if value is None else "all"
    words = [w.strip() for w in value.split(",")]
    if not all(w.isdigit() for w in words):
        raise InputError(f"--attach-gpus {value}: give GPU indices as nvidia-smi shows them (0,1,2) or all")
    return tuple(dict.fromkeys(int(w) for w in words))


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
def demo_command(no_shim, memory_history, out_dir, sample_hz, hang_timeout, nproc, master_port, as_json):
    """The whole flow on any machine with torch: a tiny real checkpoint, plan, a small real TPP-like run, report."""
    import importlib.util

    from rich.console import Console

    from avatardoctor.demo.checkpoints import tiny_demo_checkpoint
    from avatardoctor.doctor import build_context, demo_checks
    from avatardoctor.render import check_line
    from avatardoctor.runner.auto import demo_plan, execute_with_port_retry

    if importlib.util.find_spec("torch") is None:
        raise InputError("demo: torch is not installed; install the [torch] extra: pip install 'avatardoctor[torch]'")
    console = Console(stderr=True, highlight=False)
    ckpt = tiny_demo_checkpoint(os.environ)
    console.print(
        f"checkpoint: a tiny real one at {ckpt} (the real file names and headers, every dimension cut to at most 4: "
        "`avatardoctor ckpt verify` reads it, and says it is not the 14B model)"
    )
    ctx = build_context(mode="tpp", num_gpus_dit=nproc - 1, master_port=master_port)
    for r in demo_checks(ctx).results:
        console.print(check_line(r), highlight=False)
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
            ["-m", "avatardoctor.demo.workload"],
            status,
            no_shim,
            memory_history,
        )
        result = execute_with_port_retry(plan, options, console.print)
    _echo_results([result], as_json)
    sys.exit(exitcodes.for_run(result.failure.cls))


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
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the summary it wrote (avatardoctor.report/1, or avatardoctor.compare/1 with --compare).",
)
def report(path, output, compare, fields, force, as_json):
    """Render a report from a run folder or a plain nvidia-smi CSV log (HTML, Markdown, JSON, PNG)."""
    from avatardoctor.reports.render import render_compare, render_report

    field_list = [f.strip() for f in fields.split(",")] if fields else None
    if compare:
        if path:
            raise InputError("report: give PATH or --compare RUN_A RUN_B, not both")
        run_a, run_b = compare
        index = render_compare(run_a, run_b, out=output or Path(f"compare-{run_a.name}-{run_b.name}"), force=force)
    elif path:
        index = render_report(path, output, force, field_list)
    else:
        raise InputError("report: give a run folder or CSV log as PATH, or --compare RUN_A RUN_B")
    if as_json:  # the summary.json written beside index.html, as it is on disk
        click.echo(f"report: {index}", err=True)
        click.echo((index.parent / "summary.json").read_text(encoding="utf-8"), nl=False)
    else:
        click.echo(f"report: {index}")


for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    """Every error is one line on stderr naming the flag or file (exit 2 for bad usage or input); a crash of
    avatardoctor itself prints its traceback and exits 3 (docs/exit-codes.md)."""
    for stream in (sys.stdout, sys.stderr):  # a character the terminal cannot encode is escaped, never a traceback
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
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
        sys.exit(exitcodes.INTERRUPTED)
    except Exception:  # a bug in avatardoctor, not a verdict: exit 3 so a Slurm prolog does not drain the node
        import traceback

        traceback.print_exc()
        click.echo("Error: avatardoctor crashed (a bug): please report it with the traceback above", err=True)
        sys.exit(exitcodes.CRASHED)
    sys.exit(code or 0)
