"""Live Avatar itself: the checkout, the launch's hard start-up asserts, and the LoRA file.

Each upstream assert fires only after torchrun has started every rank, and some only after minutes of
weight loading; all of them can be decided here from the configuration in a millisecond. The facts
(texts, paths, rules) are upstream's code's, in avatardoctor.upstream and cited in docs/upstream.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from avatardoctor.checks.base import (
    CheckContext,
    Outcome,
    check,
    failed,
    passed,
    skipped,
    warned,
)
from avatardoctor.ckpt.safetensors_file import CkptFileError, read_header
from avatardoctor.predict import reference_hw
from avatardoctor.rules import SEED_NOTE, SEED_REMEDY, violations
from avatardoctor.units import gib, plural
from avatardoctor.upstream import (
    LORA_CACHE_DIR,
    LORA_DOWNLOAD,
    LORA_FILE,
    LORA_LOCAL,
    MULTI_PROCESS_MODES,
    RULE_FILES,
    UPSTREAM_COMMIT,
    UPSTREAM_REPO,
    cond_capacity,
    cond_tokens,
    padded_size,
)

GROUP = "Live Avatar"

# ---------------------------------------------------------------------------------------- la.checkout

# Opened by the launch: without them torchrun starts and every rank dies at once.
REQUIRED_FILES = (
    "minimal_inference/s2v_streaming_interact.py",
    "minimal_inference/gradio_app.py",
    "liveavatar/configs/s2v_causal_sft.yaml",
)
# The upstream launch scripts: avatardoctor launches torchrun itself, users read these for the flags.
REFERENCE_SCRIPTS = ("infinite_inference_multi_gpu.sh", "infinite_inference_single_gpu.sh")
SEED_SCRIPT = "run_4gpu_tpp.sh"  # named by the seed articles, absent upstream


@check("la.checkout", GROUP)
def checkout(ctx: CheckContext) -> Outcome:
    given = ctx.config.liveavatar
    if given is None:
        return skipped("pass --liveavatar DIR to check the Live Avatar checkout")
    given = Path(given)
    root = Path(os.path.normpath(ctx.cwd / given))  # an absolute `given` replaces cwd
    where = [f"checkout: {root}" + ("" if given.is_absolute() else f" (--liveavatar {given} relative to {ctx.cwd})")]
    data: dict[str, Any] = {"path": str(root)}
    clone = f"pass --liveavatar the root of a clone of {UPSTREAM_REPO} (the directory holding minimal_inference/)"
    # os.path here and below: unlike Path's methods it answers False, not PermissionError, behind an unreadable dir
    if not os.path.exists(root):
        return failed(f"Live Avatar checkout not found: {root}", where, clone, data)
    if not os.path.isdir(root):
        return failed(f"--liveavatar {root} is a file, not the Live Avatar checkout directory", where, clone, data)
    if not os.access(root, os.R_OK | os.X_OK):
        return failed(
            f"cannot read the Live Avatar checkout {root} (permission denied)",
            where,
            f"chmod -R u+rX {root}, or run avatardoctor as the user who will launch Live Avatar",
            data,
        )
    missing = [p for p in REQUIRED_FILES if not os.path.isfile(root / p)]
    missing_scripts = [p for p in REFERENCE_SCRIPTS if not os.path.isfile(root / p)]
    data |= {"missing": missing, "missing_scripts": missing_scripts}
    details = where + [f"missing: {p}" for p in missing + missing_scripts]
    if os.path.exists(root / SEED_SCRIPT):
        details.append(
            f"{SEED_SCRIPT} is not an upstream script (the seed articles' 4-GPU TPP); upstream refuses "
            "fewer than 5 GPUs in TPP (see la.asserts)"
        )
    if missing:
        return failed(
            f"the Live Avatar checkout {root} lacks {len(missing)} file{'s' if len(missing) > 1 else ''} the launch opens: {', '.join(missing)}",
            details,
            clone,
            data,
        )
    if missing_scripts:
        return warned(
            f"the Live Avatar checkout {root} lacks the upstream launch script(s) {', '.join(missing_scripts)}",
            details + ["avatardoctor launches torchrun itself; the scripts are only the reference for the flags"],
            f"restore them from {UPSTREAM_REPO} (in a clone: git -C {root} checkout -- {' '.join(missing_scripts)})",
            data,
        )
    return passed(f"Live Avatar checkout at {root} has the entry scripts and training config", details, data)


# ------------------------------------------------------------------------------------------ la.commit

GIT_TIMEOUT_S = 10.0


def _git(root: Path, *args: str) -> str | None:
    """One read-only git command in the checkout: its output, or None when git cannot answer."""
    git = shutil.which("git")
    if git is None:
        return None
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")  # never take the index lock of the user's clone
    try:
        done = subprocess.run(
            [git, "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@check("la.commit", GROUP)
def commit(ctx: CheckContext) -> Outcome:
    """Which upstream this is: avatardoctor's rules were read from UPSTREAM_COMMIT, and a checkout whose rule
    files differ (another commit, or local edits such as upstream issue #11's) may not follow them."""
    if ctx.config.liveavatar is None:
        return skipped("pass --liveavatar DIR to tell which Live Avatar commit the rules are checked against")
    root = Path(os.path.normpath(ctx.cwd / ctx.config.liveavatar))
    if not os.path.isdir(root):
        return skipped("no checkout to read (see la.checkout)")
    head = _git(root, "rev-parse", "--verify", "HEAD")
    pinned = f"avatardoctor's rules were verified at {UPSTREAM_COMMIT[:7]}"
    if head is None:
        return warned(
            "not a git checkout (or git is missing): which Live Avatar commit this is cannot be told",
            [pinned, f"files the rules were read from: {', '.join(RULE_FILES)}"],
            f"use a git clone of {UPSTREAM_REPO} at {UPSTREAM_COMMIT[:7]}",
            {"commit": None},
        )
    head = head.strip()
    status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *RULE_FILES) or ""
    edited = sorted({line[3:].strip() for line in status.splitlines() if len(line) > 3})
    others = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    other_count = len([line for line in others.splitlines() if line.strip()]) - len(edited)
    data: dict = {
        "commit": head,
        "pinned": UPSTREAM_COMMIT,
        "modified_rule_files": edited,
        "other_modified": other_count,
    }
    details = [f"commit {head[:12]}; {pinned}"]
    if other_count > 0:
        details.append(f"{plural(other_count, 'other modified file')} (none the rules depend on)")
    changed_since = None
    if head != UPSTREAM_COMMIT:
        diff = _git(root, "diff", "--name-only", UPSTREAM_COMMIT, head, "--", *RULE_FILES)
        changed_since = None if diff is None else [line for line in diff.splitlines() if line.strip()]
        data["rule_files_changed_since_pinned"] = changed_since
    if edited:
        details += [f"modified locally: {f}" for f in edited]
        return warned(
            f"the checkout's {plural(len(edited), 'file')} the rules were read from {'is' if len(edited) == 1 else 'are'} "
            "modified locally: avatardoctor's rules may not hold",
            details,
            f"review the changes (git -C {root} diff -- {' '.join(edited)}), or restore them (git -C {root} checkout -- {' '.join(edited)})",
            data,
        )
    if head == UPSTREAM_COMMIT:
        return passed(
            f"Live Avatar at {head[:7]}, the commit avatardoctor's rules were verified against", details, data
        )
    if changed_since == []:
        details.append(f"the files the rules were read from are the same as at {UPSTREAM_COMMIT[:7]}")
        return passed(f"Live Avatar at {head[:7]}: the rule files match {UPSTREAM_COMMIT[:7]}", details, data)
    if changed_since is None:
        details.append(f"{UPSTREAM_COMMIT[:7]} is not in this clone's history: the rule files cannot be compared")
    else:
        details += [f"changed since {UPSTREAM_COMMIT[:7]}: {f}" for f in changed_since]
    return warned(
        f"Live Avatar at {head[:7]}, not {UPSTREAM_COMMIT[:7]}: the files the rules were read from may differ, so they may not hold",
        details,
        f"git -C {root} checkout {UPSTREAM_COMMIT[:7]}, or check the changed files against docs/upstream.md",
        data,
    )


