"""Fuzz: checkpoint files (safetensors headers, .pth zips, the index), checkpoint folders, and the input
files (--image, --audio), each driven through the real CLI. Any traceback, hang or crash fails.

Every generated case is one file placed somewhere, or a list of changes to a tiny checkpoint folder:
`replay(kind, content)` puts it in place and runs the commands that read it. A crasher saved as
corpus/ckpt/<kind>-<anything> is replayed the same way on every run.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import soundfile
from harness import corpus_files, fuzz_settings, run_cli
from hypothesis import strategies as st
from PIL import Image

from avatardoctor.ckpt import layout
from avatardoctor.ckpt.safetensors_file import DTYPE_BITS
from avatardoctor.ckpt.skeleton import write_skeleton

SHARD = "diffusion_pytorch_model-00001-of-00004.safetensors"
MACHINE = ("--machine", "5xH800")
_TINY: list[Path] = []  # one tiny checkpoint per session, copied for each case that changes it


def tiny_checkpoint() -> Path:
    if not _TINY:
        _TINY.append(write_skeleton(Path(tempfile.mkdtemp(prefix="fuzz-ckpt-")) / "tiny", tiny=True))
    return _TINY[0]


@contextmanager
def checkpoint_copy():
    with tempfile.TemporaryDirectory(prefix="fuzz-ckpt-") as tmp:
        root = Path(tmp) / "ckpt"
        shutil.copytree(tiny_checkpoint(), root, symlinks=True)
        try:
            yield root
        finally:
            for folder, dirs, _ in os.walk(root):  # a case may have closed a folder: reopen it so it can be removed
                for d in dirs:
                    if not Path(folder, d).is_symlink():
                        Path(folder, d).chmod(0o755)


def verify(root: Path, *flags: str) -> None:
    run_cli("ckpt", "verify", str(root), *flags)
    run_cli("ckpt", "verify", str(root), "--json", *flags)


# ---- what each kind of case is and how it is replayed ------------------------------------------------


def replay(kind: str, content: bytes) -> None:
    """Put content where `kind` says and run every command that reads it (human and JSON output)."""
    if kind == "folder":
        with checkpoint_copy() as root:
            for op in json.loads(content):
                try:
                    apply_change(root, *op)
                except OSError:
                    pass  # a change an earlier one made impossible (its folder is now a file): the case is the rest
            verify(root)
            verify(root, "--deep")
        return
    target = {"shard": SHARD, "pth": layout.VAE_FILE, "index": layout.UPSTREAM_INDEX, "config": layout.CONFIG}
    if kind in target:
        with checkpoint_copy() as root:
            (root / target[kind]).write_bytes(content)
            verify(root, *(["--deep"] if kind == "pth" else []))
            run_cli("predict", *MACHINE, "--ckpt-dir", str(root))
        return
    with tempfile.TemporaryDirectory(prefix="fuzz-input-") as tmp:
        path = Path(tmp) / {"image": "face.png", "audio": "speech.wav"}[kind]
        path.write_bytes(content)
        run_cli("check", *MACHINE, f"--{kind}", str(path))
        run_cli("check", *MACHINE, f"--{kind}", str(path), "--json")
        if kind == "image":
            run_cli("predict", *MACHINE, "--image", str(path))


CHANGES = ("remove", "empty", "folder", "fifo", "loop", "dangling", "garbage", "closed", "odd-name")


def apply_change(root: Path, change: str, rel: str, data: str = "") -> None:
    """One thing a download, a copy or a user can do to a checkpoint file (or to a folder on its path)."""
    path = root / rel
    if change == "odd-name":  # a file whose name holds escapes, non-UTF-8 bytes or newlines
        name = os.fsdecode(data.replace("/", "_").replace("\0", "_").encode("utf-8", "surrogateescape") + b"\xff")
        path.with_name(path.name + name).write_bytes(b"x")
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path) if change != "closed" else None
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if change == "empty":
        path.touch()
    elif change == "folder":
        path.mkdir()
    elif change == "fifo":
        os.mkfifo(path)
    elif change == "loop":
        path.symlink_to(path.name)
    elif change == "dangling":
        path.symlink_to("nowhere")
    elif change == "garbage":
        path.write_bytes(data.encode("utf-8", "surrogateescape"))
    elif change == "closed":  # root reads it anyway; a non-root run sees permission denied
        path.mkdir(exist_ok=True)
        path.chmod(0)


# ---- generators --------------------------------------------------------------------------------------

JSON_TOKENS = (
    "0",
    "-0",
    "1",
    "-1",
    "8",
    "1.5",
    "1e400",
    "18446744073709551616",
    "9" * 400,
    "NaN",
    "null",
    "true",
    '""',
    '"\\ud800"',
    '"\\u001b[2J"',
    "[]",
    "{}",
)
names = st.one_of(st.text(max_size=6), st.sampled_from(["__metadata__", "\x1b[2J", "\ud800", "a", "a"])).map(json.dumps)


@st.composite
def safetensors_files(draw) -> bytes:
    """Headers near the valid ones (every dtype, real-looking offsets) with things broken on purpose."""
    entries, position = [], 0
    for _ in range(draw(st.integers(0, 4))):
        dtype = draw(st.one_of(st.sampled_from(sorted(DTYPE_BITS)).map(json.dumps), st.sampled_from(JSON_TOKENS)))
        shape = draw(st.lists(st.one_of(st.integers(0, 6).map(str), st.sampled_from(JSON_TOKENS)), max_size=4))
        size = draw(st.integers(0, 64))
        offsets = draw(
            st.one_of(
                st.just(f"[{position},{position + size}]"),
                st.lists(st.sampled_from(JSON_TOKENS), max_size=3).map(lambda t: f"[{','.join(t)}]"),
            )
        )
        fields = [f'"dtype":{dtype}', f'"shape":[{",".join(shape)}]', f'"data_offsets":{offsets}'][
            : draw(st.integers(1, 3))
        ]
        fields += draw(st.lists(st.sampled_from(JSON_TOKENS).map(lambda t: f'"extra":{t}'), max_size=1))
        entries.append(f"{draw(names)}:{{{','.join(fields)}}}")
        position += size
    if draw(st.booleans()):
        entries.append(
            f'"__metadata__":{draw(st.sampled_from(JSON_TOKENS + (chr(123) + chr(34) + "k" + chr(34) + ":" + chr(34) + "v" + chr(34) + "}",)))}'
        )
    header = ("{" + ",".join(entries) + "}").encode()
    header = draw(
        st.one_of(st.just(header), st.binary(max_size=64), st.just(header[: draw(st.integers(0, len(header)))]))
    )
    length = draw(
        st.one_of(
            st.just(len(header)), st.integers(0, 2**64 - 1), st.integers(max(0, len(header) - 2), len(header) + 2)
        )
    )
    return (
        struct.pack("<Q", length)
        + header
        + bytes(draw(st.sampled_from([position, max(0, position - 1), position + 1, 0])))
    )


def _mutated(draw, original: bytes) -> bytes:
    """original with a few bytes overwritten, a piece cut out, or the end cut off."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["byte", "cut", "end", "ff"]))
        if how == "byte":
            data[at] = draw(st.integers(0, 255))
        elif how == "ff":
            data[at : at + 4] = b"\xff\xff\xff\xff"[: len(data) - at]
        elif how == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    return bytes(data)


