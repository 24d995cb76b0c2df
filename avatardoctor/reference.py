"""Component sizes of Wan2.2-S2V-14B from the packaged reference (real tensor names, shapes, dtypes).

Used where no checkpoint is at hand; the sizes are summed from tensor shapes, never typed in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

REFERENCE = "wan2.2-s2v-14b"
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}
# wav2vec2-large-xlsr-53 (CPU only, host RAM) is not in the reference tensor lists: 315,472,545 F32
# parameters per docs/memory-model.md, until the checkpoint verifier reads its own header.
WAV2VEC2_BYTES = 315_472_545 * 4


@dataclass(frozen=True)
class ComponentSizes:
    dit_bytes: int
    t5_bytes: int
    vae_bytes: int
    wav2vec2_bytes: int = WAV2VEC2_BYTES


def _component_bytes(name: str) -> int:
    doc = json.loads((files("avatardoctor") / "data" / "reference" / REFERENCE / f"{name}.tensors.json").read_text())
    itemsize = ITEMSIZE[doc["dtype"]]
    return sum(math.prod(shape) * itemsize for _, shape in doc["tensors"])


@lru_cache(maxsize=1)
def reference_sizes() -> ComponentSizes:
    return ComponentSizes(_component_bytes("dit"), _component_bytes("t5"), _component_bytes("vae"))
