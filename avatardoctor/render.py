"""Human and JSON views of a CheckReport. They only format; every judgement is in the checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.measure import Measurement
from rich.segment import Segment, Segments
from rich.table import Table
from rich.text import Text

from avatardoctor import __version__
from avatardoctor.checks import CheckReport
from avatardoctor.checks.base import Status, worst
from avatardoctor.units import GIB, plural

MARKS = {
    Status.PASS: ("[✓]", "green"),
    Status.WARN: ("[!]", "yellow"),
    Status.FAIL: ("[✗]", "red"),
    Status.SKIP: ("[-]", "dim"),
}
# What a terminal that cannot encode the marks gets instead (PYTHONIOENCODING=ascii, a C locale): the
# symbols avatardoctor writes itself; any other character is escaped by the stream (cli.main).
ASCII = str.maketrans({"✓": "+", "✗": "x", "→": "->", "·": "-", "±": "+/-", "×": "x", "█": "#", "░": "."})


def plain(text: str, console: Console) -> str:
    """text as this console can show it: unchanged on UTF-8, the ASCII stand-ins elsewhere."""
    return text.translate(ASCII) if console.options.ascii_only else text


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
    return f"machine: {where} · mode: {cfg.mode} ({cfg.mode_reason}), {plural(cfg.nproc, 'process')}"


def print_unpadded(console: Console, renderable) -> None:
    """Print a table or grid without the spaces rich pads each line with to the table's width."""
    for line in console.render_lines(renderable, console.options, pad=False):
        while line and not line[-1].control and not line[-1].text.rstrip():
            line.pop()
        if line:
            last = line[-1]
            line[-1] = Segment(last.text.rstrip(), last.style, last.control)
        console.print(Segments([*line, Segment.line()]), end="")


def _check_rows(results, console: Console, verbose: bool, id_width: int, indent: int) -> Table:
    """Each check as a row of mark, id and text; rich wraps the text by display width inside its column,
    so a continuation line keeps its indent whatever the script (a Chinese path is two columns a character)."""
    grid = Table.grid(padding=(0, 1))
    if indent:
        grid.add_column(width=indent - 1)  # under a group's line the checks sit one step in
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, min_width=id_width)
    grid.add_column(overflow="fold")
    for r in results:
        mark, style = MARKS[r.status]
        lines = [Text(plain(printable(r.summary), console))]
        if r.status in (Status.WARN, Status.FAIL) or verbose:
            lines += [Text(plain(printable(d), console), style="dim") for d in r.details]
        if r.remedy:
            lines.append(Text(plain("→ " + printable(r.remedy), console), style="cyan"))
        cells = [Text(plain(mark, console), style=style), Text(r.id, style="dim" if r.status is Status.SKIP else "")]
        grid.add_row(*([""] if indent else []), *cells, Group(*lines))
    return grid


def _group_status(results) -> Status:
    """A group's mark: its worst answer; skipped only when every check in it was skipped."""
    answered = [r.status for r in results if r.status is not Status.SKIP]
    return worst(answered) if answered else Status.SKIP


def render_human(report: CheckReport, console: Console, verbose: bool = False, title: str | None = None) -> None:
    """The verdict on the fit first, then one line per group (`[✓] GPUs (6 checks)`); under it the checks
    that warn or fail, with their details and remedy (every check with verbose); then the verdict. On a
    what-if, what this host lacks is said apart: it does not answer the question asked."""
    console.print(Text(plain(printable(title or _machine_line(report)), console), style="bold"), soft_wrap=True)
    fit = next((r for r in report.results if r.id == "fit.peak" and r.status is not Status.SKIP), None)
    shown = [r for r in report.results if (verbose or r.status in (Status.WARN, Status.FAIL)) and r is not fit]
    id_width = max((len(r.id) for r in shown), default=0)
    if fit:
        print_unpadded(console, _check_rows([fit], console, verbose, id_width, indent=0))
    groups: dict[str, list] = {}
    for r in report.results:
        groups.setdefault(r.group, []).append(r)
    console.print()
    for group, results in groups.items():
        mark, style = MARKS[_group_status(results)]
        line = Text(plain(mark, console), style=style)
        line.append(f" {group} ", style="bold")
        line.append(f"({plural(len(results), 'check')})", style="dim")
        console.print(line)
        listed = [r for r in results if r in shown]
        if listed:
            print_unpadded(console, _check_rows(listed, console, verbose, id_width, indent=4))
    console.print()
    print_unpadded(console, Text(plain(_verdict_line(report), console), style=_verdict_style(report)))
    if lacking := report.this_host_failures():
        ids = ", ".join(r.id for r in lacking)
        advice = f"To run it on this host, fix {ids} too: they are about this host, not {_box(report)}."
        print_unpadded(console, Text(advice, style="yellow"))