@st.composite
def pth_files(draw) -> bytes:
    buffer = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    with zipfile.ZipFile(buffer, "w", method) as z:
        z.writestr(draw(st.sampled_from(["Wan2.1_VAE/data.pkl", "data.pkl", "a/data.pkl"])), b"\x80\x02}q\x00.")
        for name in draw(
            st.lists(
                st.sampled_from(["Wan2.1_VAE/data/0", "Wan2.1_VAE/data/1", "Wan2.1_VAE/data/\x1b[2J", "../x"]),
                unique=True,
            )
        ):
            z.writestr(name, bytes(draw(st.integers(0, 300))))
    return _mutated(draw, buffer.getvalue())


@st.composite
def folder_changes(draw) -> bytes:
    files = sorted(p.relative_to(tiny_checkpoint()).as_posix() for p in tiny_checkpoint().rglob("*"))
    change = st.tuples(st.sampled_from(CHANGES), st.sampled_from(files), st.text(max_size=40))
    return json.dumps(draw(st.lists(change, min_size=1, max_size=4))).encode()


@st.composite
def index_files(draw) -> bytes:
    weight_map = draw(
        st.dictionaries(
            st.text(max_size=8),
            st.one_of(
                st.sampled_from([SHARD, "../../etc/passwd", "/abs", "", "x\x1b[2J", "\ud800.safetensors"]),
                st.text(max_size=8),
            ),
            max_size=4,
        )
    )
    doc = {
        "metadata": {"total_size": draw(st.one_of(st.integers(-5, 10**30), st.text(max_size=3), st.none()))},
        "weight_map": weight_map,
    }
    return _mutated(draw, json.dumps(doc).encode())


