"""Content hashing and sha256sum manifests: real files, the real sha256sum binary, a real Ctrl-C."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from avatardoctor.ckpt.hashchild import CHUNK_BYTES, FileJob, hash_files
from avatardoctor.ckpt.hashing import HashingInterrupted, hash_with_progress, sha256_files
from avatardoctor.ckpt.manifest import (
    MAX_BYTES,
    MAX_ENTRIES,
    Finding,
    compare,
    read_manifest,
    relative_digests,
    write_manifest,
)
from avatardoctor.errors import InputError

DIGEST = "ab" * 32


def make_files(root: Path, sizes: dict[str, int], seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for name, size in sizes.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        paths.append(path)
    return paths


def whole_file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256sum(paths: list[Path]) -> dict[Path, str]:
    out = subprocess.run(["sha256sum", "--", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return {Path(line[66:]): line[:64] for line in out.splitlines()}


# sha256_files


def test_digests_match_hashlib_and_sha256sum(tmp_path):
    rng = random.Random(1)
    sizes = {f"small/{i:03}.json": rng.randrange(40_000) for i in range(150)}
    sizes |= {
        "big-1.safetensors": 3 * CHUNK_BYTES + 17,
        "big-2.safetensors": 2 * CHUNK_BYTES,
        "big-3.pth": CHUNK_BYTES + 1,
    }
    sizes["empty.txt"] = 0
    paths = make_files(tmp_path, sizes)

    result = sha256_files(paths)

    assert result.errors == {}
    assert result.digests == {p: whole_file_sha256(p) for p in paths}
    assert result.digests == sha256sum(paths)
    assert result.digests[tmp_path / "empty.txt"] == hashlib.sha256(b"").hexdigest()


def test_a_symlink_is_hashed_as_its_target(tmp_path):
    # A Hugging Face cache snapshot is a folder of symlinks into blobs/.
    (target,) = make_files(tmp_path, {"blobs/0123": 5000})
    link = tmp_path / "snapshot.safetensors"
    link.symlink_to(target)
    assert sha256_files([link]).digests == {link: whole_file_sha256(target)}


def jobs_for(paths: list[Path]) -> list[FileJob]:
    return [FileJob(p, p.stat().st_size, crc=False) for p in paths]


def test_largest_file_is_hashed_first(tmp_path):
    paths = make_files(tmp_path, {"small": 10, "big": 3 * CHUNK_BYTES, "medium": 100_000})
    chunks: list[tuple[int, int]] = []
    hash_files(jobs_for(paths), 1, threading.Event(), lambda i, n: chunks.append((i, n)), lambda i, r: None)
    assert chunks == [(1, CHUNK_BYTES)] * 3 + [(2, 100_000), (0, 10)]


def test_progress_adds_up_to_the_total(tmp_path):
    paths = make_files(tmp_path, {f"shard-{i}": (i + 2) * CHUNK_BYTES + i for i in range(4)} | {"config.json": 300})
    totals: list[int] = []
    seen: list[int] = []
    sha256_files(paths, workers=2, on_total=totals.append, on_bytes=seen.append)
    assert totals == [sum(p.stat().st_size for p in paths)]
    assert sum(seen) == totals[0]


def test_files_are_hashed_on_as_many_threads_as_workers(tmp_path):
    paths = make_files(tmp_path, {f"shard-{i}": (i + 2) * CHUNK_BYTES for i in range(4)})
    threads: set[str] = set()
    results: dict[int, object] = {}
    lock = threading.Lock()

    def on_bytes(index: int, n: int) -> None:
        with lock:
            threads.add(threading.current_thread().name)

    hash_files(jobs_for(paths), 2, threading.Event(), on_bytes, results.__setitem__)
    assert len(threads) == 2
    assert {i: r.digest for i, r in results.items()} == {i: whole_file_sha256(p) for i, p in enumerate(paths)}


@contextmanager
def writer_releasing_any_reader(fifo: Path):
    """If the code under test opened the FIFO, it gets EOF after a second (a clean assertion failure)
    instead of hanging the suite."""
    release = threading.Timer(1, lambda: os.close(os.open(fifo, os.O_WRONLY)))
    release.daemon = True
    release.start()
    yield
    release.cancel()


def test_unreadable_paths_are_reported_and_the_others_hashed(tmp_path):
    big, fine = make_files(tmp_path, {"big": 2 * CHUNK_BYTES, "fine": 50})
    folder = tmp_path / "a-folder"
    folder.mkdir()
    fifo = tmp_path / "a-fifo"  # opening it would block until a writer comes: it must be refused unopened
    os.mkfifo(fifo)
    missing = tmp_path / "never-there"

    with writer_releasing_any_reader(fifo):
        result = sha256_files([big, fine, folder, fifo, missing])

    assert result.digests == {big: whole_file_sha256(big), fine: whole_file_sha256(fine)}
    assert result.errors == {
        folder: "not a regular file",
        fifo: "not a regular file",
        missing: "No such file or directory",
    }


def test_a_file_gone_between_sizing_and_reading_is_an_error_and_the_others_are_hashed(tmp_path):
    doomed, fine = make_files(tmp_path, {"doomed": 100, "fine": 50})
    jobs = jobs_for([doomed, fine])
    doomed.unlink()
    results: dict[int, object] = {}
    hash_files(jobs, 1, threading.Event(), lambda i, n: None, results.__setitem__)
    assert isinstance(results[0], FileNotFoundError)
    assert results[1].digest == whole_file_sha256(fine)


def test_a_file_that_cannot_be_mapped_is_read(tmp_path):
    # /proc files say they hold 0 bytes and refuse mmap; their content comes through read().
    version = Path("/proc/version")
    result = sha256_files([version])
    assert result.digests == {version: hashlib.sha256(version.read_bytes()).hexdigest()}
    assert result.mapped_bytes == 0 and result.read_bytes >= len(version.read_bytes())


def sparse_file(path: Path, size: int) -> Path:
    """Created at once, read back as zeros at page-cache speed: hashing it takes seconds."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def hashing_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "avatardoctor.ckpt.hashchild" in " ".join(p.cmdline())]


