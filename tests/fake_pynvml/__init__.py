"""A fake NVML per driver generation, under the real nvidia-ml-py binding (see library.py).

lib = install(monkeypatch, boxes.r535_hgx_h100())   # pynvml now talks to that box
NvmlBackend().snapshot()                            # ... and so does everything above it
"""

from __future__ import annotations

import pynvml

from fake_pynvml import boxes
from fake_pynvml.library import FakeBox, FakeGpu, FakeLibrary, NvLink, Process

__all__ = ["FakeBox", "FakeGpu", "FakeLibrary", "NvLink", "Process", "boxes", "install"]


def install(monkeypatch, box: FakeBox) -> FakeLibrary:
    """Put the box where libnvidia-ml.so.1 would be loaded, for one test: the binding's library, its cache
    of C function pointers and its init count are the binding's only state."""
    lib = FakeLibrary(box)
    monkeypatch.setattr(pynvml, "nvmlLib", lib)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
    return lib