# ----------------------------------------------------------------------------------------- la.asserts


def _seed_layout(ctx: CheckContext) -> bool:
    """The seed articles' 4-GPU TPP: 3 DiT GPUs + 1 VAE GPU, or TPP chosen on a 4-GPU box."""
    return ctx.config.mode in MULTI_PROCESS_MODES and (ctx.config.num_gpus_dit == 3 or len(ctx.visible.gpus) == 4)


@check("la.asserts", GROUP)
def asserts(ctx: CheckContext) -> Outcome:
    """Upstream's rules (avatardoctor.upstream, cited in docs/upstream.md) for this launch and image."""
    cfg = ctx.config
    image_hw, _ = reference_hw(cfg)  # input.image reports an unreadable image; the --size aspect stands in
    found = violations(cfg, image_hw)
    fatal = [v for v in found if v.fatal]
    data: dict[str, Any] = {
        "violations": [v.rule.id for v in fatal],
        "warnings": [v.rule.id for v in found if not v.fatal],
        "mode": cfg.mode,
        "nproc": cfg.nproc,
        "entry": "gradio" if cfg.gradio else "cli",
    }
    if not found:
        h, w = padded_size(cfg.size, image_hw)
        capacity = cond_capacity(cfg.mode)
        details = [f"renders {w}x{h} px: {cond_tokens(h, w)} of {capacity} conditioning tokens"]
        if image_hw and cond_tokens(*padded_size(cfg.size)) > capacity:
            details.append(
                f"--size {cfg.size} is fine with this {image_hw[1]}x{image_hw[0]} image: it is not upscaled; "
                "an image as large as the size would overflow the conditioning cache"
            )
        return passed(
            f"the {cfg.mode} launch passes upstream's start-up rules "
            f"({plural(cfg.nproc, 'process')}, {cfg.sample_steps} steps, size {cfg.size})",
            details,
            data,
        )
    details = [f"{v.rule.id}: {v.problem} -> {v.rule.prevents}" for v in found]
    remedies = [v.remedy for v in found]
    if fatal and _seed_layout(ctx):
        details.append(SEED_NOTE)
        remedies = [SEED_REMEDY] + [v.remedy for v in found if not v.rule.gpu_layout]
    remedy = "; ".join(dict.fromkeys(remedies))  # each once (the TPP layout rules share theirs), in rule order
    if not fatal:
        ids = ", ".join(v.rule.id for v in found)
        return warned(f"upstream runs this launch, but not as you may expect: {ids}", details, remedy, data)
    return failed(
        f"{plural(len(fatal), 'upstream start-up rule')} would stop this launch: {', '.join(data['violations'])}",
        details,
        remedy,
        data,
    )


