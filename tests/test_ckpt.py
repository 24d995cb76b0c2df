"""Checkpoint verification: real files on disk, broken the ways downloads break.

Full-size skeletons (real headers, sparse data) stand in for the 45 GB download; tiny ones hold
real random bytes. Every bad input is a clear one-line error naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from avatardoctor.checks import ckpt as ckpt_checks
from avatardoctor.checks import run_checks
from avatardoctor.checks.base import Status
from avatardoctor.ckpt import layout
from avatardoctor.ckpt.compare import compare_tensors
from avatardoctor.ckpt.components import reference_summary, reference_tensors
from avatardoctor.ckpt.pth import first_damaged_entry, read_pth
from avatardoctor.ckpt.safetensors_file import (
    CkptFileError,
    read_header,
    write_safetensors,
)
from avatardoctor.ckpt.scan import scan_checkpoint
from avatardoctor.ckpt.skeleton import write_skeleton
from avatardoctor.doctor import checkpoint_context
from avatardoctor.errors import InputError
from avatardoctor.units import GIB

AS_ROOT = os.geteuid() == 0
SHARD1 = "diffusion_pytorch_model-00001-of-00004.safetensors"


def raw_safetensors(path: Path, header: bytes | dict, data: bytes = b"", declared_len: int | None = None) -> Path:
    """A safetensors file with exactly this header (bytes or JSON-able), for breaking it on purpose."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + data)
    return path


def tensor(dtype="BF16", shape=(2, 2), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.fixture
def skeleton_copy(full_skeleton, tmp_path) -> Path:
    """A private copy of the full-size skeleton to break (sparse copy: no disk to speak of)."""
    dst = tmp_path / "Wan2.2-S2V-14B"
    subprocess.run(["cp", "-r", "--sparse=always", str(full_skeleton), str(dst)], check=True)
    return dst


def results(root: Path, start: Path | None = None) -> dict:
    ctx = checkpoint_context(str(root), None, None, cwd=start or Path("/"))
    return {r.id: r for r in run_checks(ctx, ckpt_checks.CHECKS).results}


# ---- the safetensors header reader --------------------------------------------------------------


def test_reads_a_valid_header(tmp_path):
    path = tmp_path / "ok.safetensors"
    write_safetensors(
        path, [("a", "BF16", (2, 3)), ("b", "F32", (4,)), ("empty", "F16", (0, 5))], os.urandom, {"format": "pt"}
    )
    f = read_header(path)
    assert [(t.name, t.dtype, t.shape, t.begin, t.end) for t in f.tensors] == [
        ("a", "BF16", (2, 3), 0, 12),
        ("b", "F32", (4,), 12, 28),
        ("empty", "F16", (0, 5), 28, 28),
    ]
    assert f.metadata == {"format": "pt"} and f.data_bytes == 28 and f.header_bytes % 8 == 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda p: raw_safetensors(p, {"a": tensor()}, bytes(8), declared_len=10_000), "truncated: "),
        (lambda p: raw_safetensors(p, {"a": tensor()}, bytes(8), declared_len=2**63), "over the 100 MB limit"),
        (lambda p: raw_safetensors(p, b"{not json at all}"), "header is not valid JSON"),
        (lambda p: raw_safetensors(p, b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (lambda p: raw_safetensors(p, {"a": tensor(dtype="BF17")}, bytes(8)), "unknown dtype 'BF17'"),
        (
            lambda p: raw_safetensors(p, {"a": tensor(offsets=(0, 8)), "b": tensor(offsets=(4, 12))}, bytes(12)),
            "overlaps",
        ),
        (lambda p: raw_safetensors(p, {"a": tensor(shape=(-2, 2))}, bytes(8)), "non-negative"),
        (lambda p: raw_safetensors(p, {"a": tensor(offsets=(0, 8))}, bytes(7)), "truncated: "),
        (lambda p: raw_safetensors(p, {"a": tensor(offsets=(0, 8))}, bytes(9)), "1 extra bytes after the last tensor"),
        (lambda p: raw_safetensors(p, {"a": tensor(offsets=(0, 6))}, bytes(6)), "needs 8"),
        (lambda p: raw_safetensors(p, {"a": tensor(offsets=(4, 12))}, bytes(12)), "a gap of 4 bytes"),
        (lambda p: raw_safetensors(p, b'{"a": 1, "a": 2}'), "appears twice"),
        (lambda p: raw_safetensors(p, b"[1, 2]"), "not an object"),
        (lambda p: raw_safetensors(p, {"__metadata__": {"k": 1}}), "__metadata__ must map strings to strings"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"\x01\x02"), "less than the 8-byte header length"),
        (lambda p: p.mkdir(), "a directory where a file should be"),
    ],
)
def test_bad_headers_are_one_line_errors_naming_the_file(tmp_path, build, message):
    path = tmp_path / "shard.safetensors"
    build(path)
    with pytest.raises(CkptFileError) as err:
        read_header(path)
    text = str(err.value)
    assert text.startswith("shard.safetensors: ") and message in text and "\n" not in text


