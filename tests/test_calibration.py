"""Calibration against real SQLite files: synthetic runs with a known bias must teach it to the fit."""

from __future__ import annotations

import io
import json
import random
import sqlite3
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from rich.console import Console

from avatardoctor.calibration import (
    FIELDS,
    IMPORT_SCHEMA,
    MAX_IMPORT_BYTES,
    Measurement,
    calibration_report,
    current_terms,
    fit_terms,
    history,
    history_path,
    import_measurements,
    record,
    render_calibration,
)
from avatardoctor.errors import InputError
from avatardoctor.estimates import DEFAULT_TERMS
from avatardoctor.units import GIB, gib

# The truth the synthetic runs are drawn from, deliberately off the defaults.
TRUE = replace(
    DEFAULT_TERMS,
    context_bytes=0.62 * GIB,
    nccl_bytes_per_peer=0.09 * GIB,
    activation_bytes_per_token_dim=1.4 * DEFAULT_TERMS.activation_bytes_per_token_dim,
    decode_bytes_per_pixel=0.7 * DEFAULT_TERMS.decode_bytes_per_pixel,
)
SIZES = [(384, 704), (480, 832), (512, 512), (704, 1280), (720, 1280)]
LEARNED = ("context_bytes", "nccl_bytes_per_peer", "activation_bytes_per_token_dim", "decode_bytes_per_pixel")


def measurement(
    run_id="run-1",
    role="dit",
    phase="denoise",
    peers=4,
    token_dims=0.0,
    decode_pixels=0.0,
    exact=30 * GIB,
    terms=TRUE,
    noise=0.0,
    **overrides,
) -> Measurement:
    """A measurement whose peak follows the fit's model with the given terms, plus noise bytes."""
    measured = (
        exact
        + terms.context_bytes
        + terms.nccl_bytes_per_peer * peers
        + terms.activation_bytes_per_token_dim * token_dims
        + terms.decode_bytes_per_pixel * decode_pixels
        + noise
    )
    return replace(
        Measurement(
            run_id=run_id,
            gpu_name="NVIDIA H800",
            role=role,
            phase=phase,
            measured_bytes=round(measured),
            exact_bytes=round(exact),
            processes=peers + 1,
            nccl_peers=peers,
            token_dims=token_dims,
            decode_pixels=decode_pixels,
            recorded_at="2026-05-09T07:35:25+00:00",
        ),
        **overrides,
    )


