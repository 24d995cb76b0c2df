"""Writing a report: report/index.html (self-contained), report.md, summary.json and the PNGs.

HTML comes from Jinja2 templates with autoescaping on, so a prompt or a log line holding `<script>`
shows as text. Images are embedded as data URIs: the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import json
from importlib.resources import files
from pathlib import Path

import jinja2

from avatardoctor import __version__
from avatardoctor.errors import InputError
from avatardoctor.reports import plots
from avatardoctor.reports.runfolder import RunFolder, read_run_folder
from avatardoctor.reports.summary import SCHEMA, build_summary
from avatardoctor.reports.timeline import Timeline

OUTCOME_CLASS = {"success": "ok", None: "unknown"}


def _environment() -> jinja2.Environment:
    templates = files("avatardoctor.reports")
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (templates / name).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(fmt=lambda v: "-" if v is None else f"{v:.2f}", version=__version__)
    return env


def prepare_output(out: Path, force: bool) -> None:
    """An output folder that is new, empty, or an earlier report of ours: never the user's files."""
    if out.exists() and any(out.iterdir()):
        ours = out / "summary.json"
        try:
            is_ours = json.loads(ours.read_text()).get("schema") == SCHEMA
        except (OSError, ValueError, AttributeError):
            is_ours = False
        if not is_ours and not force:
            raise InputError(f"-o {out}: the folder holds files that are not an avatardoctor report; choose another or pass --force")
        for old in out.glob("*.png"):
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _oom_point(summary: dict, gpu: str) -> tuple[float, str] | None:
    failure = summary.get("failure") or {}
    if str(failure.get("gpu")) != gpu or failure.get("at_elapsed_s") is None:
        return None
    tried = failure.get("tried_to_allocate_mib")
    label = f"OOM: tried to allocate {tried / 1024:.2f} GiB" if isinstance(tried, (int, float)) else "OOM"
    return float(failure["at_elapsed_s"]), label


def _timeline_images(timeline: Timeline, run: RunFolder | None, summary: dict, out: Path) -> list[dict]:
    images = []
    predicted = run.predicted if run else {}
    phases = run.phases if run else None
    for row in summary["gpus"]:
        gpu = row["gpu"]
        name = f"timeline-gpu{gpu}.png"
        limit = row["usable_gib"] if row["usable_gib"] is not None else row["total_gib"]
        device = "CPU (the job's processes, RSS)" if gpu == "cpu" else f"GPU {gpu}" + (f" · {row['name']}" if row["name"] else "")
        title = f"{device} · measured peak {row['measured_peak_gib']:.2f} GiB"
        samples = timeline.samples[timeline.samples["gpu"] == gpu]
        plots.timeline_png(
            out / name, title, samples, phases if phases is not None else plots.pd.DataFrame(columns=["phase", "start_s", "end_s"]),
            limit_gib=limit, predicted_gib=(predicted.get(gpu) or {}).get("peak_gib"), oom=_oom_point(summary, gpu),
            ylabel="host memory used (GiB)" if gpu == "cpu" else "GPU memory used (GiB)",
        )  # fmt: skip
        images.append({"label": f"GPU {gpu}", "file": name, "data": _png_b64(out / name)})
    return images


