"""Memory timelines as PNG (matplotlib, no display needed). Long runs are reduced to min/max per
time bucket before drawing, so every peak survives: never plain averaging."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

BUCKETS = 1500  # points per line: finer than the figure's pixels
MIB_PER_GIB = 1024
PHASE_COLOURS = ("#dbeafe", "#fef3c7", "#dcfce7", "#fce7f3", "#ede9fe", "#e0f2fe")


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


def _axes(title: str, ylabel: str = "GPU memory used (GiB)"):
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    ax.set_title(plain(title), loc="left", fontsize=11, pad=22)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def timeline_png(
    path: Path,
    title: str,
    samples: pd.DataFrame,
    phases: pd.DataFrame,
    limit_gib: float | None = None,
    predicted_gib: float | None = None,
    oom: tuple[float, str] | None = None,
    ylabel: str = "GPU memory used (GiB)",
) -> None:
    """One GPU: used memory, its usable limit, the predicted peak, phase bands, the measured peak
    annotated, and the OOM point with the allocation that failed."""
    fig, ax = _axes(title, ylabel)
    span = max(float(samples["elapsed_s"].max() - samples["elapsed_s"].min()), 1e-9) if len(samples) else 1.0
    for i, row in enumerate(phases.itertuples(index=False)):
        ax.axvspan(row.start_s, row.end_s, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], alpha=0.7, lw=0)
        if (row.end_s - row.start_s) / span >= 0.03:  # narrower bands keep their colour, not a label
            ax.text(
                (row.start_s + row.end_s) / 2,
                1.01 + 0.06 * (i % 2),
                plain(row.phase),
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=7,
                clip_on=False,
            )
    reduced = min_max_buckets(samples)
    ax.fill_between(
        reduced["elapsed_s"],
        reduced["lo"] / MIB_PER_GIB,
        reduced["hi"] / MIB_PER_GIB,
        color="#2563eb",
        alpha=0.25,
        lw=0,
    )
    ax.plot(reduced["elapsed_s"], reduced["hi"] / MIB_PER_GIB, color="#1d4ed8", lw=1.2, label="used (max per bucket)")
    if limit_gib is not None:
        ax.axhline(limit_gib, color="#dc2626", lw=1.2, label=f"usable {limit_gib:.2f} GiB")
    if predicted_gib is not None:
        ax.axhline(predicted_gib, color="#7c3aed", lw=1.2, ls="--", label=f"predicted peak {predicted_gib:.2f} GiB")
    if samples["used_mib"].notna().any():  # a GPU whose values were all [N/A] has no peak to mark
        peak = samples.loc[samples["used_mib"].idxmax()]
        ax.annotate(
            f"peak {peak.used_mib / MIB_PER_GIB:.2f} GiB",
            (peak.elapsed_s, peak.used_mib / MIB_PER_GIB),
            xytext=(0, 8),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
        ax.plot([peak.elapsed_s], [peak.used_mib / MIB_PER_GIB], "o", color="#1d4ed8", ms=4)
    if oom is not None:
        at, label = oom
        ax.axvline(at, color="#b91c1c", lw=1.5, ls=":")
        ax.text(
            at,
            0.5,
            f" {label}",
            transform=ax.get_xaxis_transform(),
            color="#b91c1c",
            fontsize=8,
            rotation=90,
            va="center",
        )
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def overlay_png(path: Path, title: str, runs: list[tuple[str, pd.DataFrame]]) -> None:
    """One GPU across runs: each run's used memory on the same axes."""
    fig, ax = _axes(title)
    for (label, samples), colour in zip(runs, ("#1d4ed8", "#ea580c", "#16a34a")):
        reduced = min_max_buckets(samples)
        ax.plot(reduced["elapsed_s"], reduced["hi"] / MIB_PER_GIB, color=colour, lw=1.2, label=plain(label))
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def speed_png(path: Path, clip_s: list[float]) -> None:
    """Seconds per clip, the first (compile and warm-up) apart from the steady state."""
    fig, ax = _axes("seconds per clip: clip 1 is the warm-up", "denoising time (s)")
    ax.set_xlabel("clip")
    x = np.arange(1, len(clip_s) + 1)
    ax.bar(x, clip_s, color=["#ea580c"] + ["#1d4ed8"] * (len(clip_s) - 1))
    if len(clip_s) > 1:
        steady = float(np.median(clip_s[1:]))
        ax.axhline(steady, color="#1d4ed8", ls="--", lw=1, label=f"steady state: {steady:.2f} s per clip")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(x if len(x) <= 30 else x[:: max(1, len(x) // 30)])
    fig.set_size_inches(10, 2.6)
    _save(fig, path)


def peaks_png(
    path: Path, title: str, gpus: list[str], series: list[tuple[float | None, ...]], labels: list[str]
) -> None:
    """Many GPUs at once: each one's measured peak (one marker series per run), GPU by GPU."""
    fig, ax = _axes(title)
    x = np.arange(len(gpus))
    for values, label, colour in zip(series, labels, ("#1d4ed8", "#ea580c")):
        ax.plot(x, [np.nan if v is None else v for v in values], ".", color=colour, ms=4, label=plain(label))
    ax.set_xlabel(plain(f"GPU ({len(gpus)}, from {gpus[0]} to {gpus[-1]})"))
    ax.set_ylabel("measured peak (GiB)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