def test_a_file_truncated_while_it_is_hashed_is_named_and_the_others_hashed(tmp_path):
    # The child maps the 16 GiB file; truncated under it, its next page faults with SIGBUS and kills
    # it. The parent names the file that shrank and hashes the rest in a new child.
    shrinking = sparse_file(tmp_path / "shrinking.safetensors", 16 * 2**30)
    (fine,) = make_files(tmp_path, {"fine.json": 5000})
    seen: list[int] = []

    def truncate_once(n: int) -> None:
        if not seen:
            os.truncate(shrinking, CHUNK_BYTES)
        seen.append(n)

    result = sha256_files([shrinking, fine], workers=1, on_bytes=truncate_once)

    assert result.errors == {
        shrinking: f"changed while it was verified: it shrank from {16 * 2**30:,} to {CHUNK_BYTES:,} bytes"
    }
    assert result.digests == {fine: whole_file_sha256(fine)}
    assert sum(seen) <= 16 * 2**30 + 5000
    assert hashing_children() == []
    assert not list(tmp_path.glob("core*"))  # the SIGBUS left no core file


def test_the_stop_event_stops_the_child(tmp_path):
    shards = [sparse_file(tmp_path / f"shard-{i}", 16 * 2**30) for i in range(2)]
    stop = threading.Event()
    children: list[list[psutil.Process]] = []
    hashed: list[int] = []

    def on_bytes(n: int) -> None:
        if not stop.is_set():
            children.append(hashing_children())
        hashed.append(n)
        stop.set()

    with pytest.raises(HashingInterrupted) as caught:
        sha256_files(shards, workers=1, on_bytes=on_bytes, stop=stop)

    assert len(hashed) == 1  # no progress once stop was set
    assert len(children[0]) == 1  # the child was running...
    assert not children[0][0].is_running()  # ...and is gone
    assert caught.value.done == {}
    assert caught.value.total_files == 2
    assert str(caught.value) == "interrupted: hashed 0 of 2 files"


