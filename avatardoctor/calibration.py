"""Calibration: measured peaks from real runs teach the estimated terms of the memory model.

Each GPU of each run gives one Measurement: its measured peak and the predictor's exact terms at
that phase. The fit assumes, per measurement,

    measured - exact = context + nccl_per_peer * peers + activations * token_dims + decode * pixels

and solves it by least squares with non-negative coefficients. Measurements live in a local SQLite
history; `current_terms` is what the predictor uses. numpy is imported only when there is something
to fit, so `avatardoctor check` starts fast.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from rich import box
from rich.console import Console
from rich.table import Table

from avatardoctor import __version__
from avatardoctor.errors import InputError
from avatardoctor.estimates import DEFAULT_TERMS, EstimateTerms
from avatardoctor.files import UnreadableJson, read_json
from avatardoctor.predict import PHASES
from avatardoctor.units import GIB, MIB, gib

IMPORT_SCHEMA = "avatardoctor.measurements/1"
REPORT_SCHEMA = "avatardoctor.calibration/1"
IMPORT_FLAG = "--import"
HISTORY_FILE = "history.sqlite3"
HISTORY_VERSION = 2  # the file's PRAGMA user_version; version 1 lacked allocated_bytes and is upgraded on write
MAX_IMPORT_BYTES = 16 * MIB  # tens of thousands of measurements; stops a wrong file being read whole
MAX_VALUE = 2**50  # 1 PiB: no GPU holds more, and every such integer is exact as a float
MIN_MEASUREMENTS = 3
RESIDUAL_FLOOR_BYTES = 0.1 * GIB  # the context band never claims more precision than this
ROLES = ("dit", "vae", "single")


@dataclass(frozen=True)
class Measurement:
    """One GPU of one run: its measured peak and the predictor's view of that phase."""

    run_id: str  # e.g. the run folder name; recording a run again replaces its measurements
    gpu_name: str  # "NVIDIA H800"
    role: str  # one of ROLES
    phase: str  # the measured peak's phase, one of PHASES
    measured_bytes: int  # measured peak on that GPU
    exact_bytes: int  # the predictor's exact terms at that phase (weights, T5, VAE, KV caches...)
    processes: int  # processes in the run (nproc); each GPU holds one CUDA context either way
    nccl_peers: int  # nproc - 1 (0 in single-GPU mode)
    token_dims: float  # live tokens x model dim at that phase (0 when not denoising)
    decode_pixels: float  # output pixels of one decode chunk (0 when not decoding)
    recorded_at: str  # ISO 8601 UTC
    # PyTorch's own peak allocation on that GPU (the per-rank shim's), 0 when unknown. NVML's reading above
    # is what the caching allocator reserved: no empty_cache() follows the LoRA merge or the fp8 conversion.
    allocated_bytes: int = 0


FIELDS = tuple(f.name for f in fields(Measurement))
OPTIONAL = {"allocated_bytes": 0}  # fields an import or a version-1 history may lack
# f.type is the annotation's text (annotations are postponed), never a type here
_TYPES = {f.name: {"str": str, "int": int, "float": float}[cast(str, f.type)] for f in fields(Measurement)}


@dataclass(frozen=True)
class _Term:
    """A learnable EstimateTerms field: what drives it in a measurement, and how to show a value."""

    name: str
    label: str
    driver: Callable[[Measurement], float]
    show: Callable[[float], str]
    undriven: str  # why no measurement drives it, when none does


# Priority order: when two drivers cannot be told apart, the later term keeps its default. NCCL is
# last because a history of one layout has the same peer count everywhere, just like the context.
TERMS = (
    _Term("context_bytes", "context", lambda m: 1.0, lambda v: f"{gib(v)} per GPU", ""),
    _Term(
        "activation_bytes_per_token_dim",
        "activations",
        lambda m: m.token_dims,
        lambda v: f"{v:.1f} bytes per token per dim",
        "no measurement peaks while denoising",
    ),
    _Term(
        "decode_bytes_per_pixel",
        "decode",
        lambda m: m.decode_pixels,
        lambda v: f"{v:.0f} bytes per output pixel",
        "no measurement peaks while decoding",
    ),
    _Term(
        "nccl_bytes_per_peer",
        "NCCL",
        lambda m: m.nccl_peers,
        lambda v: f"{gib(v, 3)} per peer",
        "every measurement is single-GPU (0 peers)",
    ),
)


