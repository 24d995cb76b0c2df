"""Software checks: the Python environment that Live Avatar will run in.

Nothing here imports torch, flash_attn or transformers: importing torch takes seconds (and may touch
CUDA), and the doctor must answer in well under a second. Facts come from distribution metadata
(importlib.metadata) and from files read as text. The environment inspected is this interpreter's
(sys.executable, sys.path), or with `--python PATH` another's: its import path, asked once
(avatardoctor.machine.interpreter), is read here the same way, and remedies then name `PATH -m pip`.
Lookups are cached per path, so a changed path is read afresh.
Upstream's requirements are avatardoctor.upstream's (docs/upstream.md, "Packages imported at start").
Only `check --deep` runs anything: it imports flash-attn in the inspected interpreter, the way the entry will.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    Status,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.files import FileTooLarge, read_limited
from avatardoctor.machine.interpreter import Interpreter
from avatardoctor.upstream import REQUIREMENTS

PYTHON_PIN = (3, 10)
TORCH_PIN = "2.8.0"
TORCH_INSTALL = "install torch==2.8.0 --index-url https://download.pytorch.org/whl/cu128"  # pip's arguments
FLASH_ATTN_PIN = "2.8.3"
FLASH_ATTN_INSTALL = "install flash-attn==2.8.3 --no-build-isolation"
NCCL_DISTS = ("nvidia-nccl-cu12", "nvidia-nccl-cu13")  # what torch's pip wheels depend on
CUDNN_DISTS = ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13")
FA3_DISTS = ("flash-attn-3", "flashattn-hopper")  # names normalise, so flash_attn_3 matches too
# Linux driver branch that a CUDA toolkit needs (CUDA release notes, "minimum required driver").
DRIVER_BRANCH_FOR_CUDA = {
    "11.8": "520",
    "12.0": "525",
    "12.1": "530",
    "12.2": "535",
    "12.3": "545",
    "12.4": "550",
    "12.5": "555",
    "12.6": "560",
    "12.8": "570",
    "12.9": "575",
    "13.0": "580",
}
MAX_VERSION_PY_BYTES = 64 * 1024


# ---- probes: metadata and text only, cached per import path ------------------------------------


def inspected(ctx: CheckContext) -> Interpreter:
    """The interpreter whose environment the checks read: --python's, or this one (read now: tests set sys.path)."""
    if ctx.python is not None:
        return ctx.python
    major, minor, micro = sys.version_info[:3]
    return Interpreter(sys.executable, sys.executable, (major, minor, micro), tuple(sys.path))


def pip(ctx: CheckContext, arguments: str) -> str:
    """A pip command for the inspected environment: plain `pip` here, `PATH -m pip` for --python's."""
    return f"{shlex.quote(ctx.python.given)} -m pip {arguments}" if ctx.python else f"pip {arguments}"


def dist_version(path: tuple[str, ...], *names: str) -> str | None:
    """The version of the first of these distributions installed on this import path, or None."""
    return _dist_version(names, path)


@functools.lru_cache(maxsize=64)
def _dist_version(names: tuple[str, ...], path: tuple[str, ...]) -> str | None:
    for name in names:
        for dist in importlib.metadata.distributions(name=name, path=list(path)):
            return dist.version
    return None


@functools.lru_cache(maxsize=8)
def _torch_nccl_requirement(path: tuple[str, ...]) -> Requirement | None:
    """The NCCL wheel torch declares: pip wheels of torch do, conda and source builds link their own."""
    for dist in importlib.metadata.distributions(name="torch", path=list(path)):
        for text in dist.requires or ():
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue
            if req.name in NCCL_DISTS and (req.marker is None or req.marker.evaluate({"extra": ""})):
                return req
        return None
    return None


def module_dir(module: str, path: tuple[str, ...]) -> Path | None:
    """Where a top-level module would be imported from on this import path, found without importing it.
    PathFinder searches the path itself: importlib.util.find_spec would answer from sys.modules for a
    module this process already imported, not from the environment being inspected."""
    try:
        spec = importlib.machinery.PathFinder.find_spec(module, list(path))
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


