"""Real files that make a Python environment look like Live Avatar's: dist-info metadata and
torch/version.py, as pip would leave them. The doctor reads these without importing anything."""

from __future__ import annotations

import importlib
from pathlib import Path

from avatardoctor.upstream import REQUIREMENTS


def add_dist(site: Path, name: str, version: str, requires=(), files: dict[str, str] | None = None) -> None:
    """Install a fake distribution: a dist-info with METADATA, plus any package files given."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    for rel, text in (files or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    importlib.invalidate_caches()


def add_torch(site: Path, version: str = "2.8.0+cu128", cuda: str | None = "12.8", requires=()) -> None:
    version_py = (
        f"from typing import Optional\n__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = {cuda!r}\n"
    )
    # Importing this fake torch raises: proof that the doctor never imports torch.
    init = "raise ImportError('avatardoctor must not import torch')\n"
    add_dist(site, "torch", version, requires, {"torch/__init__.py": init, "torch/version.py": version_py})


def upstream_site(site: Path) -> Path:
    """Everything Live Avatar's requirements pin, at the pinned versions."""
    add_torch(site, requires=["nvidia-nccl-cu12==2.27.3; platform_system == 'Linux'"])
    add_dist(site, "nvidia-nccl-cu12", "2.27.3")
    add_dist(site, "nvidia-cudnn-cu12", "9.10.2.21")
    add_dist(site, "flash-attn", "2.8.3", files={"flash_attn/__init__.py": ""})
    add_dist(site, "transformers", "4.51.3")
    add_dist(site, "peft", "0.17.1")
    add_dist(site, "diffusers", "0.31.0")
    add_dist(site, "numpy", "1.26.4")
    for req in REQUIREMENTS:  # the rest the entry imports at start, at a version inside each pin
        if not req.gradio_only and req.dists[0] not in ("transformers", "peft", "diffusers", "numpy"):
            add_dist(site, req.dists[0], PIN_VERSIONS.get(req.dists[0], "1.0.0"))
    return site


PIN_VERSIONS = {"torchvision": "0.23.0", "accelerate": "1.1.1", "tokenizers": "0.21.0"}