def synthetic_runs(
    n_runs=12, seed=7, phases=("load", "denoise", "decode"), peers_choices=(0, 4, 7)
) -> list[Measurement]:
    """Runs of varied layouts and sizes: DiT ranks peak while denoising, the VAE rank while decoding."""
    rng = random.Random(seed)
    out = []
    for r in range(n_runs):
        h, w = SIZES[r % len(SIZES)]
        peers = peers_choices[r % len(peers_choices)]
        tokens = 3 * (h // 16) * (w // 16)
        for _rank in range(peers + 1):
            phase = phases[rng.randrange(len(phases))]
            drivers = {"denoise": {"token_dims": tokens * 5120.0}, "decode": {"decode_pixels": 12.0 * h * w}}.get(
                phase, {}
            )
            role = "single" if peers == 0 else "vae" if phase == "decode" else "dit"
            out.append(
                measurement(
                    f"run-{r}",
                    role,
                    phase,
                    peers,
                    exact=rng.uniform(20, 60) * GIB,
                    noise=rng.gauss(0, 0.02 * GIB),
                    **drivers,
                )
            )
    return out


@pytest.fixture
def env(tmp_path):
    return {"AVATARDOCTOR_HOME": str(tmp_path / "home")}


def test_a_known_bias_is_learned_through_the_history(env):
    runs = synthetic_runs()
    record(runs, env)
    terms, lines = fit_terms(history(env))
    for name in LEARNED:
        assert getattr(terms, name) == pytest.approx(getattr(TRUE, name), rel=0.03), name
    assert terms.context_band_bytes < DEFAULT_TERMS.context_band_bytes
    assert terms.activation_band < DEFAULT_TERMS.activation_band
    assert terms.decode_band < DEFAULT_TERMS.decode_band
    assert terms.source == "calibrated from 12 runs" and terms.runs == 12
    assert terms.fragmentation == DEFAULT_TERMS.fragmentation
    assert f"context: fitted {gib(terms.context_bytes)} per GPU (default 0.75 GiB per GPU)" in lines
    assert (
        f"activations: fitted {terms.activation_bytes_per_token_dim:.1f} bytes per token per dim (default 46.0 bytes per token per dim)"
        in lines
    )
    assert current_terms(env) == terms


def test_larger_noise_gives_wider_bands(env):
    quiet, _ = fit_terms(synthetic_runs())
    rng = random.Random(3)
    noisy, _ = fit_terms(
        [replace(m, measured_bytes=m.measured_bytes + round(rng.gauss(0, 0.5 * GIB))) for m in synthetic_runs()]
    )
    assert noisy.context_band_bytes > quiet.context_band_bytes
    assert noisy.activation_band > quiet.activation_band


def test_a_denoise_only_history_keeps_the_decode_default_and_says_so():
    terms, lines = fit_terms(synthetic_runs(phases=("denoise",)))
    assert terms.decode_bytes_per_pixel == DEFAULT_TERMS.decode_bytes_per_pixel
    assert terms.decode_band == DEFAULT_TERMS.decode_band
    assert "decode: kept the default 500 bytes per output pixel: no measurement peaks while decoding" in lines
    assert terms.activation_bytes_per_token_dim == pytest.approx(TRUE.activation_bytes_per_token_dim, rel=0.03)


def test_single_gpu_only_history_keeps_the_nccl_default():
    terms, lines = fit_terms(synthetic_runs(peers_choices=(0,)))
    assert terms.nccl_bytes_per_peer == DEFAULT_TERMS.nccl_bytes_per_peer
    assert any(line.startswith("NCCL: kept the default") and "single-GPU" in line for line in lines)


def test_one_layout_cannot_separate_nccl_from_the_context():
    # Every run has 4 peers: the peers column is 4x the context's column, so NCCL keeps its default
    # and the context absorbs the rest of the constant.
    terms, lines = fit_terms(synthetic_runs(peers_choices=(4,)))
    assert terms.nccl_bytes_per_peer == DEFAULT_TERMS.nccl_bytes_per_peer
    assert any(
        line.startswith("NCCL: kept the default") and "cannot tell it apart from context" in line for line in lines
    )
    expected_context = TRUE.context_bytes + 4 * (TRUE.nccl_bytes_per_peer - DEFAULT_TERMS.nccl_bytes_per_peer)
    assert terms.context_bytes == pytest.approx(expected_context, rel=0.03)


def test_too_few_measurements_keep_the_defaults_and_say_why():
    two_denoising = [
        measurement(f"run-{i}", token_dims=1e7 * (i + 1)) for i in range(2)
    ]  # context + activations + NCCL
    four_driving_all = two_denoising + [
        measurement(f"run-{i}", "vae", "decode", peers=i, decode_pixels=3e6) for i in (2, 3)
    ]
    for ms, need, terms_driven in ((two_denoising, 4, 3), (four_driving_all, 5, 4)):
        terms, lines = fit_terms(ms)
        assert terms is DEFAULT_TERMS
        assert lines == [
            (
                f"kept the default terms: {len(ms)} measurements in the history, the fit needs at least {need} "
                f"(one more than the {terms_driven} terms they drive)"
            )
        ]
    terms, lines = fit_terms([])
    assert (
        terms is DEFAULT_TERMS
        and "no measurements yet" in lines[0]
        and "avatardoctor calibrate --import FILE" in lines[0]
    )


def test_a_coefficient_driven_negative_is_held_at_zero():
    # Peaks that fall as decode pixels grow: the unconstrained fit gives decode a negative slope.
    ms = [
        measurement(
            f"run-{i}",
            "vae",
            "decode",
            peers=0,
            decode_pixels=pixels,
            terms=replace(TRUE, decode_bytes_per_pixel=0.0),
            noise=-80.0 * pixels,
        )
        for i, pixels in enumerate([1e6, 2e6, 3e6, 4e6, 5e6])
    ]
    terms, lines = fit_terms(ms)
    assert terms.decode_bytes_per_pixel == 0.0
    assert any(line.startswith("decode: held at 0") for line in lines)
    assert terms.context_bytes > 0


def test_current_terms_without_a_history_are_the_defaults_and_create_nothing(tmp_path, env):
    assert current_terms(env) is DEFAULT_TERMS
    assert history(env) == []
    assert not (tmp_path / "home").exists()


def test_current_terms_without_a_history_do_not_import_numpy(tmp_path):
    code = (
        "import sys; from avatardoctor.calibration import current_terms, DEFAULT_TERMS; "
        f"assert current_terms({{'AVATARDOCTOR_HOME': {str(tmp_path)!r}}}) is DEFAULT_TERMS; "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_history_lives_where_the_environment_says():
    assert history_path({"AVATARDOCTOR_HOME": "/data/ad", "XDG_DATA_HOME": "/x"}) == Path("/data/ad/history.sqlite3")
    assert str(history_path({"XDG_DATA_HOME": "/x", "HOME": "/h"})) == "/x/avatardoctor/history.sqlite3"
    assert (
        str(history_path({"XDG_DATA_HOME": "relative", "HOME": "/h"})) == "/h/.local/share/avatardoctor/history.sqlite3"
    )


def test_record_then_history_preserves_every_field_and_a_rerecorded_run_replaces_itself(env):
    first = [
        measurement("run-a", token_dims=1.5e7),
        measurement("run-b", "vae", "decode", decode_pixels=3.2e6, peers=0),
    ]
    path = record(first, env)
    assert path == history_path(env) and path.is_file()
    assert history(env) == first
    assert [asdict(m) for m in history(env)] == [asdict(m) for m in first]
    again = [measurement("run-a", token_dims=2.5e7, gpu_name="NVIDIA H100 80GB HBM3")]
    record(again, env)
    assert history(env) == [first[1], again[0]]


@pytest.mark.parametrize("content", [b"this is not a database" * 100, "sqlite"])
def test_a_damaged_or_foreign_history_is_refused_and_left_alone(env, content):
    path = history_path(env)
    path.parent.mkdir(parents=True)
    if content == "sqlite":  # a real SQLite file, but some other program's
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    for call in (lambda: history(env), lambda: current_terms(env), lambda: record([measurement()], env)):
        with pytest.raises(InputError) as err:
            call()
        assert str(path) in str(err.value) and "move it away" in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before


def write_import(tmp_path: Path, doc: dict | list | str) -> Path:
    path = tmp_path / "measurements.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def test_import_reads_a_good_file_and_feeds_the_history(tmp_path, env):
    runs = synthetic_runs(n_runs=2)
    path = write_import(tmp_path, {"schema": IMPORT_SCHEMA, "measurements": [asdict(m) for m in runs]})
    imported = import_measurements(path)
    assert imported == runs
    record(imported, env)
    assert history(env) == runs


def good_item(**changes) -> dict:
    return asdict(measurement()) | changes


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"schema": "avatardoctor.measurements/2", "measurements": []}, "schema must be 'avatardoctor.measurements/1'"),
        ([1, 2], "schema must be"),
        ({"schema": IMPORT_SCHEMA}, "measurements: must be a list"),
        ({"schema": IMPORT_SCHEMA, "measurements": [7]}, "measurements[0]: must be an object"),
        (
            {
                "schema": IMPORT_SCHEMA,
                "measurements": [good_item(), {k: v for k, v in good_item().items() if k != "exact_bytes"}],
            },
            "measurements[1].exact_bytes: missing",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(measured_bytes=-5)]},
            "measurements[0].measured_bytes: must be an integer",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(measured_bytes="25 GiB")]},
            "measured_bytes: must be an integer",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(measured_bytes=2.5e10)]},
            "measured_bytes: must be an integer",
        ),
        ({"schema": IMPORT_SCHEMA, "measurements": [good_item(nccl_peers=True)]}, "nccl_peers: must be an integer"),
        ({"schema": IMPORT_SCHEMA, "measurements": [good_item(token_dims=-1.0)]}, "token_dims: must be a number"),
        ({"schema": IMPORT_SCHEMA, "measurements": [good_item(run_id="")]}, "run_id: must be a non-empty string"),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(phase="sampling")]},
            "phase: must be one of load, lora, fp8",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(processes=4, nccl_peers=4)]},
            "processes: must be at least 1",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(recorded_at="yesterday")]},
            "recorded_at: must be an ISO 8601",
        ),
        (
            {"schema": IMPORT_SCHEMA, "measurements": [good_item(recorded_at="2026-05-09T07:35:25")]},
            "with its UTC offset",
        ),
        ({"schema": IMPORT_SCHEMA, "measurements": [good_item(gpu="H800")]}, "measurements[0].gpu: unknown field"),
        ('{"schema": "avatardoctor.measurements/1", "measurements": [', "not valid JSON (line 1"),
    ],
)
def test_import_rejects_each_bad_field_with_one_line_naming_file_and_field(tmp_path, doc, expected):
    path = write_import(tmp_path, doc)
    with pytest.raises(InputError) as err:
        import_measurements(path)
    message = str(err.value)
    assert message.startswith(f"--import {path}: ") and expected in message and "\n" not in message


