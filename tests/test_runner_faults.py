"""The runner against faults and bad plans, for real: a full disk (a tiny tmpfs where this machine lets us
mount one, and /dev/full), an unwritable --out-dir, a rank printing megabytes without a newline, a rank
whose daemon double-forks out of the tree, and saved plans the kernel or the run folder would refuse."""

from __future__ import annotations

import contextlib
import json
import subprocess
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the runner launches torchrun: the [torch] extra; .ci/run installs it")

from fuzz.harness import run_cli  # noqa: E402
from test_runner import checkout, execute, no_survivors, options, plan, token  # noqa: E402

from avatardoctor.errors import InputError  # noqa: E402
from avatardoctor.runner.folder import RESERVE_BYTES, RunFolder, new_run_folder  # noqa: E402
from avatardoctor.runner.lines import LINE_CAP  # noqa: E402
from avatardoctor.runner.run import RunOptions  # noqa: E402


@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real filesystem of `size` at path; skips where this machine may not mount (CI as root may)."""
    path.mkdir(parents=True, exist_ok=True)
    flags = ["-o", f"size={size}" + (",ro" if read_only else "")]
    r = subprocess.run(["mount", "-t", "tmpfs", *flags, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({r.stderr.strip()[:80] or 'mount failed'}): needs root or CAP_SYS_ADMIN"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def entry(tmp_path: Path, name: str, code: str) -> RunOptions:
    """Options that launch a small script of our own as the entry, in the fake checkout."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(code))
    return RunOptions(
        out_dir=tmp_path / "runs", sample_hz=20, hang_timeout_s=60, cwd=checkout(tmp_path), entry=[str(script)]
    )


