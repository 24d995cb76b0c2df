"""Memory timelines as PNG (matplotlib, no display needed). Long runs are reduced to min/max per
time bucket before drawing, so every peak survives: never plain averaging.

What a reader takes in at a glance: the y-axis fits the data (a small trace is not a flat line under a
far-away limit; a limit off the scale is an arrow and its value), phases are coloured bands named in a
legend below the axes (never labels over the data, which collide), time reads as m:ss, and the
overview puts every GPU on one chart: which card reaches the top first."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

BUCKETS = 1500  # points per line: finer than the figure's pixels
MIB_PER_GIB = 1024
PHASE_COLOURS = ("#dbeafe", "#fef3c7", "#dcfce7", "#fce7f3", "#ede9fe", "#e0f2fe", "#ffedd5", "#f1f5f9")
GPU_COLOURS = (
    "#1d4ed8",
    "#ea580c",
    "#16a34a",
    "#9333ea",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
)  # no red: the limit's
HEADROOM = 1.15  # the y-axis runs this far above the highest value drawn
LIMIT_IN_VIEW = 1.6  # a usable limit up to this far above the data is drawn on the axes; further, as an arrow
_CLIP = re.compile(r"^clip \d+ ")  # "clip 3 denoise": one legend entry, one colour, for every clip's denoise


def min_max_buckets(samples: pd.DataFrame, buckets: int = BUCKETS) -> pd.DataFrame:
    """(elapsed_s, lo, hi) per time bucket: the lowest and highest used MiB in each."""
    if len(samples) <= 2 * buckets:
        return pd.DataFrame({"elapsed_s": samples["elapsed_s"], "lo": samples["used_mib"], "hi": samples["used_mib"]})
    t = samples["elapsed_s"].to_numpy()
    span = max(t[-1] - t[0], 1e-9)
    bucket = np.minimum(((t - t[0]) / span * buckets).astype(np.int64), buckets - 1)
    grouped = samples.assign(bucket=bucket).groupby("bucket")
    return pd.DataFrame(
        {"elapsed_s": grouped["elapsed_s"].mean(), "lo": grouped["used_mib"].min(), "hi": grouped["used_mib"].max()}
    )


def plain(text: str) -> str:
    """Text from a file (a GPU name, a phase, a folder name) as matplotlib draws it literally: "$...$" is not math."""
    return str(text).replace("$", r"\$")


def clock(seconds: float, _position=None) -> str:
    """Seconds since the start as a person reads a duration: 0:45, 12:05, 1:02:05."""
    whole = int(round(seconds))
    sign, whole = ("-", -whole) if whole < 0 else ("", whole)
    hours, rest = divmod(whole, 3600)
    return f"{sign}{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{sign}{rest // 60}:{rest % 60:02d}"


def phase_kind(phase: str) -> str:
    return _CLIP.sub("", str(phase))


def _axes(title: str, ylabel: str = "GPU memory used (GiB)", height: float = 4.2):
    fig, ax = plt.subplots(figsize=(10, height), dpi=100)
    ax.set_title(plain(title), loc="left", fontsize=11)
    ax.set_xlabel("time since start (m:ss)")
    ax.xaxis.set_major_formatter(FuncFormatter(clock))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=10, steps=[1, 2, 3, 5, 6, 10]))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _legend_below(ax, handles: list, ncol: int) -> None:
    """Below the axes, outside the data: nothing drawn on the plot can hide under it."""
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(0.0, -0.2),
        ncol=ncol,
        fontsize=8,
        frameon=False,
        handlelength=1.8,
        columnspacing=1.4,
    )


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _fit_y(ax, top_gib: float, limit_gib: float | None) -> bool:
    """The y-axis from 0 to just above the data; the usable limit on it when near, else False (off the scale)."""
    top = max(top_gib, 1e-3) * HEADROOM
    if limit_gib is not None and limit_gib <= top_gib * LIMIT_IN_VIEW:
        ax.set_ylim(0, max(top, limit_gib * 1.05))
        return True
    ax.set_ylim(0, top)
    return False


def _limit_off_scale(ax, limit_gib: float) -> None:
    ax.annotate(
        f"usable {limit_gib:.2f} GiB ↑ (off the scale)",
        xy=(1.0, 1.0),
        xycoords="axes fraction",
        xytext=(-6, -6),
        textcoords="offset points",
        ha="right",
        va="top",
        color="#dc2626",
        fontsize=8,
        arrowprops={"arrowstyle": "-|>", "color": "#dc2626", "shrinkA": 0, "shrinkB": 0},
    )


def timeline_figure(
    title: str,
    samples: pd.DataFrame,
    phases: pd.DataFrame,
    limit_gib: float | None = None,
    predicted_gib: float | None = None,
    oom: tuple[float, str] | None = None,
    ylabel: str = "GPU memory used (GiB)",
) -> Figure:
    """One GPU: used memory, its usable limit, the predicted peak, phase bands, the measured peak
    annotated, and the OOM point with the allocation that failed."""
    fig, ax = _axes(title, ylabel)
    colours: dict[str, str] = {}
    for row in phases.itertuples(index=False):
        kind = phase_kind(row.phase)
        colour = colours.setdefault(kind, PHASE_COLOURS[len(colours) % len(PHASE_COLOURS)])
        ax.axvspan(row.start_s, row.end_s, color=colour, alpha=0.7, lw=0)
    reduced = min_max_buckets(samples)
    hi = reduced["hi"] / MIB_PER_GIB
    ax.fill_between(reduced["elapsed_s"], reduced["lo"] / MIB_PER_GIB, hi, color="#2563eb", alpha=0.25, lw=0)
    handles: list = ax.plot(reduced["elapsed_s"], hi, color="#1d4ed8", lw=1.2, label="used (max per bucket)")
    top = max([v for v in (hi.max() if len(hi) else None, predicted_gib) if v is not None and np.isfinite(v)] or [1.0])
    limit_shown = _fit_y(ax, top, limit_gib)
    if limit_gib is not None and limit_shown:
        handles.append(ax.axhline(limit_gib, color="#dc2626", lw=1.2, label=f"usable {limit_gib:.2f} GiB"))
    elif limit_gib is not None:
        _limit_off_scale(ax, limit_gib)
    if predicted_gib is not None:
        handles.append(
            ax.axhline(predicted_gib, color="#7c3aed", lw=1.2, ls="--", label=f"predicted peak {predicted_gib:.2f} GiB")
        )
    if samples["used_mib"].notna().any():  # a GPU whose values were all [N/A] has no peak to mark
        peak = samples.loc[samples["used_mib"].idxmax()]
        x0, x1 = ax.get_xlim()
        right_half = (peak.elapsed_s - x0) / max(x1 - x0, 1e-9) > 0.5
        ax.annotate(  # on the side away from the right edge, where the OOM label and the off-scale arrow go
            f"peak {peak.used_mib / MIB_PER_GIB:.2f} GiB at {clock(peak.elapsed_s)}",
            (peak.elapsed_s, peak.used_mib / MIB_PER_GIB),
            xytext=(-10 if right_half else 10, -14),
            textcoords="offset points",
            ha="right" if right_half else "left",
            va="top",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.85},
        )
        ax.plot([peak.elapsed_s], [peak.used_mib / MIB_PER_GIB], "o", color="#1d4ed8", ms=4)
    if oom is not None:
        at, label = oom
        handles.append(ax.axvline(at, color="#b91c1c", lw=1.5, ls=":", label=plain(f"{label} at {clock(at)}")))
    handles += [Patch(color=c, alpha=0.7, label=plain(k)) for k, c in colours.items()]
    _legend_below(ax, handles, ncol=4)
    return fig


def timeline_png(path: Path, title: str, samples: pd.DataFrame, phases: pd.DataFrame, **kwargs) -> None:
    _save(timeline_figure(title, samples, phases, **kwargs), path)


def overview_figure(
    title: str, series: list[tuple[str, pd.DataFrame]], limits_gib: list[float | None], ylabel: str
) -> Figure:
    """Every GPU on one chart, each with its peak marked: which card reaches the top first. The usable limit
    is drawn when every GPU shares it (one line), else each GPU's value is in the table."""
    fig, ax = _axes(title, ylabel)
    handles, top = [], 0.0
    for (label, samples), colour in zip(series, itertools.cycle(GPU_COLOURS)):
        reduced = min_max_buckets(samples)
        hi = reduced["hi"] / MIB_PER_GIB
        if not hi.notna().any():
            continue
        at = reduced["elapsed_s"].iloc[int(np.nanargmax(hi.to_numpy()))]
        peak = float(hi.max())
        top = max(top, peak)
        (line,) = ax.plot(
            reduced["elapsed_s"], hi, color=colour, lw=1.1, label=plain(f"{label}: peak {peak:.2f} GiB at {clock(at)}")
        )
        ax.plot([at], [peak], "o", color=colour, ms=5)
        handles.append(line)
    known = {round(v, 2) for v in limits_gib if v is not None}
    limit = known.pop() if len(known) == 1 else None
    if _fit_y(ax, top or 1.0, limit) and limit is not None:
        handles.append(ax.axhline(limit, color="#dc2626", lw=1.2, label=f"usable {limit:.2f} GiB"))
    elif limit is not None:
        _limit_off_scale(ax, limit)
    _legend_below(ax, handles, ncol=2 if len(handles) > 4 else len(handles) or 1)
    return fig


