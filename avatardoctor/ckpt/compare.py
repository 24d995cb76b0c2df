"""A checkpoint's tensors against the Wan2.2-S2V-14B reference, explained as a person would:
"an fp32 export", "renamed: a -> b", "a different model", rather than a thousand-line diff."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from avatardoctor.ckpt.components import TensorSpec

SHOWN = 5  # differences listed before "and N more"


@dataclass(frozen=True)
class ReferenceDiff:
    blocking: tuple[str, ...]  # the load would fail (missing, unknown or reshaped tensors)
    dtype_only: tuple[str, ...]  # loads, but in another precision: more memory at load

    @property
    def matches(self) -> bool:
        return not self.blocking and not self.dtype_only


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def compare_tensors(actual: dict[str, tuple[str, tuple[int, ...]]], reference: tuple[TensorSpec, ...]) -> ReferenceDiff:
    ref = {name: (dtype, shape) for name, dtype, shape in reference}
    missing = [n for n in ref if n not in actual]
    unknown = [n for n in actual if n not in ref]
    blocking: list[str] = []
    # A missing and an unknown tensor of the same dtype and shape are most likely one renamed key.
    by_spec: dict[tuple, list[str]] = {}
    for n in unknown:
        by_spec.setdefault(actual[n], []).append(n)
    renamed = []
    for n in list(missing):
        candidates = by_spec.get(ref[n])
        if candidates and len(missing) < len(ref) // 2:
            new = candidates.pop(0)
            renamed.append(f"{n} -> {new}")
            missing.remove(n)
            unknown.remove(new)
    if len(missing) > len(ref) // 2:
        blocking.append(
            f"a different model: {len(missing):,} of the {len(ref):,} Wan2.2-S2V-14B tensors are absent "
            f"(first: {_listed(missing)})"
        )
    else:
        if renamed:
            blocking.append(f"renamed: {_listed(renamed)}")
        if missing:
            blocking.append(f"missing: {_listed(missing)}")
        if unknown:
            blocking.append(f"not in Wan2.2-S2V-14B: {_listed(unknown)}")
        reshaped = [
            f"{n} {list(actual[n][1])} (reference {list(ref[n][1])})"
            for n in ref
            if n in actual and actual[n][1] != ref[n][1]
        ]
        if reshaped:
            blocking.append(f"other shapes: {_listed(reshaped)}")
    dtype_only = []
    changed = [n for n in ref if n in actual and actual[n][0] != ref[n][0]]
    if changed:
        pairs = Counter((ref[n][0], actual[n][0]) for n in changed)
        (was, now), count = pairs.most_common(1)[0]
        if count == len(changed) == len([n for n in ref if n in actual]):
            dtype_only.append(f"every tensor is {now} where Wan2.2-S2V-14B has {was}: a {now.lower()} export")
        else:
            dtype_only.append(
                f"other dtypes: {_listed([f'{n} {actual[n][0]} (reference {ref[n][0]})' for n in changed])}"
            )
    return ReferenceDiff(tuple(blocking), tuple(dtype_only))