def plan_file(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------------------------------ disk


def test_an_unwritable_out_dir_is_a_one_line_error_and_nothing_is_launched(tmp_path):
    argv_file = tmp_path / "argv.json"  # the fake entry writes it once launched
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = plan_file(tmp_path, plan("argv-echo", FAKE_LIVEAVATAR_ARGV_FILE=str(argv_file)))
    r = run_cli("run", "--plan", str(path), "--out-dir", str(blocker / "runs"), "--liveavatar", str(checkout(tmp_path)))
    assert (
        r.exit_code == 2
        and r.output.startswith(f"Error: --out-dir {blocker / 'runs'}: cannot create it")
        and r.output.count("\n") == 1
    )
    assert not argv_file.exists()


def test_a_read_only_out_dir_is_a_one_line_error_and_nothing_is_launched(tmp_path):
    argv_file = tmp_path / "argv.json"
    path = plan_file(tmp_path, plan("argv-echo", FAKE_LIVEAVATAR_ARGV_FILE=str(argv_file)))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as out:
        r = run_cli("run", "--plan", str(path), "--out-dir", str(out), "--liveavatar", str(checkout(tmp_path)))
        assert list(out.iterdir()) == []
    assert (
        r.exit_code == 2
        and r.output.startswith(f"Error: --out-dir {out}: cannot write there")
        and r.output.count("\n") == 1
    )
    assert not argv_file.exists()


def test_a_disk_too_full_for_the_reserve_launches_nothing_and_leaves_no_folder(tmp_path):
    with tmpfs(tmp_path / "disk", "128k") as disk:
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
        with pytest.raises(InputError, match="free space or choose another folder"):
            new_run_folder(disk / "runs", "tpp")
        assert list((disk / "runs").iterdir()) == []


def test_the_disk_filling_mid_run_stops_the_job_and_records_the_outcome(tmp_path):
    mark = token()
    opts = entry(
        tmp_path,
        "chatty",
        f"""
        import time
        while True:  # {mark}
            print("x" * 4000, flush=True)
            time.sleep(0.002)
    """,
    )
    with tmpfs(tmp_path / "disk", "1m") as disk:
        opts.out_dir = disk / "runs"
        result = execute(plan(prompt=mark), opts)
        f = result.folder
        assert result.failure.cls == "disk-full" and "--out-dir" in result.failure.remedy and result.report is None
        debug = json.loads(f.debug_json.read_text())  # written into the reserve's blocks
        assert debug["outcome"] == "disk-full" and debug["failure"]["class"] == "disk-full"
        assert f.inference_log.read_text().count("x" * 4000) > 10  # what was written is kept
        assert not f.reserve.exists()
        rows = f.gpu_memory_csv.read_text()
        assert rows.endswith("\n")  # whole to its last line
    assert no_survivors(mark) == []


def test_a_rank_record_the_full_disk_cannot_take_does_not_change_how_the_rank_ends(tmp_path):
    from avatardoctor.runner.shim import Recorder

    with tmpfs(tmp_path / "disk", "64k") as disk:
        recorder = Recorder(0, disk)
        recorder.doc["events"] = [{"event": "x" * 100}] * 2000  # 200 kB: more than the disk holds
        recorder.write()  # raises nothing: the record is lost, the rank's exit is its own
        assert list(disk.iterdir()) == []


def test_a_log_on_a_device_that_is_always_full_stops_the_job_with_a_clear_outcome(tmp_path, monkeypatch):
    """/dev/full is a real device whose every write fails with ENOSPC: the writer's fault, injected."""
    import avatardoctor.runner.run as run_module

    class FullLog(RunFolder):
        @property
        def inference_log(self) -> Path:
            return Path("/dev/full")

    real = run_module.new_run_folder
    monkeypatch.setattr(run_module, "new_run_folder", lambda out, mode: FullLog(real(out, mode).root))
    mark = token()
    result = execute(plan(prompt=mark), options(tmp_path))
    assert result.failure.cls == "disk-full"
    assert json.loads(result.folder.debug_json.read_text())["outcome"] == "disk-full"
    assert no_survivors(mark) == []


def test_debug_info_goes_into_the_reserve_and_falls_back_to_a_plain_write(tmp_path):
    folder = new_run_folder(tmp_path / "runs", "tpp")
    assert folder.reserve.stat().st_size == RESERVE_BYTES
    folder.write_reserved(folder.debug_json, b'{"outcome": "disk-full"}\n')
    assert folder.debug_json.read_bytes() == b'{"outcome": "disk-full"}\n' and not folder.reserve.exists()
    big = new_run_folder(tmp_path / "runs", "tpp")
    big.write_reserved(big.debug_json, b"x" * (RESERVE_BYTES + 1))
    assert big.debug_json.stat().st_size == RESERVE_BYTES + 1 and not big.reserve.exists()


# ------------------------------------------------------------------------------------------ output


def test_a_rank_printing_megabytes_without_a_newline_gets_one_capped_line(tmp_path):
    size = 8 * 2**20
    opts = entry(
        tmp_path,
        "one_long_line",
        f"""
        import sys
        for _ in range({size // 4096}):
            sys.stdout.write("y" * 4096)
        print()
        print("after the long line")
    """,
    )
    result = execute(plan(nproc=1, prompt=token()), opts)
    assert result.failure.cls == "success"
    lines = result.folder.inference_log.read_text().splitlines()
    (long,) = [line for line in lines if "yyyy" in line]
    assert long.split("] ", 1)[1] == "y" * LINE_CAP + f" [... {size - LINE_CAP} bytes cut]"
    assert any(line.endswith("] after the long line") for line in lines)


# ------------------------------------------------------------------------------------------ processes


DAEMON = """
    import os, sys, time
    setsid, mark = {setsid}, {mark!r}
    if os.fork() == 0:  # the classic double fork: the grandchild is orphaned, out of the rank's tree
        if setsid:
            os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            argv = [sys.executable, "-c", "import time; time.sleep(300)", mark]
            os.execve(sys.executable, argv, dict(os.environ) if setsid else {{}})
        os._exit(0)
    os.wait()
    print("daemon started", flush=True)
    time.sleep(3)  # the rank lives on a little, as a rank does after starting a helper
"""


@pytest.mark.parametrize("setsid", [True, False], ids=["own-session", "rank-session-empty-env"])
def test_a_daemon_a_rank_double_forked_is_stopped_with_the_job(tmp_path, setsid):
    """own-session: found by the job's cookie in its environment; rank-session-empty-env: no cookie, found
    by the session it kept (the rank's)."""
    mark = token()
    opts = entry(tmp_path, "daemon", DAEMON.format(setsid=setsid, mark=mark))
    result = execute(plan(nproc=1, prompt=mark), opts)
    assert "daemon started" in result.folder.inference_log.read_text()
    assert no_survivors(mark) == []


# ------------------------------------------------------------------------------------------ plans


def bad(**fields) -> dict:
    return {**plan(), **fields}


BAD_PLANS = {
    "a NUL in the prompt": (bad(argv=["--prompt", "a\0b"]), "argv[1] (the value of --prompt) contains a NUL"),
    "a prompt over 128 KiB": (
        bad(argv=["--prompt", "p" * (128 * 1024)]),
        "argv[1] (the value of --prompt) is 131072 bytes",
    ),
    "a lone surrogate": (
        bad(argv=["--prompt", "\ud800"]),
        "argv[1] (the value of --prompt) contains characters that cannot",
    ),
    "an env value that is a number": (bad(env={"NCCL_DEBUG": 1}), "env 'NCCL_DEBUG' must be"),
    "an env name with =": (bad(env={"A=B": "c"}), "env 'A=B' must be"),
    "env as a list": (bad(env=["A"]), "env must be an object"),
    "port 0": (bad(master_port=0), "master_port must be an integer from 1 to 65535"),
    "port 70000": (bad(master_port=70000), "master_port must be"),
    "port as text": (bad(master_port="29500"), "master_port must be"),
    "port true": (bad(master_port=True), "master_port must be"),
    "nproc 0": (bad(nproc=0), "nproc must be an integer from 1 to 64"),
    "nproc huge": (bad(nproc=10**12), "nproc must be"),
    "a mode that is a path": (bad(mode="../../escaped"), "mode must be a short name"),
    "num_clip as text": (bad(config={"num_clip": "2"}), "config must be an object whose num_clip"),
    "a prediction gpu without index": (bad(prediction={"gpus": [{"peak_gib": 3}]}), "prediction.gpus[0] must be"),
    "a prediction peak as text": (
        bad(prediction={"gpus": [{"index": 0, "usable_gib": "80"}]}),
        "prediction.gpus[0]: peak_gib",
    ),
    "a huge launch": (bad(argv=["x" * 100_000] * 12), "argv and env together are over 1 MiB"),
}


@pytest.mark.parametrize("name", BAD_PLANS)
def test_a_plan_the_launch_would_refuse_is_a_one_line_error_before_anything_is_created(tmp_path, name):
    doc, message = BAD_PLANS[name]
    path = plan_file(tmp_path, doc)
    out = tmp_path / "runs"
    r = run_cli("run", "--plan", str(path), "--out-dir", str(out), "--liveavatar", str(checkout(tmp_path)))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"Error: --plan {path}: {message}"), r.output
    assert not out.exists() and not (tmp_path / "escaped").exists()


def test_a_hostile_but_valid_plan_runs(tmp_path):
    argv_file = tmp_path / "argv.json"
    hostile = "$(touch /tmp/pwned) `id` \t ünï ✓ " + "p" * (100 * 1024)
    path = plan_file(tmp_path, plan("argv-echo", prompt=hostile, FAKE_LIVEAVATAR_ARGV_FILE=str(argv_file), EMPTY=""))
    r = run_cli(
        "run", "--plan", str(path), "--out-dir", str(tmp_path / "runs"), "--liveavatar", str(checkout(tmp_path))
    )
    assert r.exit_code == 0, r.output
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--prompt") + 1] == hostile
