"""The command line's shared flags: the Live Avatar configuration, the machine, the run options. Each
value is parsed here, once, into the type the layers below take (a Size, a bool, a finite number)."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import click

from avatardoctor.config import MODES
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


def _complete_machine(ctx, param, incomplete: str) -> list:
    """--machine's shell completion: COUNTxMODEL specs from the catalogue (the user's cards too) once a
    count is typed, else files (a recording or a .toml box) and the common 5xMODEL specs."""
    from click.shell_completion import CompletionItem

    from avatardoctor.errors import InputError
    from avatardoctor.machine.catalogue import all_cards

    try:
        cards = all_cards()
    except InputError:  # a broken user catalogue: complete from nothing rather than print an error mid-line
        cards = ()
    count = re.match(r"\d+", incomplete)
    specs = [f"{count.group() if count else 5}x{c.key}" for c in cards]
    matching = [CompletionItem(s) for s in specs if s.lower().startswith(incomplete.lower())]
    return matching if count else [*matching, CompletionItem(incomplete, type="file")]


def machine_options(fn):
    """--machine / --demo: which machine's facts to use (default: this one, through NVML)."""

    @click.option(
        "--machine",
        metavar="FILE|SPEC",
        help="A recorded machine (from `avatardoctor machine record`), a box described in FILE.toml, or a "
        "catalogue box such as 5x4090, 8xH100 (`avatardoctor machine list`).",
        shell_complete=_complete_machine,
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


def python_option(fn):
    """--python PATH: the interpreter whose environment the software checks (sw.*) inspect."""
    return click.option(
        "--python",
        metavar="PATH",
        help="Inspect the packages of this Python (Live Avatar's environment) when avatardoctor is installed "
        "elsewhere (pipx, its own venv); remedies then say PATH -m pip install ...",
    )(fn)


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
    click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the result as versioned JSON (avatardoctor.run/1); progress stays on stderr.",
    ),
]


def run_options(fn):
    for option in reversed(RUN_OPTIONS):
        fn = option(fn)
    return fn
