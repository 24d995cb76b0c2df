"""Writing a report: report/index.html (self-contained), report.md, summary.json and the PNGs.

HTML comes from Jinja2 templates with autoescaping on, so a prompt or a log line holding `<script>`
shows as text. Images are embedded as data URIs: the page needs no network and no other file.
"""

from __future__ import annotations

import base64
import json
import os
from contextlib import contextmanager
from datetime import datetime, timedelta
from importlib.resources import files
from pathlib import Path

import jinja2
import pandas as pd

from avatardoctor import __version__
from avatardoctor.errors import InputError
from avatardoctor.files import UnreadableFile, read_regular
from avatardoctor.reports import plots
from avatardoctor.reports.runfolder import RunRecord, read_run_folder
from avatardoctor.reports.summary import COMPARE_SCHEMA, SCHEMA, build_summary
from avatardoctor.reports.timeline import GPU_ID, Timeline

OUTCOME_CLASS = {"success": "ok", None: "unknown"}
SUMMARY_LIMIT = 64 * 2**20  # an earlier summary.json: what tells our folder from the user's
MAX_TIMELINES = 16  # each is ~50 KB inline; past this many, the page draws the top ones and an overview


def _environment() -> jinja2.Environment:
    templates = files("avatardoctor.reports")
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (templates / name).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(fmt=lambda v: "-" if v is None else f"{v:.2f}", version=__version__)
    env.filters["when"] = human_time
    env.filters["clock"] = plots.clock
    return env


def human_time(iso: str | None) -> str:
    """An ISO timestamp from summary.json as a person reads it: 2026-11-20 09:00:00 UTC."""
    if not iso:
        return "-"
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    zone = "UTC" if when.utcoffset() == timedelta(0) else when.strftime("%z")
    return f"{when:%Y-%m-%d %H:%M:%S} {zone}".rstrip()


def prepare_output(out: Path, force: bool, flag: str) -> None:
    """An output folder that is new, empty, or an earlier report of ours: never the user's files, and
    never reached through a link (a run folder's `report` link would have us write, and delete, elsewhere)."""
    if out.is_symlink():
        raise InputError(f"{flag} {out}: is a symbolic link; give the folder it points to, or another")
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {out}: is a file, not a folder; choose another")
    try:
        if out.exists() and any(out.iterdir()):
            try:
                is_ours = json.loads(read_regular(out / "summary.json", SUMMARY_LIMIT, within=out)).get("schema") in (
                    SCHEMA,
                    COMPARE_SCHEMA,
                )
            except (UnreadableFile, ValueError, AttributeError, RecursionError):
                is_ours = False
            if not is_ours and not force:
                raise InputError(
                    f"{flag} {out}: the folder holds files that are not an avatardoctor report; choose another or pass --force"
                )
            for old in out.glob("*.png"):
                old.unlink()  # a link is removed, never what it points to
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot write there ({e.strerror or e}); choose another folder") from None


