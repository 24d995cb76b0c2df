"""Human and JSON views of a CheckReport. They only format; every judgement is in the checks."""

from __future__ import annotations

import json
import textwrap

from rich.console import Console
from rich.text import Text

from avatardoctor.checks import CheckReport
from avatardoctor.checks.base import Status

MARKS = {
    Status.PASS: ("[✓]", "green"),
    Status.WARN: ("[!]", "yellow"),
    Status.FAIL: ("[✗]", "red"),
    Status.SKIP: ("[-]", "dim"),
}


def report_json(report: CheckReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def _machine_line(report: CheckReport) -> str:
    m, cfg = report.machine, report.config
    kind, _, name = m.source.partition(":")
    where = {"catalogue": f"catalogue {name}", "recorded": f"recorded {name}", "nvml": f"this machine ({m.hostname})"}[kind]
    procs = f"{cfg.nproc} process{'es' if cfg.nproc > 1 else ''}"
    return f"machine: {where} · mode: {cfg.mode} ({cfg.mode_reason}), {procs}"


def _wrapped(text: str, width: int, indent: int) -> list[str]:
    """Lines of at most width columns; continuation lines start at the indent (a hanging indent)."""
    lines = textwrap.wrap(text, max(width - indent, 20), break_long_words=False, break_on_hyphens=False)
    return lines or [""]


def render_human(report: CheckReport, console: Console, verbose: bool = False, title: str | None = None) -> None:
    console.print(Text(title or _machine_line(report), style="bold"), soft_wrap=True)
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
            first, *rest = _wrapped(r.summary, console.width, indent)
            line = Text("  ")
            line.append(mark, style=style)
            line.append(f" {r.id:<{id_width}} ", style="dim" if r.status is Status.SKIP else "")
            line.append(first)
            console.print(line)
            for cont in rest:
                console.print(Text(pad + cont))
            show_details = r.status in (Status.WARN, Status.FAIL) or verbose
            for detail in r.details if show_details else ():
                # Matrix rows and other preformatted lines keep their spacing; prose wraps.
                chunks = [detail] if "  " in detail.strip() else _wrapped(detail, console.width, indent + 2)
                for i, chunk in enumerate(chunks):
                    console.print(Text(pad + ("" if i == 0 else "  ") + chunk, style="dim"))
            if r.remedy:
                for i, chunk in enumerate(_wrapped(r.remedy, console.width, indent + 2)):
                    console.print(Text(pad + ("→ " if i == 0 else "  ") + chunk, style="cyan"))
    console.print()
    fails, warns = report.count(Status.FAIL), report.count(Status.WARN)
    failing = ", ".join(r.id for r in report.results if r.status is Status.FAIL)
    warnings = f", {warns} warning{'s' if warns > 1 else ''}" if warns else ""
    if fails:
        verdict = Text(f"Not ready: {fails} check{'s' if fails > 1 else ''} failed ({failing}){warnings}.", style="bold red")
    elif warns:
        verdict = Text(f"Ready, with {warns} warning{'s' if warns > 1 else ''}.", style="bold yellow")
    else:
        verdict = Text("Ready: every check passed.", style="bold green")
    console.print(verdict, soft_wrap=True)
