"""Fuzz: the runner. Saved plans with wrong types, NULs, huge values, bad ports and hostile env/argv go
through the real `run --plan`; rank output of any shape and a disk that fills at any write go through
the real torchrun. A plan is either refused in one line naming the field, with nothing created, or the
kernel accepts its launch (checked by exec'ing /bin/true with the same argv and environment)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import tempfile
import textwrap
from pathlib import Path

import hypothesis
import pytest
from harness import EXAMPLES, LONG, corpus_files, fuzz_settings, run_cli
from hypothesis import given
from hypothesis import strategies as st

from avatardoctor.planfile import PlanFile, plan_problem
from avatardoctor.runner.auto import gradio_plan
from avatardoctor.runner.folder import new_run_folder
from avatardoctor.runner.lines import LINE_CAP
from avatardoctor.runner.run import torchrun_argv
from avatardoctor.runner.shim import Phases, PhaseWatcher, Recorder

FAKE_CHECKOUT = Path(__file__).parents[1] / "fixtures" / "fake_liveavatar"
BASE = {
    "schema": "avatardoctor.plan/1",
    "mode": "tpp",
    "nproc": 2,
    "master_port": 29500,
    "env": {"FAKE_LIVEAVATAR_MODE": "success", "GLOO_SOCKET_IFNAME": "lo"},
    "argv": ["--num_clip", "2", "--size", "384*256", "--prompt", "hello"],
    "prediction": {"verdict": "fits", "gpus": [{"index": 0, "peak_gib": 40.0, "usable_gib": 77.0}]},
    "config": {"mode": "tpp", "num_clip": 2},
}

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\0",
            "a\0b",
            "\ud800",
            "\udcff",
            "=",
            "A=B",
            "../../escaped",
            "/abs",
            "$(touch /tmp/pwned)",
            "é" * 70_000,
            "p" * (128 * 1024 - 1),
            "p" * (128 * 1024),
            "\n\r\t",
            "-",
            "--prompt",
        ]
    ),
)
NUMBER = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, 1, 64, 65, 65535, 65536, True, False]), st.floats()
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBER | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3),
    max_leaves=6,
)
FIELD_VALUES = {
    "nproc": NUMBER | JSON,
    "master_port": NUMBER | JSON,
    "mode": HOSTILE_TEXT | JSON,
    "env": st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT | JSON, max_size=3) | JSON,
    "argv": st.lists(HOSTILE_TEXT, max_size=6) | JSON,
    "config": st.fixed_dictionaries({"num_clip": NUMBER | JSON}) | JSON,
    "prediction": st.fixed_dictionaries(
        {
            "gpus": st.lists(
                st.dictionaries(st.sampled_from(["index", "peak_gib", "usable_gib"]), NUMBER | JSON), max_size=2
            )
        }
    )
    | JSON,
    "schema": JSON,
}


@st.composite
def mutated_plans(draw) -> dict:
    doc = json.loads(json.dumps(BASE))
    for field in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and field != "schema":
            doc.pop(field, None)
        else:
            doc[field] = draw(FIELD_VALUES[field])
    return doc


def write_plan(folder: Path, doc) -> Path:
    path = folder / "plan.json"
    path.write_text(json.dumps(doc, allow_nan=True), encoding="utf-8", errors="surrogatepass")
    return path


def refused_or_launchable(folder: Path, path: Path, doc) -> None:
    """The oracle: a plan `run --plan` refuses is one line naming the file, with nothing created; one it
    accepts can be launched (the kernel takes its argv and environment) and names a folder inside --out-dir."""
    out = folder / "runs"
    if not (
        isinstance(doc, dict)
        and doc.get("schema") == "avatardoctor.plan/1"
        and isinstance(doc.get("argv"), list)
        and plan_problem(doc) is None
    ):
        r = run_cli("run", "--plan", str(path), "--out-dir", str(out), "--liveavatar", str(FAKE_CHECKOUT))
        assert r.exit_code == 2 and r.output.startswith(f"Error: --plan {path}: ") and r.output.count("\n") == 1, (
            r.output
        )
        assert not out.exists() and not (folder / "escaped").exists()
        return
    plan = PlanFile.from_dict(doc, str(path))  # the reader run --plan uses: a plan it accepts is whole
    argv = torchrun_argv(plan, plan.master_port, ["entry.py"])
    env = {**os.environ, **plan.env}
    subprocess.run(["/bin/true", *argv[1:]], env=env, check=True)  # E2BIG, a NUL or an unencodable string would raise
    run_folder = new_run_folder(out, plan.mode)
    assert run_folder.root.resolve().parent == out.resolve()
    assert plan.visible_gpus is None or all(i >= 0 for i in plan.visible_gpus)
    gradio_plan(plan, port=0)


@fuzz_settings(ci_examples=60)
@given(doc=mutated_plans())
def test_a_mutated_plan_is_refused_in_one_line_or_is_launchable(doc):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        refused_or_launchable(folder, write_plan(folder, doc), doc)


@fuzz_settings(ci_examples=15)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.sampled_from(
            [b"[" * 100_000, b'{"schema": "avatardoctor.plan/1", "argv": []' + b" " * 10, b"\xff\xfe{}", b"1e999999"]
        ),
    )
)
def test_a_plan_file_that_is_not_json_or_not_a_plan_is_one_line(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_bytes(content)
        r = run_cli("run", "--plan", str(path), "--out-dir", str(Path(tmp) / "runs"))
        assert r.exit_code == 2 and r.output.startswith(f"Error: --plan {path}") and r.output.count("\n") == 1, r.output
        assert not (Path(tmp) / "runs").exists()


@pytest.mark.parametrize("path", corpus_files("runner"), ids=lambda p: p.name)
def test_corpus_plan(path, tmp_path):
    """Minimised crashers of earlier fuzz runs (each a plan file) stay fixed."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8", errors="surrogatepass"))
    except ValueError:
        doc = None
    copy = tmp_path / "plan.json"
    copy.write_bytes(path.read_bytes())
    refused_or_launchable(tmp_path, copy, doc)