def _write_file(path: Path, data: str | bytes) -> None:
    """Written beside, then renamed over: a link at path is replaced, never written through."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a link planted there is removed; O_EXCL | O_NOFOLLOW: nothing is written through one
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def image_name(prefix: str, gpu: str, position: int) -> str:
    """The PNG's file name: the GPU's id when it is one (0-9999, cpu), else its position; never a path."""
    return f"{prefix}-gpu{gpu}.png" if GPU_ID.fullmatch(gpu) else f"{prefix}-{position}.png"


def drawn_gpus(peaks: dict[str, float | None], first: str | None = None) -> list[str]:
    """The GPUs that get a timeline, in their order: all of them, or (past MAX_TIMELINES, which would make a
    page of many MB) the failed GPU and the highest measured peaks."""
    if len(peaks) <= MAX_TIMELINES:
        return list(peaks)
    ranked = sorted(peaks, key=lambda g: (g != first, -(p if (p := peaks[g]) is not None else -1.0)))
    chosen = set(ranked[:MAX_TIMELINES])
    return [g for g in peaks if g in chosen]


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _oom_point(summary: dict, gpu: str) -> tuple[float, str] | None:
    failure = summary.get("failure") or {}
    if str(failure.get("gpu")) != gpu or failure.get("at_elapsed_s") is None:
        return None
    tried = failure.get("tried_to_allocate_mib")
    label = f"OOM: tried to allocate {tried / 1024:.2f} GiB" if isinstance(tried, (int, float)) else "OOM"
    return float(failure["at_elapsed_s"]), label


def _image(out: Path, name: str, label: str, draw) -> dict:
    (out / name).unlink(missing_ok=True)  # a link there is removed, not drawn through
    draw(out / name)
    return {"label": label, "file": name, "data": _png_b64(out / name)}


def _overview(
    out: Path, prefix: str, peaks: dict[str, list[float | None]], legend: list[str], drawn: list[str], notes: list[str]
) -> list[dict]:
    """Past MAX_TIMELINES GPUs: one figure of every GPU's peak, and a note on which timelines are drawn."""
    if len(drawn) == len(peaks):
        return []
    notes.append(
        f"{len(peaks)} GPUs: timelines drawn for {len(drawn)} (the failed GPU and the highest measured peaks); "
        "every GPU's peak is in the table and the overview figure"
    )
    return [
        _image(
            out,
            f"{prefix}-overview.png",
            "every GPU's measured peak",
            lambda path: plots.peaks_png(
                path, "measured peak per GPU", list(peaks), list(zip(*peaks.values())), legend
            ),
        )
    ]


def device_name(gpu: str, name: str | None = None) -> str:
    """How a device reads in a title: a GPU, the job's processes on the CPU, or one rank's (the demo's)."""
    if gpu == "cpu":
        return "CPU (the job's processes, RSS)"
    if gpu.startswith("cpu"):
        return f"rank {gpu[3:]} on the CPU (its processes' RSS)"
    return f"GPU {gpu}" + (f" · {name}" if name else "")


def _timeline_images(timeline: Timeline, run: RunRecord | None, summary: dict, out: Path) -> list[dict]:
    predicted = run.predicted if run else {}
    phases = run.phases if run else pd.DataFrame(columns=["phase", "start_s", "end_s"])
    rows = {row["gpu"]: row for row in summary["gpus"]}
    failed = (summary.get("failure") or {}).get("gpu")
    drawn = drawn_gpus({g: r["measured_peak_gib"] for g, r in rows.items()}, failed)
    images = _overview(
        out, "timeline", {g: [r["measured_peak_gib"]] for g, r in rows.items()}, ["measured"], drawn, summary["notes"]
    )
    by_gpu = timeline.by_gpu()
    limits = {g: r["usable_gib"] if r["usable_gib"] is not None else r["total_gib"] for g, r in rows.items()}
    ylabel = "memory used (GiB)" if any(g.startswith("cpu") for g in drawn) else "GPU memory used (GiB)"
    if 1 < len(drawn) == len(rows):  # past MAX_TIMELINES, the peaks' overview shows every GPU instead
        images.append(
            _image(
                out,
                "timeline-all.png",
                "every GPU",
                lambda path: plots.overview_png(
                    path,
                    "every device on one chart: which reaches the top first",
                    [(device_name(g).split(" (")[0], by_gpu[g]) for g in drawn],
                    [limits[g] for g in drawn],
                    ylabel,
                ),
            )
        )
    for position, gpu in enumerate(drawn):
        row = rows[gpu]
        peak = (
            "no memory values (all [N/A])"
            if row["measured_peak_gib"] is None
            else f"measured peak {row['measured_peak_gib']:.2f} GiB"
        )
        images.append(
            _image(
                out,
                image_name("timeline", gpu, position),
                f"GPU {gpu}",
                lambda path: plots.timeline_png(
                    path,
                    f"{device_name(gpu, row['name'])} · {peak}",
                    by_gpu[gpu],
                    phases,
                    limit_gib=limits[gpu],
                    predicted_gib=predicted[gpu].peak_gib if gpu in predicted else None,
                    oom=_oom_point(summary, gpu),
                    ylabel="host memory used (GiB)" if gpu.startswith("cpu") else "GPU memory used (GiB)",
                ),
            )
        )
    return images


