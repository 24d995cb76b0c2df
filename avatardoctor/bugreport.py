"""A paste-ready bug report for Live Avatar's issue tracker: `avatardoctor env [RUN]`.

What upstream's maintainers ask for (GPUs and driver, CUDA, torch, flash-attn, the pinned packages, the
launch command, the checkout's commit, the failure) gathered from where avatardoctor already reads each
fact: the checks' data (the NVML snapshot, sw.* for the packages, la.commit for git, nccl.env) and the run
folder's debug_info.json through the reports' reader. Nothing secret is written: of the environment only
the NCCL and CUDA variables the checks read, $HOME as ~, and never the host's name.
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from avatardoctor import __version__
from avatardoctor.checks import CheckReport
from avatardoctor.checks.base import CheckContext, Status
from avatardoctor.units import gib

if TYPE_CHECKING:
    from avatardoctor.reports.runfolder import RunRecord

SCHEMA = "avatardoctor.env/1"
CUDA_VARIABLES = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")  # read by visible.py and gpu.visible
HOST = "<host>"


def env_document(report: CheckReport, ctx: CheckContext, run: RunRecord | None) -> dict[str, Any]:
    """The avatardoctor.env/1 document, every text already scrubbed (docs/json.md)."""
    data = {r.id: r.data for r in report.results}
    torch = data.get("sw.torch", {})
    attention = data.get("sw.attention", {})
    commit = data.get("la.commit", {})
    machine = ctx.machine
    python = data.get("sw.python", {})
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "avatardoctor_version": __version__,
        "gpus": [
            {
                "index": g.index,
                "name": g.name,
                "total_bytes": g.total_bytes,
                "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}",
            }
            for g in machine.gpus
        ],
        "driver_version": machine.driver_version,
        "cuda_driver_version": machine.cuda_driver_version,
        "nvml_error": machine.nvml_error,
        "python": {"version": python.get("version"), "executable": python.get("executable")},
        "torch": {"version": torch["version"], "cuda": torch.get("cuda")} if torch.get("installed") else None,
        "nccl": data.get("sw.nccl", {}).get("version"),
        "flash_attn": attention.get("flash_attn"),
        "flash_attn_3": attention.get("flash_attn_3"),
        "cudnn": attention.get("cudnn"),
        "packages": {name: dict(entry) for name, entry in data.get("sw.pins", {}).items()},
        "environment": _variables(ctx.env, data.get("nccl.env", {}).get("variables", {})),
        "liveavatar": (
            {k: commit.get(k) for k in ("commit", "pinned", "modified_rule_files")} if "commit" in commit else None
        ),
        "run": None,
        "not_passing": [
            {"id": r.id, "status": r.status.value, "summary": r.summary}
            for r in report.results
            if r.status in (Status.WARN, Status.FAIL)
        ],
    }
    if run is not None:
        debug = run.debug
        doc["run"] = {
            "folder": str(run.path),
            "command": debug.command,
            "outcome": debug.outcome,
            "failure": debug.failure,
        }
    return scrubbed(doc, ctx.env.get("HOME"), _host_names(machine.hostname))


def _variables(env: Mapping[str, str], nccl: Mapping[str, str]) -> dict[str, str]:
    """The variables the checks read and judge (nccl.env's NCCL_*/TORCH_NCCL_*, CUDA's): no other value leaves."""
    return {**{k: env[k] for k in CUDA_VARIABLES if k in env}, **dict(nccl)}


def _host_names(recorded: str | None) -> set[str]:
    names = {socket.gethostname(), socket.getfqdn(), recorded or ""}
    return {part for name in names for part in (name, name.split(".")[0]) if len(part) > 1}


def scrubbed(value: Any, home: str | None, hosts: set[str]) -> Any:
    """Every text in a JSON value with the home folder as ~ and the host's names as <host>."""
    patterns = []
    if home and home.rstrip("/"):
        patterns.append((re.compile(re.escape(home.rstrip("/")) + r"(?=/|\b|$)"), "~"))
    for name in sorted(hosts, key=len, reverse=True):  # the full name before its first label
        patterns.append((re.compile(r"(?<![\w.-])" + re.escape(name) + r"(?![\w-])"), HOST))

    def scrub(v: Any) -> Any:
        if isinstance(v, str):
            for pattern, replacement in patterns:
                v = pattern.sub(replacement, v)
            return v
        if isinstance(v, dict):
            return {scrub(k): scrub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [scrub(x) for x in v]
        return v

    return scrub(value)


# ---- Markdown ----------------------------------------------------------------------------------------


def _md(text: object) -> str:
    """Plain text as Markdown shows it: 720*400, snake_case, <host> and pipes in a table stay as written."""
    return re.sub(r"([\\*_<|\[\]])", r"\\\1", str(text)).replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _fenced(text: str, lang: str = "") -> list[str]:
    """A code block whose fence is longer than any run of backticks inside it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text, fence]


def _gpu_line(doc: dict) -> str:
    gpus = doc["gpus"]
    if not gpus:
        return f"none found ({doc['nvml_error']})" if doc["nvml_error"] else "none found"
    kinds: dict[tuple, int] = {}
    for g in gpus:
        key = (g["name"], gib(g["total_bytes"], 1), g["compute_capability"])
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{n} x {name} ({size}, cc {cc})" for (name, size, cc), n in kinds.items())


def env_markdown(doc: dict) -> str:
    """The document as one Markdown block to paste into an issue."""
    torch = doc["torch"]
    la = doc["liveavatar"]
    driver = doc["driver_version"] or "unknown"
    if doc["cuda_driver_version"]:
        driver += f" (supports CUDA {doc['cuda_driver_version']})"
    if la and la["commit"]:
        modified = la["modified_rule_files"]
        commit = _code(la["commit"][:12]) + (f", modified: {_md(', '.join(modified))}" if modified else "")
    else:
        commit = "not a git checkout" if la else "not given (--liveavatar DIR)"
    variables = ", ".join(_code(f"{k}={v}") for k, v in doc["environment"].items())
    rows = [
        ("GPUs", _md(_gpu_line(doc))),
        ("driver", _md(driver)),
        ("Python", _md(f"{doc['python']['version'] or 'unknown'} ({doc['python']['executable'] or 'unknown'})")),
        (
            "torch",
            _md(f"{torch['version']} (CUDA {torch['cuda'] or 'none: a CPU build'})" if torch else "not installed"),
        ),
        ("NCCL", _md(doc["nccl"] or "unknown")),
        ("flash-attn", _md(doc["flash_attn"] or "not installed")),
        ("FlashAttention 3", _md(doc["flash_attn_3"] or "not installed")),
        ("cuDNN", _md(doc["cudnn"] or "unknown")),
        ("Live Avatar commit", commit),
        ("NCCL/CUDA variables", variables.replace("|", "\\|") or "none set"),
    ]
    lines = [
        f"### Environment (avatardoctor env {doc['avatardoctor_version']})",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
    ]
    if doc["packages"]:
        packages = ", ".join(
            f"{name} {entry['version'] or 'missing'}" + (f" (pin {entry['pin']})" if entry["pin"] else "")
            for name, entry in doc["packages"].items()
        )
        lines += ["", f"**Packages the entry imports:** {_md(packages)}"]
    run = doc["run"]
    if run:
        lines += ["", "**Launch command:**", "", *_fenced(shlex.join(run["command"]) or "(not recorded)", "sh")]
        failure = run["failure"]
        if failure:
            where = ", ".join(f"{k} {failure[k]}" for k in ("phase", "gpu") if failure.get(k) is not None)
            lines += [
                "",
                f"**Last failure:** {_md(failure.get('class', run['outcome']))}"
                + (f" ({_md(where)})" if where else ""),
            ]
            if failure.get("message"):
                lines += ["", *_fenced(failure["message"])]
            if failure.get("remedy"):
                lines += ["", f"avatardoctor's remedy: {_md(failure['remedy'])}"]
        else:
            lines += ["", f"**Outcome:** {_md(run['outcome'] or 'not recorded')}"]
    if doc["not_passing"]:
        lines += ["", "**Checks not passing:**", ""]
        lines += [f"- {c['status']} `{c['id']}`: {_md(c['summary'])}" for c in doc["not_passing"]]
    return "\n".join(lines) + "\n"


def env_text(doc: dict, as_json: bool) -> str:
    """What `env` prints: the Markdown block, or the document as JSON."""
    return json.dumps(doc, indent=2) + "\n" if as_json else env_markdown(doc)