def test_import_accepts_a_z_suffix_and_integral_floats_for_float_fields(tmp_path):
    path = write_import(
        tmp_path,
        {"schema": IMPORT_SCHEMA, "measurements": [good_item(recorded_at="2026-05-09T07:35:25Z", token_dims=5)]},
    )
    assert import_measurements(path)[0].token_dims == 5.0


def test_import_refuses_a_huge_file_without_reading_it_all(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(MAX_IMPORT_BYTES + 1)
    with pytest.raises(InputError, match="over 16 MiB"):
        import_measurements(path)


def test_the_report_is_json_and_renders_default_against_calibrated(env):
    record(synthetic_runs(), env)
    report = json.loads(json.dumps(calibration_report(env)))
    assert report["schema"] == "avatardoctor.calibration/1"
    assert report["history"] == str(history_path(env))
    assert (report["runs"], report["measurements"]) == (12, len(synthetic_runs()))
    assert report["default_terms"]["context_bytes"] == DEFAULT_TERMS.context_bytes
    assert report["terms"]["context_bytes"] == pytest.approx(TRUE.context_bytes, rel=0.03)
    assert report["terms"]["source"] == "calibrated from 12 runs"
    out = io.StringIO()
    render_calibration(report, Console(file=out, width=120, no_color=True, highlight=False))
    text = out.getvalue()
    assert "terms: calibrated from 12 runs" in text
    context_row = next(line for line in text.splitlines() if line.strip().startswith("context  "))
    assert context_row.split() == [
        "context",
        "0.75",
        "GiB",
        "per",
        "GPU",
        *gib(report["terms"]["context_bytes"]).split(),
        "per",
        "GPU",
    ]
    assert "bytes per token per dim" in text and "bytes per output pixel" in text
    assert "  bands: residual RMS" in text


def test_the_report_of_an_empty_history_says_what_to_do(env):
    report = calibration_report(env)
    assert (report["runs"], report["measurements"]) == (0, 0)
    assert report["terms"] == report["default_terms"]
    assert report["explanation"][0].startswith("no measurements yet")


# ---- allocated beside reserved -----------------------------------------------------------------------------


def test_an_import_may_carry_pytorchs_allocated_peak_and_may_omit_it(tmp_path, env):
    with_it = asdict(measurement()) | {"allocated_bytes": 30 * 2**30}
    without = {k: v for k, v in asdict(measurement(run_id="run-2")).items() if k != "allocated_bytes"}
    found = import_measurements(write_import(tmp_path, {"schema": IMPORT_SCHEMA, "measurements": [with_it, without]}))
    assert [m.allocated_bytes for m in found] == [30 * 2**30, 0]
    record(found, env)
    assert [m.allocated_bytes for m in history(env)] == [30 * 2**30, 0]


def test_a_version_1_history_is_read_and_upgraded_on_the_next_write(env):
    path = history_path(env)
    path.parent.mkdir(parents=True)
    old = [f for f in FIELDS if f != "allocated_bytes"]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE measurements ({', '.join(old)})")
        first = asdict(measurement())
        conn.execute(f"INSERT INTO measurements VALUES ({', '.join('?' * len(old))})", [first[f] for f in old])
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    assert history(env) == [measurement()]  # read as it is, allocated unknown (0)
    record([replace(measurement(run_id="run-2"), allocated_bytes=5)], env)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()
    assert [(m.run_id, m.allocated_bytes) for m in history(env)] == [("run-1", 0), ("run-2", 5)]