def test_truncated_shard_says_how_much_arrived(tmp_path):
    path = tmp_path / "s.safetensors"
    write_safetensors(path, [("a", "BF16", (1024,))], os.urandom)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 1)
    with pytest.raises(CkptFileError, match=f"truncated: {size - 1:,} bytes of {size:,}"):
        read_header(path)


def test_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CkptFileError, match="cannot read"):
        read_header(tmp_path / "a")


@pytest.mark.skipif(AS_ROOT, reason="root reads any file")
def test_unreadable_file(tmp_path):  # pragma: no cover - CI runs as root
    path = tmp_path / "s.safetensors"
    write_safetensors(path, [("a", "BF16", (4,))], os.urandom)
    path.chmod(0)
    with pytest.raises(CkptFileError, match="cannot read"):
        read_header(path)


def test_header_reader_survives_arbitrary_bytes():
    """Fuzz: any bytes give a header or a CkptFileError; never a crash, hang or unbounded memory."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=400, deadline=None, derandomize=True)
    @hypothesis.given(
        length=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 300)),
        body=st.one_of(
            st.binary(max_size=300),
            st.recursive(
                st.none() | st.integers() | st.text(max_size=5),
                lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
            ).map(lambda v: json.dumps(v).encode()),
        ),
    )
    def run(length, body):
        path = Path(os.environ["FUZZ_DIR"]) / "f.safetensors"
        path.write_bytes(struct.pack("<Q", length) + body)
        try:
            read_header(path)
        except CkptFileError:
            pass

    run()


@pytest.mark.parametrize(
    "header, message",
    [
        ({"a": tensor(dtype=["BF16"])}, "unknown dtype"),  # was a TypeError (unhashable list)
        ({"a": tensor(dtype={"x": 1})}, "unknown dtype"),
        (
            {"a": tensor(shape=[2**62] * 2000)},
            "overflows a 64-bit size",
        ),  # a product of 38,000 digits: was a ValueError
        ({"a": tensor(shape=[0, 2**64])}, "non-negative integers"),  # not a usize: the loader refuses it too
        ({"a": tensor(shape=[2**40, 2**40, 0])}, "overflows a 64-bit size"),  # the loader multiplies in order
        (b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 0]}}', "number out of range"),
        (b'{"a": {"dtype": "U8", "shape": [' + b"9" * 300 + b'], "data_offsets": [0, 0]}}', "non-negative integers"),
        (b'{"a": {"dtype": "U8", "shape": [1e400], "data_offsets": [0, 0]}}', "number out of range"),
        (b'{"a": {"dtype": "U8", "shape": [-0], "data_offsets": [0, 0]}}', "non-negative integers"),
        (b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 0]}}', "NaN is not JSON"),
        (b'{"\\ud800x": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}', "lone UTF-16 surrogate"),
        ({"a": tensor(dtype="F4", shape=[3], offsets=(0, 2))}, "do not fill whole bytes"),
    ],
)
def test_malformed_header_values_are_one_line_errors(tmp_path, header, message):
    path = raw_safetensors(tmp_path / "shard.safetensors", header)
    with pytest.raises(CkptFileError, match=message):
        read_header(path)


@pytest.mark.parametrize(
    "dtype, shape, nbytes", [("C64", (3,), 24), ("F4", (6,), 3), ("F6_E2M3", (4,), 3), ("F8_E5M2FNUZ", (2, 2), 4)]
)
def test_every_dtype_the_loader_knows_is_read(tmp_path, dtype, shape, nbytes):
    path = raw_safetensors(
        tmp_path / "s.safetensors",
        {"t": tensor(dtype, shape, (0, nbytes)), "x": tensor("U8", (1,), (nbytes, nbytes + 1))},
        bytes(nbytes + 1),
    )
    assert [(t.dtype, t.nbytes) for t in read_header(path).tensors] == [(dtype, nbytes), ("U8", 1)]


def test_a_huge_header_with_a_repeated_name_is_refused_in_linear_time(tmp_path):
    """160,000 names (a 9 MB header) and a repeat at the end: the quadratic search took minutes (83 s for
    80,000). The 120 s limit is not a speed measure, only a bound far above linear time on a busy machine."""
    body = ",".join(f'"t{i}":{{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}' for i in range(160_000))
    path = raw_safetensors(tmp_path / "big.safetensors", ("{" + body + ',"t7":{}}').encode())
    code = "import sys, pathlib; from avatardoctor.ckpt.safetensors_file import read_header; read_header(pathlib.Path(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert "CkptFileError: big.safetensors: header refused: the name 't7' appears twice" in done.stderr


METADATA_VALUES = ["null", "{}", '{"k":"v"}', '{"k":1}', "[]", '{"k":"a","k":"b"}']
SAFETENSORS_08 = tuple(int(x) for x in __import__("safetensors").__version__.split(".")[:2]) >= (0, 8)


@pytest.mark.skipif(not SAFETENSORS_08, reason="the reader follows safetensors 0.8's dtypes and rules")
def test_header_reader_agrees_with_the_safetensors_loader():
    """Differential: on generated small files (valid, nearly valid, broken), read_header accepts exactly
    when safetensors.safe_open does. The one documented difference: a name given twice, which the
    loader accepts keeping the last value silently, and read_header refuses (which tensor a loader
    sees would depend on its JSON parser)."""
    hypothesis = pytest.importorskip("hypothesis")
    from safetensors import SafetensorError, safe_open

    from avatardoctor.ckpt.safetensors_file import DTYPE_BITS

    st = hypothesis.strategies
    numbers = st.sampled_from(
        ["0", "1", "2", "3", "-0", "-1", "1.0", "1e400", "18446744073709551616", "4294967296", "2.5"]
    )
    dims = st.one_of(st.integers(0, 4).map(str), numbers)
    dtype = st.one_of(
        st.sampled_from(sorted(DTYPE_BITS)), st.sampled_from(['"C128"', '"bf16"', "[]", "{}", "1", "null"])
    )
    name = st.one_of(
        st.text(min_size=1, max_size=4).map(lambda n: json.dumps(n)),
        st.sampled_from(['"\\ud800"', '"\\udc00a"', '"\\ud83d\\ude00"', '"__metadata__"']),
    )

    @st.composite
    def files(draw):
        entries, position, names = [], 0, []
        for _ in range(draw(st.integers(0, 3))):
            d = draw(dtype)
            shape = draw(st.lists(dims, max_size=3))
            bits = DTYPE_BITS.get(d, 8)
            numel = 1
            for x in shape:
                numel *= int(x) if x.lstrip("-").isdigit() else 1
            size = max(0, numel) * bits // 8 + draw(st.sampled_from([0, 0, 0, 1, -1]))
            begin = position + draw(st.sampled_from([0, 0, 0, 1, -1]))
            fields = [
                f'"dtype":{json.dumps(d) if d in DTYPE_BITS else d}',
                f'"shape":[{",".join(shape)}]',
                f'"data_offsets":[{begin},{begin + size}]',
            ]
            fields += draw(
                st.lists(st.sampled_from(['"extra":1', '"extra":-0', '"dtype":"U8"', '"other":1e400']), max_size=1)
            )
            n = draw(name)
            names.append(n)
            entries.append(f"{n}:{{{','.join(draw(st.permutations(fields)))}}}")
            position = max(position, begin + size)
        if draw(st.booleans()):
            entries.append('"__metadata__":' + draw(st.sampled_from(METADATA_VALUES)))
        header = (
            "{" + ",".join(draw(st.permutations(entries))) + "}" + draw(st.sampled_from(["", "  ", "\n", "x", "\x00"]))
        ).encode()
        data = bytes(min(max(0, position + draw(st.sampled_from([0, 0, 0, 1, -1]))), 2**16))  # a huge shape: truncated
        return struct.pack("<Q", len(header)) + header + data

    @hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @hypothesis.given(content=files())
    def run(content):
        path = Path(os.environ["FUZZ_DIR"]) / "d.safetensors"
        path.write_bytes(content)
        try:
            with safe_open(path, "np"):
                loader_accepts = True
        except SafetensorError:
            loader_accepts = False
        try:
            header = read_header(path)
        except CkptFileError:
            assert not loader_accepts or _repeats_a_name(content), content
        else:
            assert loader_accepts, (content, header)

    run()


def _repeats_a_name(content: bytes) -> bool:
    """Whether any JSON object in the header names a key twice (the documented difference)."""

    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise KeyError("repeat")
        return dict(items)

    try:
        json.loads(
            content[8 : 8 + struct.unpack("<Q", content[:8])[0]].decode("utf-8", "surrogatepass"),
            object_pairs_hook=pairs,
        )
    except KeyError:
        return True
    except ValueError:
        return False
    return False


@pytest.fixture(autouse=True)
def _fuzz_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FUZZ_DIR", str(tmp_path))


# ---- .pth archives -------------------------------------------------------------------------------


def test_pth_listing_gives_the_parameter_bytes_without_unpickling(full_skeleton):
    archive = read_pth(full_skeleton / layout.T5_FILE)
    assert archive.data_bytes == reference_summary().t5.bytes and archive.storages == 242


def test_pth_that_is_not_a_zip(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    path.write_bytes(b"\x80\x02}q\x00.")  # a legacy pickle: never loaded
    with pytest.raises(CkptFileError, match="not a zip archive"):
        read_pth(path)


def test_truncated_pth(tmp_path):
    path = tmp_path / "t5.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("t5/data.pkl", b"x")
        z.writestr("t5/data/0", os.urandom(4096))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(CkptFileError, match="truncated or damaged"):
        read_pth(path)


def test_pth_crc_catches_changed_bytes(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    vae = root / layout.VAE_FILE
    assert first_damaged_entry(vae) is None
    with zipfile.ZipFile(vae) as z:
        info = z.getinfo("Wan2.1_VAE/data/0")
    with open(vae, "r+b") as f:  # flip one byte inside the first storage's data
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + 1)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert first_damaged_entry(vae) == "entry Wan2.1_VAE/data/0 fails its CRC-32"


# ---- the whole folder ------------------------------------------------------------------------------


def test_complete_skeleton_passes_with_sizes_in_gib(full_skeleton):
    r = results(full_skeleton)
    assert all(x.status is Status.PASS for x in r.values()), {k: x.summary for k, x in r.items()}
    assert r["ckpt.dit"].summary == "DiT 30.35 GiB (16.30 B params), matches Wan2.2-S2V-14B"
    assert r["ckpt.dit"].details == ("FSDP units: 40 blocks of 0.655 GiB and the root 4.17 GiB",)
    assert r["ckpt.t5"].summary == "umT5-XXL text encoder 10.58 GiB (5.68 B params)"
    assert r["ckpt.vae"].summary == "Wan2.1 VAE 0.47 GiB (0.13 B params)"


def test_component_summary_comes_from_the_headers(full_skeleton):
    summary = scan_checkpoint(str(full_skeleton), Path("/")).summary
    assert summary.source == f"checkpoint {full_skeleton}"
    assert summary.dit.params == 16_295_755_609 and summary.dit.bytes == 32_591_511_218
    assert len(summary.dit_units.blocks) == 40
    assert {b.params for b in summary.dit_units.blocks} == {351_394_304}
    assert summary.dit_units.root.params == 2_239_983_449  # the seeds' "4.17 GiB unshard"
    assert round(summary.dit_units.root.bytes / GIB, 2) == 4.17
    assert summary.t5.bytes == 11_361_820_672 and summary.vae.bytes == 507_570_124


def test_shard_truncated_by_one_byte(skeleton_copy):
    shard = skeleton_copy / SHARD1
    size = shard.stat().st_size
    with open(shard, "r+b") as f:
        f.truncate(size - 1)
    r = results(skeleton_copy)
    assert r["ckpt.dit"].status is Status.FAIL
    assert r["ckpt.dit"].summary == f"{SHARD1}: truncated: {size - 1:,} bytes of {size:,}"
    assert "huggingface-cli download Wan-AI/Wan2.2-S2V-14B" in r["ckpt.dit"].remedy


def test_shard_with_one_extra_byte(skeleton_copy):
    with open(skeleton_copy / SHARD1, "ab") as f:
        f.write(b"\0")
    assert "1 extra bytes" in results(skeleton_copy)["ckpt.dit"].summary


def test_missing_files_are_named_with_their_component(skeleton_copy):
    (skeleton_copy / layout.VAE_FILE).unlink()
    (skeleton_copy / "diffusion_pytorch_model-00003-of-00004.safetensors").unlink()
    r = results(skeleton_copy)
    assert r["ckpt.layout"].status is Status.FAIL
    assert r["ckpt.layout"].data["missing"] == ["diffusion_pytorch_model-00003-of-00004.safetensors", "Wan2.1_VAE.pth"]
    assert "missing: Wan2.1_VAE.pth (Wan2.1 VAE)" in r["ckpt.layout"].details
    assert r["ckpt.vae"].status is Status.SKIP and r["ckpt.dit"].status is Status.SKIP


def test_index_naming_a_missing_shard_and_escaping_names(skeleton_copy):
    index_path = skeleton_copy / layout.UPSTREAM_INDEX
    index = json.loads(index_path.read_text())
    index["weight_map"]["patch_embedding.weight"] = "diffusion_pytorch_model-00009-of-00004.safetensors"
    index_path.write_text(json.dumps(index))
    r = results(skeleton_copy)
    assert "diffusion_pytorch_model-00009-of-00004.safetensors" in r["ckpt.layout"].data["missing"]
    index["weight_map"]["patch_embedding.weight"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    r = results(skeleton_copy)
    assert r["ckpt.dit"].status is Status.FAIL
    assert "'../../etc/passwd' points outside the checkpoint folder" in r["ckpt.dit"].summary


def test_index_disagreeing_with_the_shards(skeleton_copy):
    index_path = skeleton_copy / layout.UPSTREAM_INDEX
    index = json.loads(index_path.read_text())
    moved = next(n for n, s in index["weight_map"].items() if s == SHARD1)
    index["weight_map"][moved] = "diffusion_pytorch_model-00002-of-00004.safetensors"
    index["weight_map"]["ghost.weight"] = SHARD1
    index["metadata"]["total_size"] += 2
    index_path.write_text(json.dumps(index))
    r = results(skeleton_copy)["ckpt.index"]
    assert r.status is Status.FAIL
    assert (
        f"the index puts tensor {moved!r} in diffusion_pytorch_model-00002-of-00004.safetensors, which does not hold it"
        in r.details
    )
    assert f"the index puts tensor 'ghost.weight' in {SHARD1}, which does not hold it" in r.details
    assert any("metadata.total_size is 32,591,511,220 bytes, the shards hold 32,591,511,218" in d for d in r.details)


def test_a_tensor_in_two_shards(skeleton_copy):
    shard2 = skeleton_copy / "diffusion_pytorch_model-00002-of-00004.safetensors"
    first = read_header(skeleton_copy / SHARD1).tensors[0]
    specs = [(t.name, t.dtype, t.shape) for t in read_header(shard2).tensors] + [(first.name, first.dtype, first.shape)]
    write_safetensors(shard2, specs, None)
    r = results(skeleton_copy)["ckpt.index"]
    assert f"tensor {first.name!r} is in 2 shards" in r.details[0]


def test_directory_where_a_file_should_be_and_empty_file(skeleton_copy):
    (skeleton_copy / layout.T5_FILE).unlink()
    (skeleton_copy / layout.T5_FILE).mkdir()
    (skeleton_copy / layout.VAE_FILE).write_bytes(b"")
    r = results(skeleton_copy)
    assert r["ckpt.t5"].summary == f"{layout.T5_FILE}: a directory where a file should be"
    assert r["ckpt.vae"].summary == f"{layout.VAE_FILE}: empty (0 bytes)"


def test_symlink_loop_in_the_folder(skeleton_copy):
    (skeleton_copy / layout.VAE_FILE).unlink()
    (skeleton_copy / layout.VAE_FILE).symlink_to(skeleton_copy / layout.VAE_FILE)
    assert results(skeleton_copy)["ckpt.vae"].summary == f"{layout.VAE_FILE}: a symlink loop"


def test_pth_that_is_not_a_zip_in_the_folder(skeleton_copy):
    (skeleton_copy / layout.T5_FILE).write_bytes(b"<html>rate limited</html>")  # what a failed download saves
    r = results(skeleton_copy)["ckpt.t5"]
    assert r.status is Status.FAIL and "not a zip archive" in r.summary


def test_fp32_export_is_explained(tmp_path):
    root = tmp_path / "fp32"
    write_skeleton(root)
    index = json.loads((root / layout.UPSTREAM_INDEX).read_text())
    by_shard: dict[str, list] = {}
    for name, _dtype, shape in reference_tensors("dit"):
        by_shard.setdefault(index["weight_map"][name], []).append((name, "F32", shape))
    for shard, specs in by_shard.items():
        write_safetensors(root / shard, specs, None)
    index["metadata"]["total_size"] *= 2
    (root / layout.UPSTREAM_INDEX).write_text(json.dumps(index))
    r = results(root)["ckpt.dit"]
    assert r.status is Status.WARN
    assert "every tensor is F32 where Wan2.2-S2V-14B has BF16: a f32 export" in r.summary


def test_renamed_key_and_different_model_are_explained():
    ref = reference_tensors("dit")
    actual = {n: (d, s) for n, d, s in ref}
    actual["patch_embedding.w"] = actual.pop("patch_embedding.weight")
    diff = compare_tensors(actual, ref)
    assert diff.blocking == ("renamed: patch_embedding.weight -> patch_embedding.w",)
    other = {f"model.layers.{i}.weight": ("BF16", (4096, 4096)) for i in range(900)}
    assert compare_tensors(other, ref).blocking[0].startswith("a different model: 1,260 of the 1,260")


def test_seed_layout_is_recognised_and_told(tmp_path):
    root = write_skeleton(tmp_path / "seed", "seed")
    r = results(root)
    assert r["ckpt.layout"].status is Status.FAIL and r["ckpt.layout"].data["layout"] == "seed"
    assert layout.SEED_NOTE in r["ckpt.layout"].details
    assert layout.UPSTREAM_INDEX in r["ckpt.layout"].data["missing"]
    assert r["ckpt.index"].status is Status.PASS  # the seed's own shards are still verified


def test_relative_path_resolves_where_the_launch_starts(full_skeleton, tmp_path):
    checkout, elsewhere = tmp_path / "LiveAvatar", full_skeleton.parent
    checkout.mkdir()
    ctx = checkpoint_context(full_skeleton.name, checkout, None, cwd=elsewhere)
    r = {x.id: x for x in run_checks(ctx, ckpt_checks.CHECKS).results}["ckpt.layout"]
    assert r.status is Status.FAIL and r.summary == f"checkpoint folder {checkout / full_skeleton.name}: not found"
    assert any("exists, but the launch starts in" in d for d in r.details)
    assert r.remedy.startswith(f"--ckpt-dir {full_skeleton}")


def test_tiny_skeleton_holds_real_bytes(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    shard = read_header(root / SHARD1)
    with open(root / SHARD1, "rb") as f:
        f.seek(8 + shard.header_bytes)
        assert any(f.read(shard.data_bytes))
    files = [p for p in root.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20


def test_full_skeleton_is_sparse_and_full_size(full_skeleton):
    files = [p for p in full_skeleton.rglob("*") if p.is_file()]
    apparent = sum(p.stat().st_size for p in files)
    assert apparent > 42.5 * GIB  # the 45.7 GB download
    assert sum(p.stat().st_blocks * 512 for p in files) < 64 * 2**20


def test_skeleton_never_writes_over_files(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="never writes over files"):
        write_skeleton(tmp_path / "x")
    assert (tmp_path / "x" / "mine.txt").read_text() == "keep"


# ---- the commands ----------------------------------------------------------------------------------


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatardoctor", *args], capture_output=True, text=True, timeout=120)


def test_ckpt_verify_json_and_exit_codes(full_skeleton, skeleton_copy):
    ok = run_cli("ckpt", "verify", str(full_skeleton), "--json")
    assert ok.returncode == 0, ok.stdout
    doc = json.loads(ok.stdout)
    assert doc["schema"] == "avatardoctor.ckpt/1" and doc["verdict"] == "sound" and doc["layout"] == "upstream"
    assert doc["components"]["dit_units"]["root"] == {"params": 2239983449, "bytes": 4479966898}
    with open(skeleton_copy / SHARD1, "r+b") as f:
        f.truncate(1000)
    broken = run_cli("ckpt", "verify", str(skeleton_copy))
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    words = " ".join(broken.stdout.split())  # as printed, wrapped to the terminal
    assert "[✗] ckpt.dit" in words and f"{SHARD1}: truncated: 1,000 bytes of" in words


def test_ckpt_skeleton_command(tmp_path):
    r = run_cli("ckpt", "skeleton", str(tmp_path / "s"), "--tiny")
    assert r.returncode == 0 and "wrote a tiny upstream skeleton" in r.stdout
    again = run_cli("ckpt", "skeleton", str(tmp_path / "s"))
    assert again.returncode == 2 and again.stderr.startswith("Error: ") and "never writes over files" in again.stderr


def test_check_with_ckpt_dir_uses_the_checkpoints_own_sizes(full_skeleton):
    r = run_cli("check", "--machine", "5xH800", "--ckpt-dir", str(full_skeleton), "--json")
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["ckpt.dit"]["status"] == "pass"
    assert any(f"sizes from the checkpoint {full_skeleton}" in d for d in checks["fit.peak"]["details"])


# ---- deep verification ------------------------------------------------------------------------------


def test_deep_manifest_round_trip_and_a_flipped_byte(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    (root / "README.md").write_text("extra files are hashed too\n")
    manifest = tmp_path / "ckpt.sha256"
    wrote = run_cli("ckpt", "verify", str(root), "--write-manifest", str(manifest), "--json")
    doc = {c["id"]: c for c in json.loads(wrote.stdout)["checks"]}
    assert doc["ckpt.sha256"]["status"] == "pass" and "README.md" in doc["ckpt.sha256"]["data"]["sha256"]
    assert subprocess.run(["sha256sum", "-c", "--quiet", str(manifest)], cwd=root).returncode == 0
    assert (
        run_cli("ckpt", "verify", str(root), "--manifest", str(manifest), "--json").stdout.count('"status": "fail"')
        == 1
    )  # tiny shapes: ckpt.dit
    shard = root / SHARD1
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # same size, one bit different: only the content hash can tell
    shard.write_bytes(bytes(data))
    r = run_cli("ckpt", "verify", str(root), "--manifest", str(manifest), "--json")
    doc = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert r.returncode == 1
    assert doc["ckpt.sha256"]["status"] == "fail"
    assert doc["ckpt.sha256"]["summary"] == f"{SHARD1}: wrong content (its sha256 differs from ckpt.sha256)"
    assert doc["ckpt.index"]["status"] == "pass"  # the structure is still perfect


def test_deep_catches_a_damaged_pth_entry(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    vae = root / layout.VAE_FILE
    with zipfile.ZipFile(vae) as z:
        info = z.getinfo("Wan2.1_VAE/data/3")
    with open(vae, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra))
        f.write(b"\xff\xfe")
    doc = {c["id"]: c for c in json.loads(run_cli("ckpt", "verify", str(root), "--deep", "--json").stdout)["checks"]}
    assert doc["ckpt.crc"]["status"] == "fail"
    assert doc["ckpt.crc"]["summary"] == "Wan2.1_VAE.pth: entry Wan2.1_VAE/data/3 fails its CRC-32: the file is damaged"


def broken_pth(path: Path, how: str) -> None:
    """A deflated torch.save-like archive whose storage entry is broken: corrupt deflate data, the
    encryption flag set, or a compression method no zip reader knows (99)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("Wan2.1_VAE/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("Wan2.1_VAE/data/0", bytes(4096))
        info = z.getinfo("Wan2.1_VAE/data/0")
    raw = bytearray(path.read_bytes())
    local, central = info.header_offset, raw.rindex(b"PK\x01\x02")  # the storage entry's two headers
    if how == "deflate":
        start = local + 30 + len(info.filename) + struct.unpack_from("<H", raw, local + 28)[0]
        raw[start : start + info.compress_size] = b"\xff" * info.compress_size
    elif how == "encrypted":
        raw[local + 6] |= 1
        raw[central + 8] |= 1
    else:
        struct.pack_into("<H", raw, local + 8, 99)
        struct.pack_into("<H", raw, central + 10, 99)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "how, problem",
    [
        ("deflate", "entry Wan2.1_VAE/data/0 holds corrupt compressed data"),
        ("encrypted", "entry Wan2.1_VAE/data/0 is encrypted"),
        ("method", "entry Wan2.1_VAE/data/0 uses compression method 99"),
    ],
)
def test_deep_reports_an_entry_it_cannot_decompress(tmp_path, how, problem):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    broken_pth(root / layout.VAE_FILE, how)
    r = run_cli("ckpt", "verify", str(root), "--deep", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    crc = {c["id"]: c for c in json.loads(r.stdout)["checks"]}["ckpt.crc"]
    assert crc["status"] == "fail" and crc["summary"].startswith(f"{layout.VAE_FILE}: {problem}")
    human = run_cli("ckpt", "verify", str(root), "--deep")
    assert human.returncode == 1 and "Traceback" not in human.stderr and problem in " ".join(human.stdout.split())


def without_root_file_powers(*command: str) -> subprocess.CompletedProcess:
    """Run command as root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: file modes bind root too, so a
    chmod 000 folder is really unreadable (the tests run as root). Skips where setpriv cannot do it."""
    setpriv = [
        "setpriv",
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
        "--",
    ]
    probe = subprocess.run([*setpriv, "true"], capture_output=True) if AS_ROOT and shutil.which("setpriv") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "needs root and a setpriv that may drop capabilities (a non-root user: chmod suffices, not written)"
        )
    return subprocess.run([*setpriv, *command], capture_output=True, text=True, timeout=120)