# -------------------------------------------------------------------------------------------- la.lora

TRUE_VALUES = ("1", "true", "yes", "on")


def is_hub_id(value: str) -> bool:
    """Upstream tries a path that does not exist and has a "/" (not a /, ./ or ../ path) as a Hub repo id,
    and falls back to the path when that fails; only a namespace/name value can be a repo id."""
    return value.count("/") == 1 and not value.startswith(("/", "."))


def cached_hub_file(cache: Path, repo_id: str, filename: str) -> Path | None:
    """The file of the revision refs/main names: what an offline hf_hub_download would return."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    try:
        revision = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        return None
    path = repo_dir / "snapshots" / revision / filename
    return path if os.path.isfile(path) else None  # follows the blob symlink: a dangling one is no file


@check("la.lora", GROUP)
def lora(ctx: CheckContext) -> Outcome:
    value = ctx.config.lora_path
    if not value:
        return skipped("no LoRA: the output will be the base model's; also see la.asserts for the save-path crash")
    start = ctx.launch_dir  # upstream resolves the path, and its hub cache, from where the launch starts
    path = Path(os.path.normpath(start / value))
    if is_hub_id(value) and not os.path.exists(path):
        return _hub_lora(ctx, start, value)
    data = {"source": "local", "path": str(path)}
    if os.path.isfile(path) and os.access(path, os.R_OK):
        return _verified_lora(path, f"LoRA file {path}", data)
    if not os.path.exists(path):
        summary = f"LoRA file not found: {path}"
    elif os.path.isdir(path):
        summary = f"LoRA path {path} is a directory, not the {LORA_FILE} file"
    else:
        summary = f"cannot read the LoRA file {path} (permission denied)"
    return failed(
        summary,
        [] if Path(value).is_absolute() else [f"--lora-path {value} is relative to {start}"],
        f"upstream keeps it at {LORA_LOCAL}: {LORA_DOWNLOAD}",
        data,
    )


def _hub_lora(ctx: CheckContext, start: Path, repo_id: str) -> Outcome:
    """hf_hub_download(repo_id, LORA_FILE, cache_dir=LORA_CACHE_DIR) from the launch folder: the hub cache
    upstream reads is the checkout's ckpt/LiveAvatar, never ~/.cache/huggingface."""
    cache = start / LORA_CACHE_DIR
    cached = cached_hub_file(cache, repo_id, LORA_FILE)
    local = start / LORA_LOCAL  # the README's download, which a hub id does not use
    offline = any(ctx.env.get(k, "").strip().lower() in TRUE_VALUES for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    data = {"source": "hub", "repo_id": repo_id, "cache": str(cache), "cached": str(cached) if cached else None}
    if cached:
        return _verified_lora(cached, f"LoRA {repo_id} is in the checkout's hub cache: {cached}", data)
    looked = [f"looked for {cache}/models--{repo_id.replace('/', '--')}/snapshots/<refs/main>/{LORA_FILE}"]
    use_local = f"--lora-path {LORA_LOCAL}"
    if os.path.isfile(local):
        looked.append(f"{local} exists, but upstream does not read it for a hub id: pass it as a file")
    else:
        use_local += f" (download it first where there is network: {LORA_DOWNLOAD})"
    if offline:
        return failed(
            "offline and the LoRA hub id is not in the checkout's hub cache: the launch will print "
            "'Failed to download from HF Hub ..., treating as local path' and fail after the DiT load",
            looked,
            use_local,
            data,
        )
    return warned(
        f"LoRA {repo_id} will be downloaded from the Hugging Face Hub at launch, into {cache} (network needed)",
        looked,
        use_local,
        data,
    )


def _verified_lora(path: Path, label: str, data: dict) -> Outcome:
    """A LoRA file on disk, verified like any safetensors file (header, offsets, exact size)."""
    try:
        header = read_header(path)
    except CkptFileError as e:
        return failed(f"{label}: {e.problem}", remedy=f"download it again: {LORA_DOWNLOAD}", data=data)
    details = [f"{len(header.tensors):,} tensors, {gib(header.data_bytes)}; header, offsets and size verified"]
    return passed(label, details, data | {"tensors": len(header.tensors), "bytes": header.data_bytes})


CHECKS = (checkout, commit, asserts, lora)