@dataclass(frozen=True)
class TorchBuild:
    version: str
    cuda: str | None  # None: a CPU (or ROCm) build
    cuda_known: bool  # False when torch/version.py could not be read


def torch_build(path: tuple[str, ...] | None = None) -> TorchBuild | None:
    """torch's version and CUDA build on this import path (default sys.path), from its metadata and
    torch/version.py; None when absent."""
    return _torch_build(tuple(sys.path) if path is None else path)


@functools.lru_cache(maxsize=8)
def _torch_build(path: tuple[str, ...]) -> TorchBuild | None:
    version = _dist_version(("torch",), path)
    package = module_dir("torch", path)
    fields = _string_assignments(package / "version.py") if package else None
    version = version or (fields or {}).get("__version__")
    if version is None:
        return None
    return TorchBuild(version, (fields or {}).get("cuda"), fields is not None)


def _string_assignments(path: Path) -> dict[str, str | None] | None:
    """Top-level `name = 'text'` / `name: T = None` assignments of a small file, or None if unreadable."""
    try:
        tree = ast.parse(read_limited(path, MAX_VERSION_PY_BYTES).decode("utf-8"))
    except (OSError, SyntaxError, ValueError, FileTooLarge):
        return None
    found: dict[str, str | None] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign):
            target = node.target
        else:
            continue
        value = node.value.value if isinstance(node.value, ast.Constant) else ...  # ... : not a literal
        if isinstance(target, ast.Name) and (value is None or isinstance(value, str)):
            found[target.id] = value
    return found


def _major_minor(text: str | None) -> tuple[int, int] | None:
    try:
        release = Version(text).release if text else ()
    except InvalidVersion:
        return None
    if not release:
        return None
    major, minor, *_ = (*release, 0)
    return major, minor


def _matches(version: str | None, spec: str) -> bool:
    try:
        return version is not None and SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def _interpreter(python: Interpreter) -> str:
    return f"inspected the Python environment of {python.executable}"


# ---- checks --------------------------------------------------------------------------------------


@check("sw.python", "Software")
def check_python(ctx: CheckContext) -> Outcome:
    python = inspected(ctx)
    version = ".".join(str(n) for n in python.version)
    data = {"version": version, "executable": python.executable}
    if python.version[:2] == PYTHON_PIN:
        return passed(f"Python {version}", details=[_interpreter(python)], data=data)
    return warned(
        f"Python {version}: upstream Live Avatar pins and tests Python 3.10",
        details=[
            _interpreter(python),
            "other 3.x versions often work, but wheels such as flash-attn may not exist for them",
        ],
        remedy="conda create -n liveavatar python=3.10",
        data=data,
    )


@check("sw.torch", "Software")
def check_torch(ctx: CheckContext) -> Outcome:
    python = inspected(ctx)
    build = torch_build(python.path)
    details = [_interpreter(python)]
    install = pip(ctx, TORCH_INSTALL)
    if build is None:
        return failed("torch is not installed", details=details, remedy=install, data={"installed": False})
    driver = ctx.machine.cuda_driver_version  # the newest CUDA the driver supports
    data = {"installed": True, "version": build.version, "cuda": build.cuda, "driver_cuda": driver}
    if not build.cuda_known:
        details.append("torch/version.py could not be read, so its CUDA build is unknown")
        return warned(f"torch {build.version}: CUDA build unknown", details=details, data=data)
    if build.cuda is None:
        details.append("Live Avatar always initialises NCCL on CUDA, even for one GPU")
        return failed(f"torch {build.version} is not a CUDA build", details=details, remedy=install, data=data)

    details.append(f"torch {build.version} is built for CUDA {build.cuda}")
    status, summary, remedy = Status.PASS, f"torch {build.version} (CUDA {build.cuda})", None
    torch_cuda, driver_cuda = _major_minor(build.cuda), _major_minor(driver)
    if driver_cuda is None:
        details.append("the driver's CUDA version is unknown here, so it was not compared with torch's")
    elif torch_cuda is not None and torch_cuda > driver_cuda:
        branch = DRIVER_BRANCH_FOR_CUDA.get(build.cuda)
        update = f"update the driver to a {branch}+ release" if branch else "update the driver"
        remedy = f"{update}, or install a torch build for CUDA <= {driver}"
        details.append(f"the driver {ctx.machine.driver_version} supports CUDA up to {driver}")
        if torch_cuda[0] > driver_cuda[0]:
            status, summary = Status.FAIL, f"driver too old for torch's CUDA {build.cuda}"
        else:
            status, summary = Status.WARN, f"torch's CUDA {build.cuda} is newer than the driver's CUDA {driver}"
            details.append("minor-version compatibility usually works, but some kernels need a newer driver")
    if not _matches(build.version, f"=={TORCH_PIN}"):
        details.append(f"upstream pins torch {TORCH_PIN} (cu128); other versions are untested")
        if status is Status.PASS:
            status, summary, remedy = Status.WARN, f"torch {build.version}: upstream pins {TORCH_PIN}", install
    return Outcome(status, summary, tuple(details), remedy, data)


