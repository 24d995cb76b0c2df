"""Human and JSON views of a CheckReport. They only format; every judgement is in the checks."""

from __future__ import annotations

import json
import re
import textwrap

from rich.console import Console
from rich.text import Text

from avatardoctor.checks import CheckReport
from avatardoctor.checks.base import Status
from avatardoctor.units import GIB

MARKS = {
    Status.PASS: ("[✓]", "green"),
    Status.WARN: ("[!]", "yellow"),
    Status.FAIL: ("[✗]", "red"),
    Status.SKIP: ("[-]", "dim"),
}


# What a terminal would act on rather than show: C0/C1 controls (ESC starts the sequences that clear the
# screen or retitle the window), bidi overrides that reorder a line, and lone surrogates (undecodable
# file-name bytes, which cannot even be encoded for output).
UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode: show that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """text for a terminal: names from files (tensors, entries, paths) may hold escape sequences; each
    unprintable character is shown as \\xNN or \\uNNNN instead. JSON output keeps the exact text."""
    return UNPRINTABLE.sub(lambda m: _escaped(m.group()), text)


def report_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def _machine_line(report: CheckReport) -> str:
    m, cfg = report.machine, report.config
    kind, _, name = m.source.partition(":")
    where = {"catalogue": f"catalogue {name}", "recorded": f"recorded {name}", "nvml": f"this machine ({m.hostname})"}[
        kind
    ]
    procs = f"{cfg.nproc} process{'es' if cfg.nproc > 1 else ''}"
    return f"machine: {where} · mode: {cfg.mode} ({cfg.mode_reason}), {procs}"


def _wrapped(text: str, width: int, indent: int) -> list[str]:
    """Lines of at most width columns; continuation lines start at the indent (a hanging indent)."""
    lines = textwrap.wrap(text, max(width - indent, 20), break_long_words=False, break_on_hyphens=False)
    return lines or [""]


def render_human(report: CheckReport, console: Console, verbose: bool = False, title: str | None = None) -> None:
    console.print(Text(printable(title or _machine_line(report)), style="bold"), soft_wrap=True)
    groups: dict[str, list] = {}
    for r in report.results:
        groups.setdefault(r.group, []).append(r)
    id_width = max(len(r.id) for r in report.results)
    indent = 2 + 3 + 1 + id_width + 1  # "  [✓] gpu.vram     "
    pad = " " * indent
    for group, results in groups.items():
        console.print()
        console.print(Text(group, style="bold"))
        for r in results:
            mark, style = MARKS[r.status]
            first, *rest = _wrapped(printable(r.summary), console.width, indent)
            line = Text("  ")
            line.append(mark, style=style)
            line.append(f" {r.id:<{id_width}} ", style="dim" if r.status is Status.SKIP else "")
            line.append(first)
            console.print(line)
            for cont in rest:
                console.print(Text(pad + cont))
            show_details = r.status in (Status.WARN, Status.FAIL) or verbose
            for detail in map(printable, r.details if show_details else ()):
                # Matrix rows and other preformatted lines keep their spacing; prose wraps.
                chunks = [detail] if "  " in detail.strip() else _wrapped(detail, console.width, indent + 2)
                for i, chunk in enumerate(chunks):
                    console.print(Text(pad + ("" if i == 0 else "  ") + chunk, style="dim"))
            if r.remedy:
                for i, chunk in enumerate(_wrapped(printable(r.remedy), console.width, indent + 2)):
                    console.print(Text(pad + ("→ " if i == 0 else "  ") + chunk, style="cyan"))
    console.print()
    fails, warns = report.count(Status.FAIL), report.count(Status.WARN)
    failing = ", ".join(r.id for r in report.results if r.status is Status.FAIL)
    warnings = f", {warns} warning{'s' if warns > 1 else ''}" if warns else ""
    if fails:
        verdict = Text(
            f"Not ready: {fails} check{'s' if fails > 1 else ''} failed ({failing}){warnings}.", style="bold red"
        )
    elif warns:
        verdict = Text(f"Ready, with {warns} warning{'s' if warns > 1 else ''}.", style="bold yellow")
    else:
        verdict = Text("Ready: every check passed.", style="bold green")
    console.print(verdict, soft_wrap=True)


def prediction_json(prediction, change, advice) -> str:
    doc = {
        "schema": "avatardoctor.predict/1",
        "prediction": prediction.to_dict(),
        "smallest_change": {"flags": change.flags, "prediction": change.prediction.to_dict()} if change else None,
        "hardware_advice": [
            {
                "machine": o.spec,
                "bf16_only": o.fp8_dropped,
                "least_headroom_gib": round(o.prediction.binding.headroom_bytes / GIB, 2),
            }
            for o in advice
        ],
    }
    return json.dumps(doc, indent=2)