def _markdown(summary: dict, images: list[dict], title: str) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"## {title}", "", f"Outcome: **{summary['outcome'] or 'unknown'}**"]
    failure = summary.get("failure")
    if failure:
        lines += ["", f"**{failure.get('class', 'failure')}**" + (f" on GPU {failure['gpu']}" if failure.get("gpu") is not None else "")
                  + (f" during {failure['phase']}" if failure.get("phase") else "") + (f": {failure['message']}" if failure.get("message") else "")]  # fmt: skip
        if failure.get("remedy"):
            lines.append(f"Remedy: `{failure['remedy']}`")
    lines += ["", "| GPU | predicted peak (GiB) | measured peak (GiB) | measured - predicted (GiB) | usable (GiB) | headroom (GiB) | phase of the peak |",
              "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for g in summary["gpus"]:
        lines.append(f"| {g['gpu']} | {fmt(g['predicted_peak_gib'])} | {fmt(g['measured_peak_gib'])} | {fmt(g['delta_gib'])} | "
                     f"{fmt(g['usable_gib'])} | {fmt(g['headroom_gib'])} | {g['peak_phase'] or '-'} |")  # fmt: skip
    if summary["config"]:
        lines += ["", "Configuration: " + ", ".join(f"`{k}={v}`" for k, v in summary["config"].items())]
    lines += [""] + [f"![{img['label']}]({img['file']})" for img in images]
    if summary["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _write(out: Path, summary: dict, images: list[dict], title: str) -> Path:
    html = _environment().get_template("report.html.j2").render(
        s=summary, images=images, title=title, outcome_class=OUTCOME_CLASS.get(summary["outcome"], "bad")
    )
    (out / "index.html").write_text(html, encoding="utf-8")
    (out / "report.md").write_text(_markdown(summary, images, title), encoding="utf-8")
    summary = {**summary, "images": [img["file"] for img in images]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return out / "index.html"


def load(source: Path, fields: list[str] | None = None) -> tuple[Timeline, RunFolder | None, str]:
    """A run folder or a plain nvidia-smi CSV log."""
    if source.is_dir():
        run = read_run_folder(source)
        return run.timeline, run, "run"
    if source.is_file():
        from avatardoctor.reports.nvsmi import read_nvidia_smi_csv

        return read_nvidia_smi_csv(source, fields=fields), None, "nvidia-smi"
    raise InputError(f"{source}: neither a run folder nor a CSV file")


def render_report(source: Path, out: Path | None = None, force: bool = False, fields: list[str] | None = None) -> Path:
    timeline, run, kind = load(source, fields)
    out = out or (source / "report" if kind == "run" else source.with_name(f"{source.stem}-report"))
    prepare_output(out, force)
    summary = build_summary(source, kind, timeline, run)
    images = _timeline_images(timeline, run, summary, out)
    title = f"Live Avatar run {source.name}" if kind == "run" else f"GPU memory log {source.name}"
    return _write(out, summary, images, title)


def render_compare(a: Path, b: Path, out: Path, force: bool = False) -> Path:
    """Peaks side by side and the timelines overlaid, GPU by GPU."""
    (ta, ra, ka), (tb, rb, kb) = load(a), load(b)
    prepare_output(out, force)
    sa, sb = build_summary(a, ka, ta, ra), build_summary(b, kb, tb, rb)
    by_gpu_a, by_gpu_b = {g["gpu"]: g for g in sa["gpus"]}, {g["gpu"]: g for g in sb["gpus"]}
    empty = {"measured_peak_gib": None, "predicted_peak_gib": None, "peak_phase": None}
    rows, images = [], []
    for gpu in sorted(by_gpu_a.keys() | by_gpu_b.keys(), key=lambda g: (not g.isdigit(), g.zfill(4))):
        ga, gb = by_gpu_a.get(gpu, empty), by_gpu_b.get(gpu, empty)
        diff = gb["measured_peak_gib"] - ga["measured_peak_gib"] if None not in (ga["measured_peak_gib"], gb["measured_peak_gib"]) else None
        rows.append({"gpu": gpu, "a": ga, "b": gb, "diff": None if diff is None else round(diff, 2)})
        name = f"compare-gpu{gpu}.png"
        runs = [(f"A: {a.name}", ta.samples[ta.samples["gpu"] == gpu]), (f"B: {b.name}", tb.samples[tb.samples["gpu"] == gpu])]
        plots.overlay_png(out / name, f"GPU {gpu}: A vs B", runs)
        images.append({"label": f"GPU {gpu}", "file": name, "data": _png_b64(out / name)})
    notes = [f"A: {n}" for n in sa["notes"]] + [f"B: {n}" for n in sb["notes"]]
    title = f"{a.name} vs {b.name}"
    html = _environment().get_template("compare.html.j2").render(a=sa, b=sb, rows=rows, images=images, title=title, notes=notes)
    (out / "index.html").write_text(html, encoding="utf-8")
    summary = {"schema": SCHEMA, "compare": [sa, sb], "rows": [{"gpu": r["gpu"], "diff_gib": r["diff"]} for r in rows],
               "images": [i["file"] for i in images], "notes": notes}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    md = [f"## {title}", "", "| GPU | A measured (GiB) | B measured (GiB) | B - A (GiB) |", "|---|---:|---:|---:|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    md += [f"| {r['gpu']} | {fmt(r['a']['measured_peak_gib'])} | {fmt(r['b']['measured_peak_gib'])} | {fmt(r['diff'])} |" for r in rows]
    (out / "report.md").write_text("\n".join(md + [""] + [f"![{i['label']}]({i['file']})" for i in images]) + "\n", encoding="utf-8")
    return out / "index.html"