@check("sw.nccl", "Software")
def check_nccl(ctx: CheckContext) -> Outcome:
    python = inspected(ctx)
    build = torch_build(python.path)
    if build is None or build.cuda is None:
        return skipped("torch is missing or not a CUDA build (see sw.torch)")
    wanted = _torch_nccl_requirement(python.path)
    version = dist_version(python.path, wanted.name) if wanted else dist_version(python.path, *NCCL_DISTS)
    data = {"version": version, "torch_requires": str(wanted) if wanted else None}
    details = [_interpreter(python)]
    fix = pip(ctx, f"install {shlex.quote(str(wanted.name) + str(wanted.specifier))}") if wanted else None
    if version is None and wanted:
        details.append(f"torch {build.version} requires {wanted}; without it `import torch` fails")
        return failed(f"{wanted.name} is not installed", details=details, remedy=fix, data=data)
    if version is None:
        details.append("no nvidia-nccl-cu12/cu13 distribution: conda and source builds of torch link NCCL themselves")
        check_cmd = f"{shlex.quote(python.given)} -c 'import torch; print(torch.cuda.nccl.version())'"
        return warned("could not determine the NCCL version", details=details, remedy=check_cmd, data=data)
    if wanted and not _matches(version, str(wanted.specifier)):
        details.append(f"torch {build.version} was built against {wanted}; a mismatched NCCL can fail to load")
        return warned(f"NCCL {version} does not match torch's {wanted}", details=details, remedy=fix, data=data)
    return passed(f"NCCL {version}", details=details, data=data)


FA_IMPORT_TIMEOUT_S = 120.0  # a cold import of a CUDA extension from a network file system takes a while