def render_prediction(prediction, change, advice, console: Console, machine=None) -> None:
    """The per-GPU table, the components at each peak, the binding line, and what would fit."""
    from rich.table import Table

    from avatardoctor.predict import COMPONENT_NAMES, COMPONENTS, PHASE_NAMES, VERDICT_WORDS

    geo, cfg = prediction.geometry, prediction.config
    where = machine.source if machine else ""
    console.print(
        Text(
            f"{where} · mode {cfg.mode}, {cfg.nproc} process{'es' if cfg.nproc > 1 else ''} · {geo.height}x{geo.width} px, "
            f"{cfg.infer_frames} frames per clip · {'fp8' if cfg.fp8 else 'bf16'}",
            style="bold",
        ),
        soft_wrap=True,
    )
    table = Table(title="Predicted peak per GPU (GiB)", title_justify="left")
    for col in ("GPU", "role", "peak phase", "loaded", "peak", "± band", "usable", "headroom", "verdict"):
        table.add_column(col, justify="left" if col in ("GPU", "role", "peak phase", "verdict") else "right")
    style = {"fits": "green", "tight": "yellow", "wont-fit": "red"}
    for g in prediction.gpus:
        table.add_row(
            str(g.index),
            g.role,
            PHASE_NAMES[g.phase],
            f"{g.loaded_bytes / GIB:.2f}",
            f"{g.peak_bytes / GIB:.2f}",
            f"{g.band_bytes / GIB:.2f}",
            f"{g.usable_bytes / GIB:.2f}",
            f"{g.headroom_bytes / GIB:.2f}",
            Text(VERDICT_WORDS[g.verdict], style=style[g.verdict]),
        )
    console.print(table)
    parts = Table(title="At each GPU's peak (GiB)", title_justify="left")
    parts.add_column("component")
    shown = [c for c in COMPONENTS if any(g.components.get(c) for g in prediction.gpus)]
    for g in prediction.gpus:
        parts.add_column(f"GPU {g.index}", justify="right")
    for c in shown:
        parts.add_row(COMPONENT_NAMES[c], *(f"{g.components.get(c, 0) / GIB:.2f}" for g in prediction.gpus))
    console.print(parts)
    memory = prediction.memory_verdict
    console.print(Text(f"{VERDICT_WORDS[memory]}: {prediction.memory_explanation()}", style=f"bold {style[memory]}"))
    if prediction.refusals:  # the seeds' arithmetic stands above; this is what really happens
        console.print(Text("WON'T RUN: upstream's code stops this launch, whatever the memory:", style="bold red"))
        for v in prediction.refusals:
            console.print(Text(f"  {v.rule.id}: {v.problem} -> {v.rule.prevents}", style="red"))
        console.print(Text("remedy: " + "; ".join(dict.fromkeys(v.remedy for v in prediction.refusals)), style="cyan"))
    console.print(
        Text(f"sizes from the {prediction.sizes_source}; estimated terms {prediction.terms.source}", style="dim")
    )
    if change:
        console.print(Text(f"smallest change that fits: {change.flags}", style="cyan"))
    if advice:
        rows = ", ".join(
            f"{o.spec} ({o.prediction.binding.headroom_bytes / GIB:.1f} GiB headroom{', bf16' if o.fp8_dropped else ''})"
            for o in advice
        )
        console.print(Text(f"cheapest catalogue machines where this configuration fits: {rows}", style="dim"))


def render_plan(doc: dict, console: Console, written=None, shown: int = 12) -> None:
    for r in doc.get("input_checks", []):
        if r["status"] != "pass":
            mark, style = MARKS[Status(r["status"])]
            console.print(Text(f"{mark} {r['id']} {r['summary']}", style=style))
    reasons = doc["reasons"]
    if len(reasons) > shown:
        console.print(Text(f"... {len(reasons) - shown} earlier configurations tried (all in --json)", style="dim"))
    for line in reasons[-shown:]:
        console.print(Text(line, style="bold" if line.startswith("chose") else ""))
    if "argv" not in doc:
        advice = ", ".join(doc.get("hardware_advice", [])) or "none in the catalogue"
        console.print(
            Text(
                f"No plan: nothing upstream accepts fits. Hardware where the default configuration fits: {advice}",
                style="bold red",
            )
        )
        return
    if doc.get("inputs_note"):
        console.print(Text(doc["inputs_note"], style="yellow" if doc["inputs_note"].startswith("no ") else ""))
    console.print(
        Text(
            f"torchrun --nproc_per_node {doc['nproc']} --master_port {doc['master_port']} {doc['entry']} ...",
            style="cyan",
        )
    )
    console.print(Text("env: " + " ".join(f"{k}={v}" for k, v in doc["env"].items()), style="dim"))
    if written:
        console.print(Text(f"plan written to {written}", style="green"))


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


def run_result_lines(result) -> list[str]:
    """What a finished run says: its folder, its outcome, the remedy, the report."""
    f = result.failure
    lines = [
        f"run folder: {result.folder.root}",
        f"outcome: {f.cls}" + (f": {f.message}" if f.cls != "success" else ""),
    ]
    if f.remedy:
        lines.append(f"remedy: {f.remedy}")
    if result.report:
        lines.append(f"report: {result.report}")
    return lines


def ckpt_json(checkpoint, report: CheckReport) -> str:
    """`ckpt verify --json` (avatardoctor.ckpt/1)."""
    summary = checkpoint.summary
    doc = {
        "schema": "avatardoctor.ckpt/1",
        "verdict": "sound" if report.ready else "broken",
        "root": str(checkpoint.root),
        "layout": checkpoint.layout,
        "components": summary.to_dict() if summary else None,
        "checks": [r.to_dict() for r in report.results],
    }
    return json.dumps(doc, indent=2)


def catalogue_lines(cards) -> list[str]:
    """`machine list`: the catalogue's models, one line each."""
    lines = [f"{'MODEL':<11} {'NVML NAME':<26} {'MEMORY':>10}  {'CC':<5} BOX"]
    for c in cards:
        box = (
            f"HGX, NVSwitch NV{c.nvlinks_per_pair}"
            if c.nvlinks_per_pair
            else f"PCIe Gen{c.pcie_gen}" + ("" if c.pcie_p2p else ", no P2P")
        )
        lines.append(f"{c.key:<11} {c.name:<26} {c.total_mib:>6} MiB  {c.cc[0]}.{c.cc[1]:<3} {box}")
    return lines


def check_line(result) -> str:
    """One check as one marked line (rich markup), e.g. for the demo's short list."""
    mark, style = MARKS[result.status]
    return f"check: [{style}]{mark}[/] {result.id} {printable(result.summary)}"