def _speed_image(summary: dict, out: Path) -> dict | None:
    speed = summary.get("speed")
    if not speed:
        return None
    ranks = {r["rank"]: r["clip_s"] for r in speed.get("per_rank") or []}
    return _image(out, "speed.png", "seconds per clip", lambda path: plots.speed_png(path, speed["clip_s"], ranks))


def _speed_lines(speed: dict | None) -> list[str]:
    """The speed in words: load, warm-up, steady state, and the published figure with its source."""
    if not speed:
        return []
    lines = [f"Load {speed['load_s']:.1f} s, first clip {speed['first_clip_s']:.1f} s (compile and warm-up)"]
    if speed["fps"] is not None:
        lines.append(
            f"Steady state ({speed['steady_clips']} clips): {speed['steady_s_per_clip']:.2f} s per clip of "
            f"{speed['frames_per_clip']} frames = {speed['fps']:.2f} FPS, {speed['realtime_factor']:.2f}x real time "
            f"(the video plays at {speed['video_fps']} FPS)"
        )
    else:
        lines.append("Steady state: needs a second clip")
    lines += [f"Published for this class of box: {p['fps']:g} FPS ({p['source']})" for p in speed["published"]]
    if speed.get("per_rank_note"):
        lines.append(f"Per rank: {speed['per_rank_note']}")
    return lines


RANK_SPEED_HEADER = ["rank", "load (s)", "first clip (s)", "steady (s per clip)", "FPS", "steady clips"]


def _rank_speed_rows(speed: dict | None) -> list[list[str]]:
    """Each rank's speed as table cells (summary.json's speed.per_rank)."""
    fmt = lambda v, digits: "-" if v is None else f"{v:.{digits}f}"  # noqa: E731
    return [
        [
            str(r["rank"]),
            fmt(r["load_s"], 1),
            fmt(r["first_clip_s"], 1),
            fmt(r["steady_s_per_clip"], 2),
            fmt(r["fps"], 2),
            str(r["steady_clips"]),
        ]
        for r in (speed or {}).get("per_rank") or []
    ]


MAX_REQUEST_ROWS = 40  # the report's table; summary.json has every request


def _growth_lines(summary: dict) -> tuple[list[str], list[str]]:
    """The memory trend across requests in words: (warnings, other lines). A warning says how many more
    requests reach the limit; upstream's own remedy for OOM after several Gradio runs is a smaller --size."""
    growth = summary.get("memory_growth")
    if not growth:
        return [], []
    warnings, lines = [], []
    for g in growth["gpus"]:
        trend = f"GPU {g['gpu']}: peaks grow {g['gib_per_request']:+.2f} GiB per request over {g['requests_fitted']}"
        if g["requests_to_limit"] is None:
            limit = "" if g["limit_gib"] is not None else " (no limit known)"
            lines.append(f"{trend} requests{limit}")
            continue
        reach = f"its {g['limit']} {g['limit_gib']:.2f} GiB in {g['requests_to_limit']} more request(s)"
        if g["warn"]:
            warnings.append(
                f"{trend} requests: at this rate it reaches {reach}; restart the app before then, or serve a "
                "smaller --size (upstream's README: OOM after multiple runs in the Gradio Web UI)"
            )
        else:
            lines.append(f"{trend} requests: {reach} at this rate")
    return warnings, lines


def _request_table(summary: dict) -> tuple[list[str], list[list[str]], int]:
    """The per-request peaks as (GPU columns, rows of cells), the last MAX_REQUEST_ROWS requests, and how many
    earlier ones are left out."""
    requests = summary.get("requests") or []
    gpus = [g["gpu"] for g in summary["gpus"]]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = [
        [str(r["request"]), r["outcome"], *(fmt(r["peak_gib"].get(gpu)) for gpu in gpus)]
        for r in requests[-MAX_REQUEST_ROWS:]
    ]
    return gpus, rows, max(0, len(requests) - MAX_REQUEST_ROWS)


