"""Skeleton Wan2.2-S2V-14B checkpoints: real file names, headers, index and archive directories,
built from the packaged reference, for tests and the demo.

Full size: every file has its real length but the tensor data are sparse holes, so a 45 GB
checkpoint takes seconds and almost no disk. `tiny`: the same names with every dimension cut to
at most 4 and real random bytes (a few MB), for tests that read tensor data.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from avatardoctor.ckpt import layout
from avatardoctor.ckpt.components import (
    REFERENCE,
    WAV2VEC2_REFERENCE_PARAMS,
    TensorSpec,
    reference_tensors,
)
from avatardoctor.ckpt.safetensors_file import data_bytes, write_safetensors
from avatardoctor.errors import InputError

LAYOUTS = ("upstream", "seed")
SEED_SHARDS = 3
TINY_DIM = 4
ZERO_CHUNK = bytes(16 * 2**20)
SPARSE_PROBE_BYTES = 64 * 2**20


def _shrunk(tensors: tuple[TensorSpec, ...], tiny: bool) -> list[TensorSpec]:
    return [(n, d, tuple(min(x, TINY_DIM) for x in s) if tiny else s) for n, d, s in tensors]


def _nbytes(spec: TensorSpec) -> int:
    return data_bytes(spec[1], spec[2])


def _reference_index() -> dict[str, str]:
    doc = json.loads((files("avatardoctor") / "data" / "reference" / REFERENCE / layout.UPSTREAM_INDEX).read_text())
    return doc["weight_map"]


def _shard_plan(tensors: list[TensorSpec], which: str) -> dict[str, list[TensorSpec]]:
    """Shard file name -> its tensors: upstream's real split, or the seeds' 3 shards by size."""
    plan: dict[str, list[TensorSpec]] = {}
    if which == "upstream":
        weight_map = _reference_index()
        for spec in tensors:
            plan.setdefault(weight_map[spec[0]], []).append(spec)
        return dict(sorted(plan.items()))
    total, done = sum(map(_nbytes, tensors)), 0
    for spec in tensors:
        shard = min(done * SEED_SHARDS // max(total, 1), SEED_SHARDS - 1) + 1
        plan.setdefault(f"model-{shard:05d}-of-{SEED_SHARDS:05d}.safetensors", []).append(spec)
        done += _nbytes(spec)
    return plan


class _HoleWriter:
    """A file object for zipfile that, while `holes` is set, skips (seeks over) what it is given
    instead of writing it: the entries' zero data become sparse holes."""

    def __init__(self, f):
        self.f = f
        self.holes = False

    def write(self, data) -> int:
        if self.holes:
            self.f.seek(len(data), os.SEEK_CUR)
        else:
            self.f.write(data)
        return len(data)

    def tell(self) -> int:
        return self.f.tell()

    def seek(self, *args) -> int:
        return self.f.seek(*args)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:  # part of a writable file's shape (zipfile's typing); ZipFile leaves a given file open
        self.f.close()


def write_pth(path: Path, tensors: list[TensorSpec], data: Callable[[int], bytes] | None) -> None:
    """A torch.save-shaped zip: one stored entry per tensor. Its data.pkl is a plain list of names
    (avatardoctor never unpickles; torch could not load it either): a skeleton, not a model."""
    archive = path.stem
    zeros = memoryview(ZERO_CHUNK)
    with open(path, "wb") as raw, zipfile.ZipFile(writer := _HoleWriter(raw), "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", pickle.dumps([n for n, _, _ in tensors], protocol=2))
        zf.writestr(f"{archive}/version", "3\n")
        for i, spec in enumerate(tensors):
            info = zipfile.ZipInfo(f"{archive}/data/{i}")
            info.file_size = _nbytes(spec)
            with zf.open(info, "w") as entry:
                writer.holes = data is None  # only the entry's data: zipfile writes its header itself
                remaining = info.file_size
                while remaining:
                    n = min(remaining, len(ZERO_CHUNK))
                    entry.write(data(n) if data else zeros[:n])  # zipfile still takes the real CRC-32
                    remaining -= n
                writer.holes = False


def supports_sparse_files(folder: Path) -> bool:
    probe = folder / ".avatardoctor-sparse-probe"
    try:
        with open(probe, "wb") as f:
            f.truncate(SPARSE_PROBE_BYTES)
        return os.stat(probe).st_blocks * 512 < SPARSE_PROBE_BYTES // 4
    finally:
        probe.unlink(missing_ok=True)


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def write_skeleton(root: Path, which: str = "upstream", tiny: bool = False) -> Path:
    """Write a skeleton checkpoint into root (which must be absent or empty)."""
    if which not in LAYOUTS:
        raise InputError(f"--layout: {which!r} is not one of {', '.join(LAYOUTS)}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InputError(f"{root}: exists and is not an empty folder; a skeleton never writes over files")
    root.mkdir(parents=True, exist_ok=True)
    if not tiny and not supports_sparse_files(root):
        raise InputError(
            f"{root}: this filesystem has no sparse files, a full-size skeleton would fill 45 GB; use --tiny"
        )
    data = os.urandom if tiny else None
    dit = _shrunk(reference_tensors("dit"), tiny)
    _write_json(
        root / layout.CONFIG,
        {"_class_name": "WanModel_S2V", "dim": 5120, "num_layers": 40, "avatardoctor_skeleton": True},
    )
    plan = _shard_plan(dit, which)
    weight_map = {}
    for shard, tensors in plan.items():
        write_safetensors(root / shard, tensors, data, metadata={"format": "pt"})
        weight_map.update({name: shard for name, _, _ in tensors})
    index = layout.UPSTREAM_INDEX if which == "upstream" else layout.SEED_INDEX
    _write_json(
        root / index,
        {"metadata": {"total_size": sum(map(_nbytes, dit))}, "weight_map": dict(sorted(weight_map.items()))},
    )
    if which == "seed":  # the seeds describe nothing more
        return root
    write_pth(root / layout.T5_FILE, _shrunk(reference_tensors("t5"), tiny), data)
    write_pth(root / layout.VAE_FILE, _shrunk(reference_tensors("vae"), tiny), data)
    tokenizer = root / layout.TOKENIZER_DIR
    _write_json(tokenizer / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "model_max_length": 512})
    _write_json(
        tokenizer / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    )
    (tokenizer / "spiece.model").write_bytes(b"avatardoctor skeleton: not a SentencePiece model\n")
    wav2vec2 = root / layout.WAV2VEC2_DIR
    _write_json(wav2vec2 / "config.json", {"model_type": "wav2vec2", "avatardoctor_skeleton": True})
    _write_json(wav2vec2 / "preprocessor_config.json", {"feature_size": 1, "sampling_rate": 16000})
    _write_json(wav2vec2 / "vocab.json", {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3})
    # Its real tensor list is not in the reference: one tensor of the real parameter count stands in.
    params = TINY_DIM if tiny else WAV2VEC2_REFERENCE_PARAMS
    write_safetensors(wav2vec2 / "model.safetensors", [("skeleton.parameters", "F32", (params,))], data)
    return root