def test_an_unreadable_subfolder_is_reported_not_missing(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    folder = root / layout.BY_KEY["wav2vec2"].files[0].split("/")[0]
    folder.chmod(0)
    try:
        plain = without_root_file_powers(sys.executable, "-m", "avatardoctor", "ckpt", "verify", str(root), "--json")
        deep = without_root_file_powers(
            sys.executable, "-m", "avatardoctor", "ckpt", "verify", str(root), "--deep", "--json"
        )
    finally:
        folder.chmod(0o755)
    checks = {c["id"]: c for c in json.loads(plain.stdout)["checks"]}
    assert not [f for f in checks["ckpt.layout"]["data"]["missing"] if f.startswith(folder.name)]
    assert "permission denied" in checks["ckpt.wav2vec2"]["summary"], checks["ckpt.wav2vec2"]
    assert deep.returncode == 1 and "Traceback" not in deep.stderr, deep.stderr
    sha = {c["id"]: c for c in json.loads(deep.stdout)["checks"]}["ckpt.sha256"]
    assert (
        sha["status"] == "fail"
        and f"{folder.name}: a folder that cannot be listed (Permission denied)" in sha["details"]
    )


def test_names_from_files_reach_the_terminal_escaped_and_the_json_exact(tmp_path):
    """A shard name in the index, a file name in the folder, a zip entry name: each may carry escape
    sequences (clear the screen, retitle the window). Human output shows them as \x1b; JSON keeps them."""
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    evil = "\x1b[2J\x1b]0;owned\x07\u202e"
    index = json.loads((root / layout.UPSTREAM_INDEX).read_text())
    index["weight_map"]["patch_embedding.weight"] = f"{evil}.safetensors"
    (root / layout.UPSTREAM_INDEX).write_text(json.dumps(index))
    (root / f"{evil}notes.txt").write_text("hashed by --deep, so listed\n")
    with zipfile.ZipFile(root / layout.VAE_FILE, "a") as z:
        z.writestr(f"{evil}entry", b"x" * 100)
    human = run_cli("ckpt", "verify", str(root), "--deep", "-v")
    assert human.returncode == 1 and "Traceback" not in human.stderr, human.stderr
    assert not {"\x1b", "\x07", "\u202e"} & set(human.stdout + human.stderr)
    assert "missing: \\x1b[2J\\x1b]0;owned\\x07\\u202e.safetensors" in human.stdout
    assert "\\x1b[2J\\x1b]0;owned\\x07\\u202enotes.txt" in human.stdout
    doc = json.loads(run_cli("ckpt", "verify", str(root), "--deep", "--json").stdout)
    checks = {c["id"]: c for c in doc["checks"]}
    assert f"{evil}.safetensors" in checks["ckpt.layout"]["data"]["missing"]
    assert f"{evil}notes.txt" in checks["ckpt.sha256"]["data"]["sha256"]


def test_write_manifest_refuses_to_overwrite_before_hashing(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    manifest = tmp_path / "mine.sha256"
    manifest.write_text("the user's\n")
    r = run_cli("ckpt", "verify", str(root), "--write-manifest", str(manifest))
    assert r.returncode == 2 and "exists; pass --force" in r.stderr and "hashing" not in r.stderr
    assert manifest.read_text() == "the user's\n"
    assert (
        run_cli("ckpt", "verify", str(root), "--write-manifest", str(manifest), "--force").returncode == 1
    )  # tiny: ckpt.dit
    assert manifest.read_text() != "the user's\n"


def test_bad_manifest_is_a_one_line_error(tmp_path):
    root = write_skeleton(tmp_path / "tiny", tiny=True)
    manifest = tmp_path / "bad.sha256"
    manifest.write_text(f"{'0' * 64}  ../../etc/passwd\n")
    r = run_cli("ckpt", "verify", str(root), "--manifest", str(manifest))
    assert (
        r.returncode == 2
        and r.stderr.startswith(f"Error: --manifest {manifest}: line 1")
        and "Traceback" not in r.stderr
    )