def _markdown(summary: dict, images: list[dict], title: str) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"## {title}", "", f"Outcome: **{summary['outcome'] or 'unknown'}**"]
    failure = summary.get("failure")
    if failure:
        lines += [
            "",
            f"**{failure.get('class', 'failure')}**"
            + (f" on GPU {failure['gpu']}" if failure.get("gpu") is not None else "")
            + (f" during {failure['phase']}" if failure.get("phase") else "")
            + (f": {failure['message']}" if failure.get("message") else ""),
        ]
        if failure.get("remedy"):
            lines.append(f"Remedy: `{failure['remedy']}`")
    lines += [
        "",
        "| GPU | predicted peak (GiB) | measured peak (GiB) | measured - predicted (GiB) | usable (GiB) | headroom (GiB) | phase of the peak |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for g in summary["gpus"]:
        lines.append(
            f"| {g['gpu']} | {fmt(g['predicted_peak_gib'])} | {fmt(g['measured_peak_gib'])} | {fmt(g['delta_gib'])} | "
            f"{fmt(g['usable_gib'])} | {fmt(g['headroom_gib'])}{' at the failure' if g['headroom_at'] == 'failure' else ''} | "
            f"{g['peak_phase'] or '-'} |"
        )
    if speed_lines := _speed_lines(summary.get("speed")):
        lines += ["", "Speed:"] + [f"- {line}" for line in speed_lines]
    if rank_rows := _rank_speed_rows(summary.get("speed")):
        lines += ["", "| " + " | ".join(RANK_SPEED_HEADER) + " |", "|---|" + "---:|" * (len(RANK_SPEED_HEADER) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rank_rows]
    if len(summary.get("requests") or []) > 1:
        warnings, growth = _growth_lines(summary)
        gpus, rows, left_out = _request_table(summary)
        lines += ["", "Requests (peak per GPU, GiB):"] + [f"- **Warning:** {w}" for w in warnings]
        lines += [f"- {line}" for line in growth]
        lines += ["", "| request | outcome | " + " | ".join(f"GPU {g}" for g in gpus) + " |"]
        lines += ["|---|---|" + "---:|" * len(gpus)] + ["| " + " | ".join(row) + " |" for row in rows]
        if left_out:
            lines.append(f"\n{left_out} earlier request(s) in summary.json")
    if summary.get("health_events"):
        lines += ["", "GPU health:"] + [f"- {e['text']}" for e in summary["health_events"]]
    if summary["config"]:
        lines += ["", "Configuration: " + ", ".join(f"`{k}={v}`" for k, v in summary["config"].items())]
    lines += [""] + [f"![{img['label']}]({img['file']})" for img in images]
    if summary["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def _write(out: Path, summary: dict, images: list[dict], title: str) -> Path:
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            s=summary,
            images=[i for i in images if i["file"] != "speed.png"],
            speed_image=next((i for i in images if i["file"] == "speed.png"), None),
            speed_lines=_speed_lines(summary.get("speed")),
            rank_speed=(RANK_SPEED_HEADER, _rank_speed_rows(summary.get("speed"))),
            growth=_growth_lines(summary),
            request_table=_request_table(summary) if len(summary.get("requests") or []) > 1 else None,
            title=title,
            outcome_class=OUTCOME_CLASS.get(summary["outcome"], "bad"),
        )
    )
    _write_file(out / "index.html", html)
    _write_file(out / "report.md", _markdown(summary, images, title))
    summary = {**summary, "images": [img["file"] for img in images]}
    _write_file(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return out / "index.html"


def load(source: Path, fields: list[str] | None = None) -> tuple[Timeline, RunRecord | None, str]:
    """A run folder or a plain nvidia-smi CSV log."""
    if source.is_dir():
        run = read_run_folder(source)
        return run.timeline, run, "run"
    if source.is_file():
        from avatardoctor.reports.nvsmi import read_nvidia_smi_csv

        return read_nvidia_smi_csv(source, fields=fields), None, "nvidia-smi"
    raise InputError(f"{source}: neither a run folder nor a CSV file")


@contextmanager
def _writing(out: Path, flag: str):
    """A write that fails part way (disk full, a read-only folder) is one line naming the folder."""
    try:
        yield
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot write there ({e.strerror or e}); choose another folder") from None


def render_report(source: Path, out: Path | None = None, force: bool = False, fields: list[str] | None = None) -> Path:
    timeline, run, kind = load(source, fields)
    flag = "-o" if out else "report folder"
    out = out or (source / "report" if kind == "run" else source.with_name(f"{source.stem}-report"))
    prepare_output(out, force, flag)
    summary = build_summary(source, kind, timeline, run)
    title = f"Live Avatar run {source.name}" if kind == "run" else f"GPU memory log {source.name}"
    with _writing(out, flag):
        speed = [image] if (image := _speed_image(summary, out)) else []
        return _write(out, summary, _timeline_images(timeline, run, summary, out) + speed, title)


def render_compare(a: Path, b: Path, out: Path, force: bool = False) -> Path:
    """Peaks side by side and the timelines overlaid, GPU by GPU."""
    (ta, ra, ka), (tb, rb, kb) = load(a), load(b)
    prepare_output(out, force, "-o")
    sa, sb = build_summary(a, ka, ta, ra), build_summary(b, kb, tb, rb)
    by_gpu_a, by_gpu_b = {g["gpu"]: g for g in sa["gpus"]}, {g["gpu"]: g for g in sb["gpus"]}
    empty = {"measured_peak_gib": None, "predicted_peak_gib": None, "peak_phase": None}
    rows = []
    for gpu in sorted(by_gpu_a.keys() | by_gpu_b.keys(), key=lambda g: (not g.isdigit(), g.zfill(4))):
        ga, gb = by_gpu_a.get(gpu, empty), by_gpu_b.get(gpu, empty)
        diff = (
            gb["measured_peak_gib"] - ga["measured_peak_gib"]
            if None not in (ga["measured_peak_gib"], gb["measured_peak_gib"])
            else None
        )
        rows.append({"gpu": gpu, "a": ga, "b": gb, "diff": None if diff is None else round(diff, 2)})
    notes = [f"A: {n}" for n in sa["notes"]] + [f"B: {n}" for n in sb["notes"]]
    peaks = {r["gpu"]: [r["a"]["measured_peak_gib"], r["b"]["measured_peak_gib"]] for r in rows}
    drawn = drawn_gpus({g: max((p for p in v if p is not None), default=None) for g, v in peaks.items()})
    by_gpu = [ta.by_gpu(), tb.by_gpu()]
    no_samples = pd.DataFrame({"elapsed_s": [], "used_mib": []})
    with _writing(out, "-o"):
        images = _overview(out, "compare", peaks, [f"A: {a.name}", f"B: {b.name}"], drawn, notes)
        for position, gpu in enumerate(drawn):
            runs = [
                (f"{side}: {src.name}", frames.get(gpu, no_samples)) for side, src, frames in zip("AB", (a, b), by_gpu)
            ]
            images.append(
                _image(
                    out,
                    image_name("compare", gpu, position),
                    f"GPU {gpu}",
                    lambda path: plots.overlay_png(path, f"GPU {gpu}: A vs B", runs),
                )
            )
        title = f"{a.name} vs {b.name}"
        html = (
            _environment()
            .get_template("compare.html.j2")
            .render(a=sa, b=sb, rows=rows, images=images, title=title, notes=notes)
        )
        _write_file(out / "index.html", html)
        summary = {
            "schema": COMPARE_SCHEMA,
            "avatardoctor_version": __version__,
            "compare": [sa, sb],
            "rows": [{"gpu": r["gpu"], "diff_gib": r["diff"]} for r in rows],
            "images": [i["file"] for i in images],
            "notes": notes,
        }
        _write_file(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        md = [f"## {title}", "", "| GPU | A measured (GiB) | B measured (GiB) | B - A (GiB) |", "|---|---:|---:|---:|"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        md += [
            f"| {r['gpu']} | {fmt(r['a']['measured_peak_gib'])} | {fmt(r['b']['measured_peak_gib'])} | {fmt(r['diff'])} |"
            for r in rows
        ]
        _write_file(out / "report.md", "\n".join(md + [""] + [f"![{i['label']}]({i['file']})" for i in images]) + "\n")
    return out / "index.html"