def overview_png(path: Path, title: str, series, limits_gib, ylabel: str = "GPU memory used (GiB)") -> None:
    _save(overview_figure(title, series, limits_gib, ylabel), path)


def overlay_png(path: Path, title: str, runs: list[tuple[str, pd.DataFrame]]) -> None:
    """One GPU across runs: each run's used memory on the same axes."""
    fig, ax = _axes(title)
    handles, top = [], 0.0
    for (label, samples), colour in zip(runs, ("#1d4ed8", "#ea580c", "#16a34a")):
        reduced = min_max_buckets(samples)
        hi = reduced["hi"] / MIB_PER_GIB
        top = max(top, float(hi.max()) if hi.notna().any() else 0.0)
        handles += ax.plot(reduced["elapsed_s"], hi, color=colour, lw=1.2, label=plain(label))
    _fit_y(ax, top or 1.0, None)
    _legend_below(ax, handles, ncol=len(handles) or 1)
    _save(fig, path)


def speed_figure(clip_s: list[float], rank_clip_s: dict[int, list[float]] | None = None) -> Figure:
    """Seconds per clip: the pipeline's as bars, each rank's as dots (joined by a line from clip 2). Clip 1
    (compile and warm-up) has axes of its own, so its minutes do not flatten the steady state's seconds."""
    ranks = sorted((rank_clip_s or {}).items())
    steady = len(clip_s) > 1 or any(len(seconds) > 1 for _, seconds in ranks)
    fig, axes = plt.subplots(
        1, 2 if steady else 1, figsize=(10, 3.0), dpi=100, squeeze=False, width_ratios=[1, 5] if steady else None
    )
    warm = axes[0][0]
    spread = 0.6 / max(len(ranks), 1)  # each rank's dots side by side across the clip's bar
    offsets = [(i - (len(ranks) - 1) / 2) * spread for i in range(len(ranks))]
    colours = [GPU_COLOURS[i % len(GPU_COLOURS)] for i in range(len(ranks))]
    warm.set_title("clip 1: warm-up", loc="left", fontsize=10)
    handles = [warm.bar([1], clip_s[:1], color="#fdba74", width=0.8, label="pipeline, warm-up")]
    for (rank, seconds), dx, colour in zip(ranks, offsets, colours):
        dots = warm.plot([1 + dx], seconds[:1], "o", color=colour, ms=5, label=f"rank {rank}")
        handles += [] if steady else dots
    warm.set_xticks([1])
    _speed_axis(warm, clip_s[:1] + [seconds[0] for _, seconds in ranks if seconds], "denoising time (s)")
    if steady:
        rest = axes[0][1]
        rest.set_title("clips 2 to N: steady state", loc="left", fontsize=10)
        handles += [rest.bar(np.arange(2, len(clip_s) + 1), clip_s[1:], color="#93c5fd", width=0.8, label="pipeline")]
        for (rank, seconds), dx, colour in zip(ranks, offsets, colours):
            handles += rest.plot(
                np.arange(2, len(seconds) + 1) + dx, seconds[1:], "o-", color=colour, ms=3, lw=1, label=f"rank {rank}"
            )
        if len(clip_s) > 1:
            median = float(np.median(clip_s[1:]))
            handles += [
                rest.axhline(median, color="#1d4ed8", ls="--", lw=1, label=f"steady state: {median:.2f} s/clip")
            ]
        ticks = np.arange(2, max([len(clip_s), *(len(seconds) for _, seconds in ranks)]) + 1)
        rest.set_xticks(ticks if len(ticks) <= 30 else ticks[:: max(1, len(ticks) // 30)])
        _speed_axis(rest, clip_s[1:] + [v for _, seconds in ranks for v in seconds[1:]], "seconds per clip (s)")
    _legend_below(axes[0][-1], handles, ncol=min(len(handles), 5))  # under the widest axes: no gap between them
    return fig


def _speed_axis(ax, seconds: list[float], ylabel: str) -> None:
    ax.set_xlabel("clip")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(seconds, default=1.0) * HEADROOM or 1.0)
    ax.grid(True, axis="y", alpha=0.3)


def speed_png(path: Path, clip_s: list[float], rank_clip_s: dict[int, list[float]] | None = None) -> None:
    """speed_figure, saved."""
    _save(speed_figure(clip_s, rank_clip_s), path)


def peaks_png(
    path: Path, title: str, gpus: list[str], series: list[tuple[float | None, ...]], labels: list[str]
) -> None:
    """Many GPUs at once: each one's measured peak (one marker series per run), GPU by GPU."""
    fig, ax = _axes(title)
    x = np.arange(len(gpus))
    handles = []
    for values, label, colour in zip(series, labels, ("#1d4ed8", "#ea580c")):
        handles += ax.plot(x, [np.nan if v is None else v for v in values], ".", color=colour, ms=4, label=plain(label))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel(plain(f"GPU ({len(gpus)}, from {gpus[0]} to {gpus[-1]})"))
    ax.set_ylabel("measured peak (GiB)")
    ax.set_ylim(bottom=0)
    _legend_below(ax, handles, ncol=len(handles) or 1)
    _save(fig, path)


def overlapping_labels(fig: Figure) -> list[tuple[str, str]]:
    """Pairs of visible texts whose boxes overlap once drawn (a legend's entries counted as the legend's),
    for the tests and for anyone changing a layout."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = []
    for ax in fig.axes:
        legend = ax.get_legend()
        texts = [t for t in ax.findobj(Text) if t.get_visible() and t.get_text().strip()]
        inside = set(legend.get_texts()) if legend else set()
        boxes += [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t not in inside]
        if legend:
            boxes.append(("legend", legend.get_window_extent(renderer)))
    pairs = []
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        if box_a.width and box_b.width and box_a.overlaps(box_b):
            pairs.append((a, b))
    return pairs