def test_progress_front_end_writes_no_terminal_codes_when_not_a_terminal(tmp_path):
    paths = make_files(tmp_path, {"a": 2 * CHUNK_BYTES, "b": 1000})
    out = io.StringIO()
    result = hash_with_progress(paths, Console(file=out, width=100))
    assert result.digests == {p: whole_file_sha256(p) for p in paths}
    text = out.getvalue()
    assert "\x1b" not in text  # no cursor movement or colour: a log file gets plain text
    assert text.count("\n") <= 1 and "hashing" in text and "2.0/2.0 MiB" in text


CTRL_C_SCRIPT = """
import signal, sys
from pathlib import Path
from rich.console import Console
from avatardoctor.ckpt.hashing import HashingInterrupted, hash_with_progress

# A non-interactive shell may start this with SIGINT ignored; a user's terminal never does.
signal.signal(signal.SIGINT, signal.default_int_handler)
print("hashing", flush=True)
try:
    hash_with_progress([Path(p) for p in sys.argv[1:]], Console(stderr=True))
except HashingInterrupted as err:
    print(err, file=sys.stderr)
    sys.exit(130)
print("finished", flush=True)
"""


def test_ctrl_c_stops_promptly_with_one_line_and_code_130(tmp_path):
    # Sparse files: created at once, read back as zeros at page-cache speed; 2 x 16 GiB takes
    # seconds to hash on any machine, so the interrupt lands mid-way through both.
    shards = [tmp_path / "shard-1", tmp_path / "shard-2"]
    for shard in shards:
        with open(shard, "wb") as f:
            f.truncate(16 * 2**30)
    script = tmp_path / "hash_and_wait.py"
    script.write_text(CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), *map(str, shards)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "hashing\n"
        time.sleep(0.3)
        while not (children := psutil.Process(proc.pid).children()):  # the hashing process, once it started
            time.sleep(0.05)
        (child,) = children
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=5)
    finally:
        proc.kill()
    assert time.monotonic() - sent < 5
    assert proc.returncode == 130, stderr
    assert "finished" not in stdout
    assert "interrupted: hashed 0 of 2 files" in stderr
    assert "Traceback" not in stderr
    assert not child.is_running()  # nothing left running


# Manifests