# ---------------------------------------------------------------------------------- rank output


@fuzz_settings(ci_examples=40)
@given(
    chunks=st.lists(
        st.one_of(st.text(max_size=50), st.sampled_from(["\n", "\r", "x" * 70_000, "\r" * 3, "é" * 40_000])),
        max_size=12,
    )
)
def test_the_shim_tracks_any_output_in_bounded_lines(chunks):
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as sink:
        phases = Phases(Recorder(0, Path(tmp)))
        seen: list[str] = []
        feed = phases.line
        phases.line = lambda line: (seen.append(line), feed(line))
        watcher = PhaseWatcher(sink, phases)
        for chunk in chunks:
            assert watcher.write(chunk) == len(chunk)
    assert all(len(line) <= LINE_CAP + 40 for line in seen)
    assert len(seen) == "".join(chunks).count("\n")


class FullDisk:
    """What inference.log becomes once the disk is full: every write fails as write(2) does."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    flush = close = lambda self: None


OUTPUT_ENTRY = """
    import os, sys
    for chunk in {chunks!r}:
        os.write(1, chunk)
"""


def real_run_settings() -> hypothesis.settings:
    """A real torchrun per example: a couple in CI, a few dozen in a long run (each takes seconds)."""
    return hypothesis.settings(fuzz_settings(ci_examples=2), max_examples=min(EXAMPLES, 30) if LONG else 2)


@real_run_settings()
@given(
    chunks=st.lists(
        st.one_of(st.binary(max_size=64), st.sampled_from([b"\n", b"\xff\xfe", b"y" * 100_000, b"\r" * 5])), max_size=6
    ),
    fail_after=st.none() | st.integers(0, 5),
)
def test_the_runner_records_any_output_and_a_disk_that_fills_at_any_write(chunks, fail_after):
    """Real ranks writing raw bytes (no newline, invalid UTF-8, 100 kB lines); the log's writes fail
    with ENOSPC from write number fail_after on (None: never)."""
    import avatardoctor.runner.run as run_module
    from avatardoctor.runner.run import RunOptions, execute

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "entry.py"
        script.write_text(textwrap.dedent(OUTPUT_ENTRY.format(chunks=chunks)))
        real_write, writes = run_module._Log.write, []

        def failing_write(self, text: str) -> None:
            writes.append(text)
            if fail_after is not None and len(writes) > fail_after:
                self.file = FullDisk()
            real_write(self, text)

        run_module._Log.write = failing_write
        try:
            plan = {**BASE, "nproc": 1, "master_port": 29500}
            result = execute(
                PlanFile.from_dict(plan, "plan"),
                RunOptions(out_dir=folder / "runs", sample_hz=20, cwd=folder, entry=[str(script)], shim=False),
            )
        finally:
            run_module._Log.write = real_write
        debug = json.loads(result.folder.debug_json.read_text())
        assert debug["outcome"] == result.failure.cls
        log_lines = result.folder.inference_log.read_text(encoding="utf-8").splitlines()
        assert all(
            len(line.encode()) <= LINE_CAP * 3 + 100 for line in log_lines
        )  # replacement characters may triple a byte
        failed = fail_after is not None and len(writes) > fail_after
        assert result.failure.cls == ("disk-full" if failed else "success"), (result.failure, log_lines[-5:])