def _box(report: CheckReport) -> str:
    """The what-if's box, short: the catalogue spec, or the recorded file's name."""
    return Path(report.machine.source.partition(":")[2]).name


def _verdict_line(report: CheckReport) -> str:
    judged = report.judged()
    fails = [r.id for r in judged if r.status is Status.FAIL]
    warns = sum(1 for r in judged if r.status is Status.WARN)
    warnings = f", {plural(warns, 'warning')}" if warns else ""
    subject = f"{_box(report)}: " if report.what_if else ""
    if report.crashed:
        crashed = ", ".join(report.crashed)
        return f"{subject}No verdict: {plural(len(report.crashed), 'check')} crashed ({crashed}), an avatardoctor bug."
    if fails:
        return f"{subject}Not ready: {plural(len(fails), 'check')} failed ({', '.join(fails)}){warnings}."
    if warns:
        return f"{subject}Ready, with {plural(warns, 'warning')}."
    return f"{subject}Ready: every check passed."


def _verdict_style(report: CheckReport) -> str:
    judged = report.judged()
    if report.crashed or any(r.status is Status.FAIL for r in judged):
        return "bold red"
    return "bold yellow" if any(r.status is Status.WARN for r in judged) else "bold green"


def prediction_json(prediction, change, advice) -> str:
    doc = {
        "schema": "avatardoctor.predict/1",
        "avatardoctor_version": __version__,
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
    from avatardoctor.predict import COMPONENTS, PHASE_NAMES, VERDICT_WORDS

    geo, cfg = prediction.geometry, prediction.config
    where = machine.source if machine else ""
    title = (
        f"{where} · mode {cfg.mode}, {plural(cfg.nproc, 'process')} · {geo.height}x{geo.width} px, "
        f"{cfg.infer_frames} frames per clip · {'fp8' if cfg.fp8 else 'bf16'}"
    )
    print_unpadded(console, Text(plain(title, console), style="bold"))
    style = {"fits": "green", "tight": "yellow", "wont-fit": "red"}
    columns = [  # (header, right-aligned, priority): on a narrow terminal the lowest go first, never a digit
        ("GPU", False, 9),
        ("role", False, 4),
        ("peak phase", False, 3),
        ("loaded", True, 2),
        ("peak", True, 8),
        ("± band", True, 1),
        ("usable", True, 7),
        ("headroom", True, 6),
        ("verdict", False, 5),
    ]
    rows = [
        [
            str(g.index),
            g.role,
            PHASE_NAMES[g.phase],
            f"{g.loaded_bytes / GIB:.2f}",
            f"{g.peak_bytes / GIB:.2f}",
            f"{g.band_bytes / GIB:.2f}",
            f"{g.usable_bytes / GIB:.2f}",
            f"{g.headroom_bytes / GIB:.2f}",
            Text(VERDICT_WORDS[g.verdict], style=style[g.verdict]),
        ]
        for g in prediction.gpus
    ]
    print_unpadded(console, fitted_table(console, "Predicted peak per GPU (GiB)", columns, rows))
    shown = [c for c in COMPONENTS if any(g.components.get(c) for g in prediction.gpus)]
    gpus = list(prediction.gpus)
    for per_table in range(len(gpus), 0, -1):  # as many GPUs side by side as the width allows
        parts = [_components_table(gpus[i : i + per_table], shown) for i in range(0, len(gpus), per_table)]
        if all(_needed_width(console, t) <= console.width for t in parts) or per_table == 1:
            break
    for t in parts:
        print_unpadded(console, t)
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
        boxes = ", ".join(
            f"{o.spec} ({o.prediction.binding.headroom_bytes / GIB:.1f} GiB headroom{', bf16' if o.fp8_dropped else ''})"
            for o in advice
        )
        console.print(Text(f"cheapest catalogue machines where this configuration fits: {boxes}", style="dim"))


def _components_table(gpus, shown) -> Table:
    from avatardoctor.predict import COMPONENT_NAMES

    table = Table(title="At each GPU's peak (GiB)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("component", no_wrap=True)
    for g in gpus:
        table.add_column(f"GPU {g.index}", justify="right", no_wrap=True)
    for c in shown:
        table.add_row(COMPONENT_NAMES[c], *(f"{g.components.get(c, 0) / GIB:.2f}" for g in gpus))
    return table


def _needed_width(console: Console, table: Table) -> int:
    """The width the table needs to draw every cell whole (its cells do not wrap), whatever the terminal."""
    return Measurement.get(console, console.options.update(max_width=10_000), table).maximum


def fitted_table(console: Console, title: str, columns, rows) -> Table:
    """A table whose cells are never cut or broken (rich measures them by display width): when it is wider
    than the terminal, the lowest-priority columns are left out and the caption says so.
    columns: (header, right-aligned, priority)."""
    keep = list(range(len(columns)))
    while True:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption_justify="left")
        for i in keep:
            header, right, _ = columns[i]
            table.add_column(plain(header, console), justify="right" if right else "left", no_wrap=True)
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        dropped = [columns[i][0] for i in range(len(columns)) if i not in keep]
        if dropped:
            table.caption = f"too narrow for {', '.join(dropped)}: widen the terminal or use --json"
        if _needed_width(console, table) <= console.width or len(keep) == 1:
            return table
        keep.remove(min(keep, key=lambda i: columns[i][2]))


def render_plan(doc: dict, console: Console, written=None, shown: int = 12) -> None:
    for r in doc.get("input_checks", []):
        if r["status"] != "pass":
            mark, style = MARKS[Status(r["status"])]
            console.print(Text(plain(f"{mark} {r['id']} {r['summary']}", console), style=style))
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


def run_json(results) -> str:
    """`run --json` and `demo --json` (avatardoctor.run/1): every attempt in order (--auto retries after an
    out-of-memory), each as run_result_lines says it; the last one's outcome is the exit code's."""
    attempts = [
        {
            "folder": str(r.folder.root),
            "outcome": r.failure.cls,
            "failure": None if r.failure.cls == "success" else r.failure.to_dict(),
            "exit_code": r.exit_code,
            "report": str(r.report) if r.report else None,
        }
        for r in results
    ]
    doc = {
        "schema": "avatardoctor.run/1",
        "avatardoctor_version": __version__,
        "outcome": attempts[-1]["outcome"] if attempts else "nothing-to-run",
        "attempts": attempts,
    }
    return json.dumps(doc, indent=2)


def ckpt_json(checkpoint, report: CheckReport) -> str:
    """`ckpt verify --json` (avatardoctor.ckpt/1)."""
    summary = checkpoint.summary
    doc = {
        "schema": "avatardoctor.ckpt/1",
        "avatardoctor_version": __version__,
        "verdict": "sound" if report.ready else "broken",
        "root": str(checkpoint.root),
        "layout": checkpoint.layout,
        "components": summary.to_dict() if summary else None,
        "checks": [r.to_dict() for r in report.results],
    }
    return json.dumps(doc, indent=2)


def catalogue_lines(cards) -> list[str]:
    """`machine list`: the catalogue's models, one line each, in columns as wide as their longest entry."""
    key_w, name_w = max(len(c.key) for c in cards), max(len(c.name) for c in cards)
    lines = [f"{'MODEL':<{key_w}} {'NVML NAME':<{name_w}} {'MEMORY':>10}  {'CC':<5} BOX"]
    for c in cards:
        box = (
            f"HGX, NVSwitch NV{c.nvlinks_per_pair}"
            if c.nvlinks_per_pair
            else f"PCIe Gen{c.pcie_gen}" + ("" if c.pcie_p2p else ", no P2P")
        )
        cc = f"{c.cc[0]}.{c.cc[1]}"
        lines.append(f"{c.key:<{key_w}} {c.name:<{name_w}} {c.total_mib:>6} MiB  {cc:<5} {box}")
    return lines


def catalogue_json(cards, user_catalogue) -> str:
    """`machine list --json` (avatardoctor.catalogue/1): the models --machine COUNTxMODEL accepts."""
    doc = {
        "schema": "avatardoctor.catalogue/1",
        "avatardoctor_version": __version__,
        "user_catalogue": str(user_catalogue),
        "cards": [
            {
                "model": c.key,
                "name": c.name,
                "total_bytes": c.total_mib * 2**20,
                "compute_capability": list(c.cc),
                "pcie_gen": c.pcie_gen,
                "pcie_p2p": c.pcie_p2p,
                "nvlinks_per_pair": c.nvlinks_per_pair,
                "max_count": c.max_count,
            }
            for c in cards
        ],
    }
    return json.dumps(doc, indent=2)


def skeleton_json(root, layout: str, tiny: bool, files: int, apparent_bytes: int, on_disk_bytes: int) -> str:
    """`ckpt skeleton --json` (avatardoctor.skeleton/1): what was written."""
    doc = {
        "schema": "avatardoctor.skeleton/1",
        "avatardoctor_version": __version__,
        "root": str(root),
        "layout": layout,
        "tiny": tiny,
        "files": files,
        "apparent_bytes": apparent_bytes,
        "on_disk_bytes": on_disk_bytes,
    }
    return json.dumps(doc, indent=2)


def check_line(result) -> str:
    """One check as one marked line (rich markup), e.g. for the demo's short list."""
    mark, style = MARKS[result.status]
    return f"check: [{style}]{mark}[/] {result.id} {printable(result.summary)}"
