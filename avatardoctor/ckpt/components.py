"""Sizes of Wan2.2-S2V-14B's components, always summed from tensor lists, never typed in.

From a checkpoint's own headers when one is verified (avatardoctor.ckpt), otherwise from the
packaged reference (real tensor names, shapes and dtypes). The DiT is also split into the units
FSDP shards it by (Wan's shard_model: one unit per `blocks.{i}`, plus the root: everything else),
because the root stays unsharded after its first forward and sets the FSDP peak.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib.resources import files

from avatardoctor.ckpt.safetensors_file import data_bytes
from avatardoctor.upstream import LORA_RANK, fp8_converted, lora_target

REFERENCE = "wan2.2-s2v-14b"
# wav2vec2-large-xlsr-53 (on the CPU) is not in the reference tensor lists: 315,472,545 F32
# parameters (docs/memory-model.md) until a checkpoint's own model.safetensors header is read.
WAV2VEC2_REFERENCE_PARAMS = 315_472_545
_BLOCK = re.compile(r"^blocks\.(\d+)\.")

TensorSpec = tuple[str, str, tuple[int, ...]]  # name, dtype, shape


@dataclass(frozen=True)
class Size:
    params: int
    bytes: int

    def __add__(self, other: Size) -> Size:
        return Size(self.params + other.params, self.bytes + other.bytes)


ZERO = Size(0, 0)


def size_of(tensors: Iterable[TensorSpec]) -> Size:
    total = ZERO
    for _, dtype, shape in tensors:
        n = math.prod(shape)
        total += Size(n, data_bytes(dtype, shape))
    return total


@dataclass(frozen=True)
class DitUnits:
    blocks: tuple[Size, ...]  # blocks.0, blocks.1, ...
    root: Size  # everything outside blocks.*: embeddings, audio injectors, AdaLN, head


def dit_units(tensors: Iterable[TensorSpec]) -> DitUnits:
    blocks: dict[int, Size] = {}
    root = ZERO
    for spec in tensors:
        m = _BLOCK.match(spec[0])
        one = size_of([spec])
        if m:
            blocks[int(m.group(1))] = blocks.get(int(m.group(1)), ZERO) + one
        else:
            root += one
    return DitUnits(tuple(blocks[i] for i in sorted(blocks)), root)


@dataclass(frozen=True)
class DitShape:
    """What the KV caches, the LoRA merge and --fp8 depend on, read from the tensors."""

    layers: int  # transformer blocks
    dim: int  # model width: heads x head dim (a KV cache entry is 2 x dim per token per layer)
    fp8: Size  # the weights --fp8 converts (every nn.Linear but upstream's ignore list): 2 bytes -> 1 each
    largest_fp8_layer: int  # parameters of the largest converted layer: the conversion's temporary
    lora_params: int  # PEFT's rank-128 adapters on upstream's target modules (A: r x in, B: out x r)
    largest_lora_target: int  # parameters of the largest target layer: the merge's delta temporary


def dit_shape(tensors: Iterable[TensorSpec]) -> DitShape | None:
    """None when the tensors have no attention key weight to read the width from (not a Wan DiT)."""
    tensors = list(tensors)
    blocks = {int(m.group(1)) for name, _, _ in tensors if (m := _BLOCK.match(name))}
    dim = next((shape[0] for name, _, shape in tensors if name.endswith("self_attn.k.weight") and shape), None)
    if dim is None:
        return None
    converted = [t for t in tensors if fp8_converted(t[0], t[2])]
    targets = [shape for name, _, shape in tensors if lora_target(name, shape)]
    return DitShape(
        layers=len(blocks),
        dim=dim,
        fp8=size_of(converted),
        largest_fp8_layer=max((math.prod(t[2]) for t in converted), default=0),
        lora_params=sum(LORA_RANK * (out + inp) for out, inp in targets),
        largest_lora_target=max((out * inp for out, inp in targets), default=0),
    )


@dataclass(frozen=True)
class ComponentSummary:
    source: str  # "reference Wan2.2-S2V-14B" or "checkpoint <dir>"
    dit: Size
    dit_units: DitUnits
    dit_shape: DitShape
    t5: Size
    t5_root: Size  # token embedding + final norm: the unit --t5_fsdp keeps unsharded
    vae: Size
    wav2vec2: Size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dit_units"]["blocks"] = list(d["dit_units"]["blocks"])
        return d


def t5_root(tensors: Iterable[TensorSpec]) -> Size:
    return size_of(t for t in tensors if not t[0].startswith("blocks."))


@lru_cache(maxsize=4)
def reference_tensors(component: str) -> tuple[TensorSpec, ...]:
    """The reference's tensors of "dit", "t5" or "vae", in state-dict order."""
    doc = json.loads(
        (files("avatardoctor") / "data" / "reference" / REFERENCE / f"{component}.tensors.json").read_text()
    )
    return tuple((name, doc["dtype"], tuple(shape)) for name, shape in doc["tensors"])


@lru_cache(maxsize=1)
def reference_summary() -> ComponentSummary:
    dit = reference_tensors("dit")
    shape = dit_shape(dit)
    assert shape is not None  # the reference has its attention weights
    return ComponentSummary(
        source="reference Wan2.2-S2V-14B",
        dit=size_of(dit),
        dit_units=dit_units(dit),
        dit_shape=shape,
        t5=size_of(reference_tensors("t5")),
        t5_root=t5_root(reference_tensors("t5")),
        vae=size_of(reference_tensors("vae")),
        wav2vec2=Size(WAV2VEC2_REFERENCE_PARAMS, WAV2VEC2_REFERENCE_PARAMS * 4),
    )