def sha256sum_output(root: Path, names: list[str], *flags: str) -> str:
    return subprocess.run(
        ["sha256sum", *flags, "--", *names], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def test_manifest_is_what_sha256sum_writes_and_sha256sum_c_accepts_it(tmp_path):
    root = tmp_path / "ckpt"
    # Names with a backslash or a newline are escaped by sha256sum; ours must match byte for byte.
    names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "sub/config.json",
        "odd\\name",
        "two\nlines",
        "empty",
    ]
    paths = make_files(root, {name: 1000 + i for i, name in enumerate(names)})
    (root / "empty").write_bytes(b"")
    manifest = tmp_path / "ckpt.sha256"

    write_manifest(relative_digests(sha256_files(paths).digests, root), manifest)

    assert manifest.read_text() == sha256sum_output(root, sorted(names))
    check = subprocess.run(["sha256sum", "-c", str(manifest)], cwd=root, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(names)


@pytest.mark.parametrize("mode", [[], ["--binary"]], ids=["text", "binary"])
def test_reads_what_sha256sum_writes(tmp_path, mode):
    names = ["a.safetensors", "sub/b.json", "odd\\name", "two\nlines"]
    paths = make_files(tmp_path, {name: 777 for name in names})
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(sha256sum_output(tmp_path, names, *mode))
    assert read_manifest(manifest) == relative_digests(sha256_files(paths).digests, tmp_path)


def test_reader_takes_comments_blank_lines_crlf_upper_case_and_dot_slash(tmp_path):
    manifest = tmp_path / "m"
    manifest.write_bytes(f"# made by hand\n\n{DIGEST.upper()}  ./a.bin\r\n   \n{DIGEST} *sub//b.bin\n".encode())
    assert read_manifest(manifest) == {"a.bin": DIGEST, "sub/b.bin": DIGEST}


def test_write_manifest_never_overwrites_without_force(tmp_path):
    manifest = tmp_path / "m"
    manifest.write_text("the user's\n")
    with pytest.raises(InputError, match=r"^--write-manifest .*exists; pass --force"):
        write_manifest({"a": DIGEST}, manifest)
    assert manifest.read_text() == "the user's\n"
    write_manifest({"b": DIGEST, "a": DIGEST}, manifest, force=True)
    assert manifest.read_text() == f"{DIGEST}  a\n{DIGEST}  b\n"


BAD_LINES = [
    (f"# header\n\n{DIGEST[:-1]}  a\n", 3, "expected a sha256 digest (64 hex digits) first"),
    (f"{'g' * 64}  a\n", 1, "expected a sha256 digest (64 hex digits) first"),
    (f"{DIGEST} a\n", 1, "expected two spaces or ' *' between the digest and the path"),
    (f"{DIGEST}  \n", 1, "no path after the digest"),
    (f"{DIGEST}  a\n{DIGEST}  /etc/passwd\n", 2, "'/etc/passwd' is absolute"),
    (f"{DIGEST}  ../other/a\n", 1, "'../other/a' climbs out of the checkpoint folder"),
    (f"{DIGEST}  sub/../../a\n", 1, "climbs out of the checkpoint folder"),
    (f"{DIGEST}  .\n", 1, "is the folder itself"),
    (f"{DIGEST}  a\n{DIGEST}  ./a\n", 2, "'a' is listed twice (first on line 1)"),
    (f"{DIGEST}  {'x' * 4100}\n", 1, "longer than 4096 characters"),
    (f"\\{DIGEST}  a\\qb\n", 1, "unknown escape '\\\\q'"),
    (f"{DIGEST}  a\0b\n", 1, "NUL character"),
]


@pytest.mark.parametrize("text, line_no, reason", BAD_LINES)
def test_each_bad_line_is_one_error_naming_the_file_and_line(tmp_path, text, line_no, reason):
    manifest = tmp_path / "m.sha256"
    manifest.write_text(text)
    with pytest.raises(InputError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert message.startswith(f"--manifest {manifest}: line {line_no}: ")
    assert reason in message
    assert "\n" not in message


def test_non_utf8_names_its_line(tmp_path):
    manifest = tmp_path / "m"
    manifest.write_bytes(f"{DIGEST}  a\n{DIGEST}  ".encode() + b"caf\xe9\n")
    with pytest.raises(InputError, match=r"^--manifest .*: line 2: not UTF-8 text"):
        read_manifest(manifest)


def test_refuses_more_entries_than_the_bound(tmp_path):
    manifest = tmp_path / "m"
    manifest.write_text("".join(f"{DIGEST}  f{i}\n" for i in range(MAX_ENTRIES + 1)))
    with pytest.raises(InputError, match=rf"^--manifest .*: line {MAX_ENTRIES + 1}: more than 100,000 entries"):
        read_manifest(manifest)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b"#" * (MAX_BYTES + 1)), "over 16 MiB"),
        (lambda p: None, "cannot read (No such file or directory)"),
        (lambda p: p.mkdir(), "cannot read (Is a directory)"),
    ],
    ids=["too-big", "missing", "a-directory"],
)
def test_unusable_manifest_files(tmp_path, make, reason):
    manifest = tmp_path / "m"
    make(manifest)
    with pytest.raises(InputError) as caught:
        read_manifest(manifest)
    assert str(caught.value).startswith(f"--manifest {manifest}: {reason}")