def history_path(env: Mapping[str, str] = os.environ) -> Path:
    if env.get("AVATARDOCTOR_HOME"):
        return Path(env["AVATARDOCTOR_HOME"]).expanduser() / HISTORY_FILE
    xdg = env.get("XDG_DATA_HOME", "")  # the XDG spec says to ignore a relative one
    data = Path(xdg) if os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return data / "avatardoctor" / HISTORY_FILE


def _unusable(path: Path, err: Exception) -> InputError:
    return InputError(
        f"calibration history {path}: cannot use it ({err}); if it is damaged, move it away "
        f"(mv {path} {path}.bak) to start a new history, or set AVATARDOCTOR_HOME to another folder"
    )


def _has_table(conn: sqlite3.Connection) -> bool:
    """True if the file holds our table, False if it is empty; anything else is not ours to touch."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version in (1, HISTORY_VERSION):
        return True
    if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
        return False
    raise sqlite3.DatabaseError(f"schema version {version}, not a history this avatardoctor writes")


def record(measurements: Iterable[Measurement], env: Mapping[str, str] = os.environ) -> Path:
    """Add measurements to the history (created on first write); a run recorded again is replaced."""
    rows = [tuple(getattr(m, name) for name in FIELDS) for m in measurements]
    path = history_path(env)
    sql_types = {str: "TEXT", int: "INTEGER", float: "REAL"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as conn, conn:  # one transaction: every row or none
            if not _has_table(conn):
                columns = ", ".join(f"{name} {sql_types[_TYPES[name]]} NOT NULL" for name in FIELDS)
                conn.execute(f"CREATE TABLE measurements ({columns})")
                conn.execute("CREATE INDEX measurements_run ON measurements (run_id)")
                conn.execute(f"PRAGMA user_version = {HISTORY_VERSION}")
            elif conn.execute("PRAGMA user_version").fetchone()[0] == 1:
                conn.execute("ALTER TABLE measurements ADD COLUMN allocated_bytes INTEGER NOT NULL DEFAULT 0")
                conn.execute(f"PRAGMA user_version = {HISTORY_VERSION}")
            conn.executemany("DELETE FROM measurements WHERE run_id = ?", {(row[0],) for row in rows})
            conn.executemany(
                f"INSERT INTO measurements ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})", rows
            )
    except (sqlite3.DatabaseError, OSError) as err:
        raise _unusable(path, err) from None
    return path


def history(env: Mapping[str, str] = os.environ) -> list[Measurement]:
    """Every recorded measurement, oldest first; empty (and no file created) when there is none."""
    path = history_path(env)
    if not path.is_file():
        return []
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            if not _has_table(conn):
                return []
            stored = [row[1] for row in conn.execute("PRAGMA table_info(measurements)")]
            columns = [name if name in stored else f"{OPTIONAL[name]} AS {name}" for name in FIELDS]
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM measurements ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError as err:
        raise _unusable(path, err) from None
    return [Measurement(*row) for row in rows]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fit_terms(
    measurements: Iterable[Measurement], base: EstimateTerms = DEFAULT_TERMS
) -> tuple[EstimateTerms, list[str]]:
    """Fit the learnable terms to the measurements; return the terms and lines saying what happened.

    A term no measurement drives, or whose driver the history cannot tell apart from an earlier
    term's, keeps its default. Non-negativity by a small active set: fit, pin the most negative
    coefficient at 0, refit, until none is negative (memory cannot be negative; a negative fit means
    the drivers or the exact terms are off, and the line says so). Bands: the residual spread
    (2 x RMS, about 95%, at least 0.1 GiB) becomes the context band, since whatever the model misses
    lands there; a fitted coefficient's relative band is 2 x its standard error / its value, clipped
    to [0.05, 1.0], so it shrinks as runs with varied drivers accumulate. Other bands stay.
    """
    ms = list(measurements)
    runs = len({m.run_id for m in ms})
    drivers = {t.name: [float(t.driver(m)) for m in ms] for t in TERMS}
    learnable = [t for t in TERMS if any(drivers[t.name])]
    need = max(MIN_MEASUREMENTS, len(learnable) + 1)
    if not ms:
        return base, [
            f"no measurements yet: the default terms are in use; feed runs with `avatardoctor calibrate {IMPORT_FLAG} FILE`"
        ]
    if len(ms) < need:
        reason = (
            f"kept the default terms: {_plural(len(ms), 'measurement')} in the history, the fit needs at least "
            f"{need} (one more than the {_plural(len(learnable), 'term')} they drive)"
        )
        return base, [reason]
    why = {t.name: f"kept the default {t.show(getattr(base, t.name))}: {t.undriven}" for t in TERMS}

    import numpy as np  # here only: importing numpy costs a noticeable fraction of a second

    y = np.array([m.measured_bytes - m.exact_bytes for m in ms], dtype=float)
    # Columns scaled to at most 1, so the rank test and lstsq see token_dims (~1e7) and peers (~1) alike.
    scale = {t.name: max(map(abs, drivers[t.name])) for t in learnable}
    column = {t.name: np.array(drivers[t.name]) / scale[t.name] for t in learnable}
    fitted: list[_Term] = []
    for t in learnable:
        if np.linalg.matrix_rank(np.column_stack([column[f.name] for f in [*fitted, t]])) > len(fitted):
            fitted.append(t)
        else:
            y -= getattr(base, t.name) * np.array(drivers[t.name])  # its default share, so no other term absorbs it
            why[t.name] = (
                f"kept the default {t.show(getattr(base, t.name))}: the history cannot tell it apart from "
                f"{', '.join(f.label for f in fitted)} (its driver never varies on its own)"
            )
    X = np.column_stack([column[t.name] for t in fitted])
    free = list(range(len(fitted)))  # the columns still fitted; a dropped one is held at 0
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    while (coef < 0).any():
        free.pop(int(np.argmin(coef)))
        coef = np.linalg.lstsq(X[:, free], y, rcond=None)[0]
    residual = y - X[:, free] @ coef
    rms = math.sqrt(float(residual @ residual) / (len(ms) - len(free)))  # len(ms) > len(learnable) >= len(free)
    variance = rms**2 * np.diag(np.linalg.pinv(X[:, free].T @ X[:, free]))
    values = dict.fromkeys((t.name for t in fitted), 0.0)
    stderr = {}
    for i, j in enumerate(free):
        name = fitted[j].name
        values[name], stderr[name] = float(coef[i]) / scale[name], math.sqrt(max(float(variance[i]), 0.0)) / scale[name]

    def relative_band(name: str, default: float) -> float:
        return min(max(2 * stderr[name] / values[name], 0.05), 1.0) if values.get(name) else default

    terms = replace(
        base,
        **values,
        context_band_bytes=max(2 * rms, RESIDUAL_FLOOR_BYTES),
        activation_band=relative_band("activation_bytes_per_token_dim", base.activation_band),
        decode_band=relative_band("decode_bytes_per_pixel", base.decode_band),
        source=f"calibrated from {_plural(runs, 'run')}",
        runs=runs,
    )
    for t in fitted:
        default = t.show(getattr(base, t.name))
        why[t.name] = (
            f"fitted {t.show(values[t.name])} (default {default})"
            if values[t.name]
            else f"held at 0 (default {default}): the fit wanted a negative value; check the exact terms "
            f"and the drivers in the measurements"
        )
    bands = (
        f"bands: residual RMS {gib(rms, 3)} over {_plural(len(ms), 'measurement')} from {_plural(runs, 'run')}; "
        f"context band {gib(terms.context_band_bytes)} (2 x RMS, at least {gib(RESIDUAL_FLOOR_BYTES)}), "
        f"activations ±{terms.activation_band:.0%}, decode ±{terms.decode_band:.0%}"
    )
    return terms, [*(f"{t.label}: {why[t.name]}" for t in TERMS), bands]


def current_terms(env: Mapping[str, str] = os.environ) -> EstimateTerms:
    """The terms the predictor uses: fitted to the history, or the defaults when it is empty."""
    measurements = history(env)
    return fit_terms(measurements)[0] if measurements else DEFAULT_TERMS


def _checked(item: dict, name: str, at: str) -> str | int | float:
    """One field of an imported measurement, or InputError naming it."""
    if name not in item and name in OPTIONAL:
        return OPTIONAL[name]
    if name not in item:
        raise InputError(f"{at}.{name}: missing")
    kind, value = _TYPES[name], item[name]
    if kind is str:
        if not isinstance(value, str) or not 0 < len(value) <= 200:
            raise InputError(f"{at}.{name}: must be a non-empty string of at most 200 characters, got {value!r:.60}")
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, (int,) if kind is int else (int, float))
        or not 0 <= value <= MAX_VALUE
    ):
        raise InputError(
            f"{at}.{name}: must be {'an integer' if kind is int else 'a number'} from 0 to 2**50, got {value!r:.60}"
        )
    return kind(value)


def import_measurements(path: Path, named: str = IMPORT_FLAG) -> list[Measurement]:
    """Measurements from a JSON file {"schema": IMPORT_SCHEMA, "measurements": [{field: value}]}, checked field by
    field; errors name the file as the user gave it (`named`: the flag, or "" for a positional argument)."""
    where = f"{named} {path}".strip()
    try:
        doc = read_json(path, MAX_IMPORT_BYTES, "a measurements file")
    except UnreadableJson as err:
        raise InputError(f"{where}: {err}") from None
    if not isinstance(doc, dict) or doc.get("schema") != IMPORT_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{where}: schema must be {IMPORT_SCHEMA!r}, found {found!r:.60}")
    if not isinstance(doc.get("measurements"), list):
        raise InputError(f"{where}: measurements: must be a list")
    result = []
    for i, item in enumerate(doc["measurements"]):
        at = f"{where}: measurements[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{at}: must be an object")
        if unknown := sorted(set(item) - set(FIELDS)):
            raise InputError(f"{at}.{unknown[0]}: unknown field (expected {', '.join(FIELDS)})")
        values: dict[str, Any] = {name: _checked(item, name, at) for name in FIELDS}  # each of its field's type
        for name, allowed in (("role", ROLES), ("phase", PHASES)):
            if values[name] not in allowed:
                raise InputError(f"{at}.{name}: must be one of {', '.join(allowed)}, got {values[name]!r:.60}")
        if not values["nccl_peers"] < values["processes"]:
            raise InputError(f"{at}.processes: must be at least 1 and more than nccl_peers ({values['nccl_peers']})")
        stamp = values["recorded_at"]
        try:  # Python 3.10 does not read a "Z" suffix
            when = datetime.fromisoformat(stamp[:-1] + "+00:00" if stamp.endswith("Z") else stamp)
        except ValueError:
            when = None
        if when is None or when.utcoffset() is None:
            raise InputError(f"{at}.recorded_at: must be an ISO 8601 time with its UTC offset, got {stamp!r:.60}")
        result.append(Measurement(**values))
    return result


def calibration_report(env: Mapping[str, str] = os.environ) -> dict:
    """What `avatardoctor calibrate --json` prints: the history, the default and fitted terms, and why."""
    measurements = history(env)
    terms, lines = fit_terms(measurements)
    return {
        "schema": REPORT_SCHEMA,
        "avatardoctor_version": __version__,
        "history": str(history_path(env)),
        "runs": len({m.run_id for m in measurements}),
        "measurements": len(measurements),
        "default_terms": asdict(DEFAULT_TERMS),
        "terms": asdict(terms),
        "explanation": lines,
    }


_SHOW = {t.name: t.show for t in TERMS}
_ROWS = (  # (label, EstimateTerms field, how to show its value)
    ("context", "context_bytes", _SHOW["context_bytes"]),
    ("context band", "context_band_bytes", lambda v: f"± {gib(v)}"),
    ("NCCL", "nccl_bytes_per_peer", _SHOW["nccl_bytes_per_peer"]),
    ("activations", "activation_bytes_per_token_dim", _SHOW["activation_bytes_per_token_dim"]),
    ("activation band", "activation_band", lambda v: f"± {v:.0%}"),
    ("decode", "decode_bytes_per_pixel", _SHOW["decode_bytes_per_pixel"]),
    ("decode band", "decode_band", lambda v: f"± {v:.0%}"),
    ("fragmentation (not fitted)", "fragmentation", lambda v: f"{v:.0%} of each GPU"),
)


def render_calibration(report: dict, console: Console) -> None:
    """The report for people: each term's default and the value in use, then the explanation lines."""
    terms, default = report["terms"], report["default_terms"]
    console.print(
        f"history: {report['history']} ({_plural(report['runs'], 'run')}, "
        f"{_plural(report['measurements'], 'measurement')}) · terms: {terms['source']}",
        markup=False,
        soft_wrap=True,
    )
    table = Table("term", "default", "in use", box=box.SIMPLE, show_edge=False)
    for label, name, show in _ROWS:
        table.add_row(label, show(default[name]), show(terms[name]))
    console.print(table)
    for line in report["explanation"]:
        console.print(f"  {line}", markup=False, soft_wrap=True)