def import_error(module: str, python: Interpreter) -> str | None:
    """Import a module in the inspected interpreter, in a child process, as the entry will: None when it
    imports, else its error's last line (a wheel built for another torch or CUDA fails here, not at install)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in python.path if p))
    try:
        done = subprocess.run(
            [python.given, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            timeout=FA_IMPORT_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"import {module} did not finish in {FA_IMPORT_TIMEOUT_S:.0f} s"
    except OSError as e:  # --python's program removed since it answered
        return f"{python.given} could not be run: {e.strerror}"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {done.returncode}")[:300]


@check("sw.attention", "Software")
def check_attention(ctx: CheckContext) -> Outcome:
    """The cross-attention calls flash attention directly and asserts FlashAttention 2 is there unless 3
    imports: without either, the first DiT forward fails after the whole load."""
    python = inspected(ctx)
    fa2 = dist_version(python.path, "flash-attn")
    fa3 = dist_version(python.path, *FA3_DISTS) or (
        "unknown version" if module_dir("flash_attn_interface", python.path) else None
    )
    cudnn = dist_version(python.path, *CUDNN_DISTS)
    install = pip(ctx, FLASH_ATTN_INSTALL)
    gpus = ctx.rank_gpus
    hopper = bool(gpus) and all(g.compute_capability[0] == 9 for g in gpus)
    data: dict = {"flash_attn": fa2, "flash_attn_3": fa3, "cudnn": cudnn, "hopper": hopper}
    details = [_interpreter(python)]
    if fa2:
        details.append(
            f"flash-attn {fa2}" + ("" if fa2 == FLASH_ATTN_PIN else f" (upstream's README installs {FLASH_ATTN_PIN})")
        )
    if fa3:
        details.append(f"FlashAttention 3 ({fa3}): Hopper (compute capability 9.0) only")
    details.append(f"cuDNN {cudnn}" if cudnn else "no nvidia-cudnn wheel found")
    if not (fa2 or fa3):
        details.append(
            "Wan's cross-attention calls flash_attention() directly: `assert FLASH_ATTN_2_AVAILABLE` fails at the first forward"
        )
        remedy = install + (" (or FlashAttention 3 on these Hopper GPUs)" if hopper else "")
        return failed(
            "no flash-attn: the run would fail at the first DiT forward, after the load", details, remedy, data
        )
    if fa3 and gpus and not hopper:
        # Wan's attention uses flash_attn_interface (FA3) whenever it imports, on any GPU.
        ccs = ", ".join(sorted({g.cc for g in gpus}))
        return failed(
            f"FlashAttention 3 is installed but the GPUs are not Hopper (cc {ccs}): Wan's attention would use it and fail",
            details=details,
            remedy=pip(ctx, "uninstall flash_attn_3") + ("" if fa2 else f"; {install}"),
            data=data,
        )
    module = "flash_attn_interface" if fa3 else "flash_attn"
    name = f"FlashAttention 3 ({fa3})" if fa3 else f"flash-attn {fa2}"
    if ctx.deep:
        error = import_error(module, python)
        data["import_error"] = error
        if error:
            return failed(
                f"{name} is installed but does not import in this interpreter: {error}",
                details,
                f"reinstall it for this torch and CUDA: {pip(ctx, 'uninstall -y ' + ('flash_attn_3' if fa3 else 'flash-attn'))} && {install}",
                data,
            )
        return passed(f"{name} imports in this interpreter", details, data)
    details.append("installed, not imported: `check --deep` imports it as the entry will")
    return passed(name, details=details, data=data)


@check("sw.pins", "Software")
def check_pins(ctx: CheckContext) -> Outcome:
    """Every package the entry imports at start: a missing one stops the launch within seconds (after the
    user has spent time on everything else); one off upstream's pin may still run, so it warns."""
    python = inspected(ctx)
    details, missing, off = [_interpreter(python)], [], []
    data = {}
    for req in REQUIREMENTS:
        if req.gradio_only and not ctx.config.gradio:
            continue
        version = dist_version(python.path, *req.dists)
        data[req.dists[0]] = {"version": version, "pin": req.pin or None}
        if version is None:
            missing.append(req)
        elif req.pin and not _matches(version, req.pin):
            off.append((req, version))
        details.append(f"{req.dists[0]} {version or 'missing'}" + (f" (upstream pin {req.pin})" if req.pin else ""))
    if not (missing or off):
        return passed(f"the {len(data)} packages the entry imports are installed and on upstream's pins", details, data)
    wanted = [req.dists[0] + req.pin for req in missing] + [req.dists[0] + req.pin for req, _ in off]
    remedy = pip(ctx, "install " + " ".join(shlex.quote(w) for w in wanted))
    if missing:
        names = ", ".join(f"{req.dists[0]} (import {req.module})" for req in missing)
        return failed(f"missing what the entry imports: {names}", details, remedy, data)
    summary = "off the upstream pins: " + ", ".join(f"{req.dists[0]} {version}" for req, version in off)
    return warned(summary, details, remedy, data)


@check("sw.ffmpeg", "Software")
def check_ffmpeg(ctx: CheckContext) -> Outcome:
    # Only looked up, never run: start-up time matters more than its version.
    found = shutil.which("ffmpeg", path=ctx.env.get("PATH", os.environ.get("PATH")))
    if found:
        return passed(f"ffmpeg at {found}", data={"path": found})
    return failed(
        "no ffmpeg on PATH",
        details=[
            "Live Avatar merges the audio into the MP4 with ffmpeg",
            "without it the run ends in 'FFmpeg execute failed', after all the compute",
        ],
        remedy="apt-get install ffmpeg  (or: conda install -c conda-forge ffmpeg)",
        data={"path": None},
    )


CHECKS = (check_python, check_torch, check_nccl, check_attention, check_pins, check_ffmpeg)