# compare


def test_one_changed_byte_of_the_same_size_is_wrong_content(tmp_path):
    (shard,) = make_files(tmp_path, {"model.safetensors": 3 * CHUNK_BYTES + 5})
    expected = relative_digests(sha256_files([shard]).digests, tmp_path)
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.seek(2 * CHUNK_BYTES + 1)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    assert shard.stat().st_size == size
    actual = relative_digests(sha256_files([shard]).digests, tmp_path)

    assert compare(expected, actual) == [
        Finding("model.safetensors", "wrong-content", expected["model.safetensors"], actual["model.safetensors"])
    ]
    assert compare(expected, expected) == []


def test_missing_and_unlisted_files(tmp_path):
    other = "cd" * 32
    findings = compare({"a": DIGEST, "b": DIGEST}, {"b": DIGEST, "c": other})
    assert findings == [Finding("a", "missing", DIGEST, None), Finding("c", "unlisted", None, other)]
    assert [f.is_warning for f in findings] == [False, True]


# A stand-in for the hashing child: reads the request, says one line of the protocol's, then ends. Each
# case is something a broken or mismatched child could send; none may crash the parent or be believed.
BROKEN_CHILD = """
import json, sys
request = json.loads(sys.stdin.readline())
sys.stdout.write({line!r})
sys.stdout.flush()
sys.stderr.write("child: {why}\\n")
sys.exit({code})
"""
GOOD_DIGEST = hashlib.sha256(b"a").hexdigest()


@pytest.mark.parametrize(
    "line, code, reason",
    [
        ("not json\n", 0, "sent a line that is not JSON"),
        ('{"hello": 1}\n', 0, "sent an unknown message"),
        ("[1, 2]\n", 0, "not an object"),
        (f'{{"file": 99, "sha256": "{GOOD_DIGEST}", "check": null}}\n', 0, "named file 99, which it was not given"),
        ('{"done": {"' + "9" * 5000 + '": 1}}\n', 0, "which it was not given"),
        ('{"done": {"0": -5}}\n', 0, "not a byte count"),
        ('{"file": 0, "sha256": "xyz", "check": null}\n', 0, "sent a malformed result"),
        ('{"io": {"read": "lots"}}\n', 0, "malformed read counts"),
        ("x" * (70 * 1024), 0, "sent a line over"),
        ("", 3, "failed (child: gave up)"),
    ],
)
def test_a_broken_hashing_child_is_one_reason_per_file_never_a_crash(tmp_path, monkeypatch, line, code, reason):
    from avatardoctor.ckpt import hashing

    script = tmp_path / "child.py"
    script.write_text(BROKEN_CHILD.format(line=line, why="gave up", code=code))
    monkeypatch.setattr(hashing, "CHILD_COMMAND", (sys.executable, str(script)))
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for f in files:
        f.write_bytes(b"a")
    result = sha256_files(files)
    assert result.digests == {} and set(result.errors) == set(files)
    assert all(e.startswith("not hashed: the hashing process ") and reason in e for e in result.errors.values()), (
        result.errors
    )


def test_what_a_child_hashed_before_it_broke_is_kept(tmp_path, monkeypatch):
    from avatardoctor.ckpt import hashing

    script = tmp_path / "child.py"
    line = f'{{"file": 0, "sha256": "{GOOD_DIGEST}", "check": null}}\nnot json\n'
    script.write_text(BROKEN_CHILD.format(line=line, why="", code=0))
    monkeypatch.setattr(hashing, "CHILD_COMMAND", (sys.executable, str(script)))
    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for f in files:
        f.write_bytes(b"a")
    result = sha256_files(files)
    assert result.digests == {files[0]: GOOD_DIGEST} and list(result.errors) == [files[1]]