def _image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (180, 140, 120)).save(out, fmt)
    return out.getvalue()


@st.composite
def image_files(draw) -> bytes:
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    original = _image_bytes(fmt, (draw(st.integers(1, 40)), draw(st.integers(1, 40))))
    if fmt == "PNG" and draw(st.booleans()):  # claim a huge image in the header (CRC left wrong, or not)
        original = (
            original[:16]
            + struct.pack(">II", draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))
            + original[24:]
        )
    return draw(st.one_of(st.just(_mutated(draw, original)), st.binary(max_size=200)))


@st.composite
def audio_files(draw) -> bytes:
    fmt = draw(st.sampled_from(["WAV", "FLAC", "OGG"]))
    rate, channels = draw(st.sampled_from([8000, 16000, 44100])), draw(st.integers(1, 3))
    samples = (0.3 * np.sin(np.arange(draw(st.integers(0, 4000))) / 7)).astype(np.float32)
    out = io.BytesIO()
    soundfile.write(out, np.repeat(samples[:, None], channels, axis=1), rate, format=fmt)
    original = out.getvalue()
    if fmt == "WAV" and draw(
        st.booleans()
    ):  # the fmt chunk's claims: format tag, channels, rate, byte rate, block align, bits
        fields = [draw(st.integers(0, 2**16 - 1)) for _ in range(2)] + [
            draw(st.integers(0, 2**32 - 1)) for _ in range(2)
        ]
        fields += [draw(st.integers(0, 2**16 - 1)) for _ in range(2)]
        original = original[:20] + struct.pack("<HHIIHH", *fields) + original[36:]
    return draw(st.one_of(st.just(_mutated(draw, original)), st.binary(max_size=200)))


# ---- the tests ---------------------------------------------------------------------------------------
# Each case runs two to five commands; the slow kinds (a copied folder, --deep) take fewer CI examples.


@fuzz_settings(ci_examples=15)
@hypothesis.given(content=safetensors_files())
def test_fuzz_safetensors_shards(content):
    replay("shard", content)


@fuzz_settings(ci_examples=8)
@hypothesis.given(content=pth_files())
def test_fuzz_pth_archives_deep(content):
    replay("pth", content)


@fuzz_settings()
@hypothesis.given(content=index_files())
def test_fuzz_shard_index(content):
    replay("index", content)


@fuzz_settings(ci_examples=10)
@hypothesis.given(content=folder_changes())
def test_fuzz_checkpoint_folders(content):
    replay("folder", content)


@fuzz_settings(ci_examples=20)
@hypothesis.given(content=image_files())
def test_fuzz_image_inputs(content):
    replay("image", content)


@fuzz_settings()
@hypothesis.given(content=audio_files())
def test_fuzz_audio_inputs(content):
    replay("audio", content)


@pytest.mark.parametrize("path", corpus_files("ckpt"), ids=lambda p: p.name)
def test_ckpt_corpus(path):
    replay(path.name.split("-")[0], path.read_bytes())
