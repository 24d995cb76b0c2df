"""The commands around the main flow: the live NCCL test, calibration, the fleet view, machine facts and
checkpoints. Like cli.py they parse and dispatch; every judgement is below them, every view in the
renderers. cli.py adds them to the command group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from avatardoctor import exitcodes
from avatardoctor.errors import InputError
from avatardoctor.units import plural


@click.command("nccl")
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

    from rich.console import Console

    from avatardoctor.checks import live, run_checks
    from avatardoctor.doctor import build_context
    from avatardoctor.nccltest.launch import NcclTest, run_test
    from avatardoctor.render import render_human, report_json

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
        click.echo(report_json(report))
    else:
        title = f"live test: {plural(nnodes * nproc, 'rank')} ({backend}), node {node_rank} of {nnodes}, master {master_addr}:{master_port}"
        render_human(report, Console(highlight=False), verbose=True, title=title)
    sys.exit(exitcodes.for_checks(report.ready, bool(report.crashed)))


@click.command()
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
    from avatardoctor.runner.folder import run_measurements

    found = import_measurements(import_file) if import_file else []
    for run in runs:
        found += run_measurements(run, say=lambda line: click.echo(line, err=True))
    if runs and not found and not import_file:
        raise InputError(f"calibrate: none of the {len(runs)} run folders holds measurements (logs/measurements.json)")
    if found:
        record(found)
    report = calibration_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        render_calibration(report, Console(highlight=False))


@click.command("fleet")
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


@click.group()
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
@click.option(
    "--json", "as_json", is_flag=True, help="Print the catalogue as versioned JSON (avatardoctor.catalogue/1)."
)
def list_machines(as_json):
    """The catalogue: models for --machine COUNTxMODEL."""
    from avatardoctor.machine.catalogue import all_cards, user_catalogue_path
    from avatardoctor.render import catalogue_json, catalogue_lines

    if as_json:
        click.echo(catalogue_json(all_cards(), user_catalogue_path(os.environ)))
        return
    click.echo("\n".join(catalogue_lines(all_cards())))
    click.echo("\nuse as --machine COUNTxMODEL, e.g. --machine 5x4090 or --machine 8xH100")
    click.echo(f"your own cards: {user_catalogue_path(os.environ)} (docs/machines.md)")


@click.group()
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
    Exit 0 sound, 1 broken, 2 bad usage or a folder that is not there, 3 a crash, 130 interrupted."""
    from rich.console import Console

    from avatardoctor.ckpt.hashing import HashingInterrupted
    from avatardoctor.doctor import verify_checkpoint
    from avatardoctor.render import ckpt_json, render_human

    deep = deep or bool(manifest or write_manifest)
    if write_manifest and write_manifest.exists() and not force:  # say so before reading 45 GB, not after
        raise InputError(
            f"--write-manifest {write_manifest}: the file exists; pass --force to overwrite it or choose another name"
        )
    try:
        ctx, report, wrote = verify_checkpoint(
            directory, liveavatar, lora_path, deep, manifest, write_manifest, force, Console(stderr=True)
        )
    except HashingInterrupted as stopped:
        click.echo(str(stopped), err=True)
        sys.exit(exitcodes.INTERRUPTED)
    if wrote:
        click.echo(wrote, err=True)
    scan = ctx.checkpoint
    assert scan is not None  # checkpoint_context always scans the folder it was given
    if scan.root_problem:  # nothing to verify: unreadable input (exit 2), not a broken checkpoint (exit 1)
        raise InputError(f"ckpt verify {scan.root}: {scan.root_problem}; pass the Wan2.2-S2V-14B checkpoint folder")
    if as_json:
        click.echo(ckpt_json(scan, report))
    else:
        render_human(report, Console(highlight=False), verbose, title=f"checkpoint: {scan.root}")
    sys.exit(exitcodes.for_checks(report.ready, bool(report.crashed)))


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
@click.option(
    "--json", "as_json", is_flag=True, help="Print what was written as versioned JSON (avatardoctor.skeleton/1)."
)
def skeleton(directory, which, tiny, as_json):
    """Write a Wan2.2-S2V-14B checkpoint with real headers and no weights (sparse files: seconds, almost no disk)."""
    from avatardoctor.ckpt.skeleton import write_skeleton
    from avatardoctor.units import gib, mib

    root = write_skeleton(directory, which, tiny)
    files = [p for p in root.rglob("*") if p.is_file()]
    apparent = sum(p.stat().st_size for p in files)
    on_disk = sum(p.stat().st_blocks * 512 for p in files)
    if as_json:
        from avatardoctor.render import skeleton_json

        click.echo(skeleton_json(root, which, tiny, len(files), apparent, on_disk))
        return
    kind = "tiny" if tiny else "full-size"
    click.echo(
        f"wrote a {kind} {which} skeleton to {root}: {len(files)} files, {gib(apparent)} apparent, {mib(on_disk)} on disk"
    )


COMMANDS: list[click.Command] = [nccl_command, calibrate, fleet_command, machine, ckpt]
