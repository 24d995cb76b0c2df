"""la.checkout, la.asserts, la.lora: real directories and fake Hugging Face caches under tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import make_ctx
from PIL import Image

from avatardoctor.checks import liveavatar
from avatardoctor.checks.base import Status
from avatardoctor.ckpt.safetensors_file import write_safetensors
from avatardoctor.upstream import LORA_LOCAL, RULE_FILES

AS_ROOT = os.geteuid() == 0  # root ignores permission bits: chmod 000 proves nothing
REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_lora(path: Path) -> Path:
    """A real (tiny) safetensors LoRA: the check verifies its header like any safetensors file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, [("blocks.0.self_attn.q.lora_A.weight", "BF16", (4, 8))], os.urandom)
    return path


def make_checkout(root: Path, *, without=()) -> Path:
    for rel in liveavatar.REQUIRED_FILES + liveavatar.REFERENCE_SCRIPTS:
        if rel not in without:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("# upstream\n")
    return root


def make_hub_cache(cache: Path, *, with_blob=True, with_ref=True) -> Path:
    """The layout huggingface_hub writes: refs/main -> snapshots/<rev>/file -> symlink into blobs/."""
    repo = cache / "models--Quark-Vision--Live-Avatar"
    (repo / "blobs").mkdir(parents=True)
    if with_blob:
        write_lora(repo / "blobs" / "b10b")
    if with_ref:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "liveavatar.safetensors").symlink_to("../../blobs/b10b")
    return snapshot / "liveavatar.safetensors"


def test_checks_in_display_order():
    assert [c.id for c in liveavatar.CHECKS] == ["la.checkout", "la.commit", "la.asserts", "la.lora"]


# ---------------------------------------------------------------------------------------- la.checkout


def test_checkout_skipped_without_liveavatar():
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy"))
    assert r.status is Status.SKIP
    assert "--liveavatar DIR" in r.summary


def test_checkout_complete_passes(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=root))
    assert r.status is Status.PASS
    assert r.details[0] == f"checkout: {root}"
    assert r.data == {"path": str(root), "missing": [], "missing_scripts": []}
    assert not any("run_4gpu_tpp.sh" in d for d in r.details)  # absent upstream, so nothing to say


def test_checkout_relative_path_resolves_against_cwd(tmp_path):
    make_checkout(tmp_path / "LiveAvatar")
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", cwd=tmp_path / "sub", liveavatar=Path("../LiveAvatar")))
    assert r.status is Status.PASS
    relative = f"(--liveavatar ../LiveAvatar relative to {tmp_path / 'sub'})"
    assert r.details[0] == f"checkout: {tmp_path / 'LiveAvatar'} {relative}"


def test_checkout_missing_directory_fails(tmp_path):
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=tmp_path / "nope"))
    assert r.status is Status.FAIL
    assert r.summary == f"Live Avatar checkout not found: {tmp_path / 'nope'}"
    assert "github.com/Alibaba-Quark/LiveAvatar" in r.remedy


def test_checkout_that_is_a_file_fails(tmp_path):
    (tmp_path / "LiveAvatar").write_text("not a dir")
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=tmp_path / "LiveAvatar"))
    assert r.status is Status.FAIL
    assert r.summary == f"--liveavatar {tmp_path / 'LiveAvatar'} is a file, not the Live Avatar checkout directory"


@pytest.mark.skipif(AS_ROOT, reason="root reads any directory")
def test_checkout_unreadable_fails(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    root.chmod(0)
    try:
        r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=root))
    finally:
        root.chmod(0o755)
    assert r.status is Status.FAIL
    assert r.summary == f"cannot read the Live Avatar checkout {root} (permission denied)"
    assert r.remedy.startswith(f"chmod -R u+rX {root}")


@pytest.mark.parametrize("missing", liveavatar.REQUIRED_FILES)
def test_checkout_missing_entry_or_config_fails_naming_it(tmp_path, missing):
    root = make_checkout(tmp_path / "LiveAvatar", without=[missing])
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=root))
    assert r.status is Status.FAIL
    assert r.summary.endswith(f"lacks 1 file the launch opens: {missing}")
    assert f"missing: {missing}" in r.details
    assert r.data["missing"] == [missing]


def test_checkout_missing_everything_names_each_path(tmp_path):
    (tmp_path / "empty").mkdir()
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=tmp_path / "empty"))
    assert r.status is Status.FAIL
    assert r.data["missing"] == list(liveavatar.REQUIRED_FILES)
    assert r.data["missing_scripts"] == list(liveavatar.REFERENCE_SCRIPTS)
    for rel in liveavatar.REQUIRED_FILES + liveavatar.REFERENCE_SCRIPTS:
        assert f"missing: {rel}" in r.details


def test_checkout_missing_launch_scripts_only_warns(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar", without=["infinite_inference_multi_gpu.sh"])
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=root))
    assert r.status is Status.WARN
    assert "infinite_inference_multi_gpu.sh" in r.summary
    assert any("avatardoctor launches torchrun itself" in d for d in r.details)
    assert r.remedy.endswith(f"git -C {root} checkout -- infinite_inference_multi_gpu.sh)")


def test_checkout_with_seed_script_says_it_is_not_upstream(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    (root / "run_4gpu_tpp.sh").write_text("#!/bin/sh\n")
    r = liveavatar.checkout.run(make_ctx("5xH800-healthy", liveavatar=root))
    assert r.status is Status.PASS
    assert any(d.startswith("run_4gpu_tpp.sh is not an upstream script") for d in r.details)


# ----------------------------------------------------------------------------------------- la.asserts


@pytest.mark.parametrize(
    ("machine", "config", "nproc", "cond"),
    [
        ("5xH800-healthy", {"mode": "tpp"}, 5, "2640 of 3000"),
        ("1xH200", {"mode": "single"}, 1, "2640 of 2800"),
        ("5xH800-healthy", {}, 5, "2640 of 3000"),
    ],
)
def test_asserts_upstream_defaults_pass(machine, config, nproc, cond):
    r = liveavatar.asserts.run(make_ctx(machine, **config))
    assert r.status is Status.PASS, r.details
    assert r.data["violations"] == [] and r.data["warnings"] == []
    assert r.data["nproc"] == nproc
    assert r.details == (f"renders 704x384 px: {cond} conditioning tokens",) and r.remedy is None


def test_asserts_need_no_gpu_facts():
    r = liveavatar.asserts.run(make_ctx("no-nvml", mode="tpp"))
    assert r.status is Status.PASS
    assert r.data["nproc"] == 5


# One rule broken at a time, named after what upstream does: (machine, config, the violation, upstream's
# text or behaviour named, remedy).
SINGLE_RULE_CASES = {
    "tpp.num_gpus_dit: only 4 DiT GPUs are supported": (
        "8xH100",
        dict(mode="tpp", num_gpus_dit=5, sample_steps=5),
        "tpp.num_gpus_dit",
        'AssertionError: "Only 4 GPUs are supported for distributed inference."',
        "--num-gpus-dit 4 --sample-steps 4",
    ),
    "tpp.vae_parallel: VAE parallel is required": (
        "5xH800-healthy",
        dict(mode="tpp", enable_vae_parallel=False),
        "tpp.vae_parallel",
        'AssertionError: "VAE parallel is required for distributed inference."',
        "launch the entry with --enable_vae_parallel (avatardoctor's own launches always pass it)",
    ),
    "tpp.sample_steps: rank i runs step i, so 3 steps hang the last DiT rank": (
        "5xH800-healthy",
        dict(mode="tpp", sample_steps=3),
        "tpp.sample_steps",
        "DiT rank i runs denoising step i",
        "--sample-steps 4",
    ),
    "tpp.dit_fsdp: FSDP over the world group cannot run TPP": (
        "5xH800-healthy",
        dict(mode="fsdp"),
        "tpp.dit_fsdp",
        "upstream cannot run this",
        "drop --dit_fsdp: upstream TPP keeps a full DiT on each of 5 GPUs",
    ),
    "single.sample_steps: only 4 KV caches, KeyError '5'": (
        "1xH200",
        dict(mode="single", sample_steps=5),
        "single.sample_steps",
        "KeyError: '5'",
        "--sample-steps 4",
    ),
    "single.offload_model: the final decode finds the VAE on the CPU": (
        "1xH200",
        dict(mode="single", offload_model=False),
        "single.offload_model",
        "device-mismatch RuntimeError",
        "--offload-model True (the single-GPU script's value)",
    ),
    "ulysses_size tpp: sequence parallel is not supported": (
        "5xH800-healthy",
        dict(mode="tpp", ulysses_size=4),
        "ulysses_size",
        'AssertionError: "Sequence parallel is not supported."',
        "--ulysses-size 1",
    ),
    "ulysses_size single: sequence parallel is not supported": (
        "1xH200",
        dict(mode="single", ulysses_size=2),
        "ulysses_size",
        'AssertionError: "Sequence parallel is not supported."',
        "--ulysses-size 1",
    ),
    "sample_solver: unsupported solver after the load": (
        "1xH200",
        dict(mode="single", sample_solver="unipc"),
        "sample_solver",
        'NotImplementedError("Unsupported solver.")',
        "--sample-solver euler",
    ),
    "size.choice single: argparse refuses the size": (
        "1xH200",
        dict(mode="single", size="640*480"),
        "size.choice",
        "invalid choice",
        "--size 704*384",
    ),
    "size.choice tpp: argparse refuses the size": (
        "5xH800-healthy",
        dict(mode="tpp", size="1920*1080"),
        "size.choice",
        "invalid choice",
        "--size 720*400",
    ),
    "cond_cache tpp: 720*1280 writes 8800 tokens into 3000": (
        "5xH800-healthy",
        dict(mode="tpp", size="720*1280"),
        "cond_cache",
        "The expanded size of the tensor",
        "--size 704*384 (the largest that fits for an image of the --size aspect)",
    ),
    "cond_cache tpp: 480*832 writes 3640 tokens into 3000": (
        "5xH800-healthy",
        dict(mode="tpp", size="480*832"),
        "cond_cache",
        "The expanded size of the tensor",
        "--size 704*384 (the largest that fits for an image of the --size aspect)",
    ),
    "cond_cache single: 1024*704 writes 7040 tokens into 2800": (
        "1xH200",
        dict(mode="single", size="1024*704"),
        "cond_cache",
        "The expanded size of the tensor",
        "--size 704*384 (the largest that fits for an image of the --size aspect)",
    ),
    "infer_frames.min: under 12 frames there is no block to denoise": (
        "1xH200",
        dict(mode="single", infer_frames=8),
        "infer_frames.min",
        "zero denoising blocks",
        "--infer-frames 12",
    ),
    "save_path: the output name comes from the LoRA path": (
        "5xH800-healthy",
        dict(mode="tpp", lora_path=""),
        "save_path",
        "a crash at save time",
        "--lora-path Quark-Vision/Live-Avatar",
    ),
}


@pytest.mark.parametrize(
    ("machine", "config", "violation", "upstream_text", "remedy"), SINGLE_RULE_CASES.values(), ids=SINGLE_RULE_CASES
)
def test_asserts_each_rule(machine, config, violation, upstream_text, remedy):
    config = dict(config)
    r = liveavatar.asserts.run(make_ctx(machine, env=config.pop("env", None), **config))
    assert r.status is Status.FAIL
    assert r.data["violations"] == [violation]
    assert r.summary == f"1 upstream start-up rule would stop this launch: {violation}"
    assert len(r.details) == 1 and r.details[0].startswith(f"{violation}: ")
    assert upstream_text in r.details[0]
    assert r.remedy == remedy


def test_asserts_cond_cache_names_the_numbers():
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", size="480*832"))
    assert (
        "--size 480*832 renders 448x832 px for the --size aspect: the first prefill writes 3640 conditioning "
        "tokens into a cache of 3000" in r.details[0]
    )


def test_asserts_large_size_with_a_small_image_is_fine_and_says_so(tmp_path):
    image = tmp_path / "face.png"
    Image.new("RGB", (512, 512)).save(image)
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", size="720*1280", image=image))
    assert r.status is Status.PASS, r.details
    assert r.details[0] == "renders 512x512 px: 2560 of 3000 conditioning tokens"
    assert "--size 720*1280 is fine with this 512x512 image: it is not upscaled" in r.details[1]


def test_asserts_large_size_with_a_large_image_overflows_and_names_the_size_for_it(tmp_path):
    image = tmp_path / "face.png"
    Image.new("RGB", (1024, 1024)).save(image)
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", size="480*832", image=image))
    assert r.data["violations"] == ["cond_cache"]
    assert "576x576 px for this 1024x1024 image" in r.details[0] and "writes 3240 conditioning tokens" in r.details[0]
    assert r.remedy == "--size 704*384 (the largest that fits for this image)"


@pytest.mark.parametrize(("mode", "frames"), [("single", 12), ("single", 24), ("tpp", 24), ("tpp", 48), ("tpp", 96)])
def test_asserts_whole_blocks_of_12_frames_pass(mode, frames):
    assert liveavatar.asserts.run(make_ctx("5xH800-healthy", mode=mode, infer_frames=frames)).status is Status.PASS


def test_asserts_tpp_with_one_block_per_clip_hangs_at_clip_2():
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", infer_frames=12))
    assert r.data["violations"] == ["tpp.one_block"] and "clip 2 for ever" in r.details[0]
    tiny = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", infer_frames=8))
    assert (
        tiny.data["violations"] == ["infer_frames.min"] and tiny.remedy == "--infer-frames 24"
    )  # never one that hangs
    assert r.remedy == "--infer-frames 24 or more (two blocks per clip)"
    one_clip = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", infer_frames=12, num_clip=1))
    assert one_clip.status is Status.PASS  # the hang waits for a second clip


@pytest.mark.parametrize(
    ("frames", "remedy"), [(80, "--infer-frames 72"), (50, "--infer-frames 48"), (30, "--infer-frames 24")]
)
def test_asserts_frames_past_the_last_block_warn_and_never_suggest_4_or_8(frames, remedy):
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", infer_frames=frames))
    assert r.status is Status.WARN and r.data["warnings"] == ["infer_frames.blocks"] and r.data["violations"] == []
    assert "left undenoised" in r.details[0] and r.remedy == remedy


def test_asserts_gradio_entry_accepts_what_the_cli_entry_refuses():
    """gradio_app.py comments out the world-size and DiT-count asserts: 3 DiT ranks + 1 VAE rank, 3 steps."""
    three = dict(mode="tpp", num_gpus_dit=3, sample_steps=3)
    assert liveavatar.asserts.run(make_ctx("4xH100", **three)).data["violations"] == [
        "tpp.world_size",
        "tpp.num_gpus_dit",
    ]
    r = liveavatar.asserts.run(make_ctx("4xH100", gradio=True, **three))
    assert r.status is Status.PASS and r.data["entry"] == "gradio"


def test_asserts_save_path_passes_with_a_save_file():
    r = liveavatar.asserts.run(make_ctx("1xH200", mode="single", lora_path="", save_file="out.mp4"))
    assert r.status is Status.PASS


def test_asserts_list_every_violation_and_every_remedy_once():
    r = liveavatar.asserts.run(
        make_ctx("1xH200", mode="single", ulysses_size=2, sample_solver="dpm++", size="720*1280", infer_frames=30)
    )
    assert r.status is Status.FAIL
    assert r.data["violations"] == ["ulysses_size", "sample_solver", "cond_cache"]
    assert r.data["warnings"] == ["infer_frames.blocks"]
    assert len(r.details) == 4
    assert r.remedy == (
        "--ulysses-size 1; --sample-solver euler; --size 704*384 (the largest that fits for an image of the --size aspect); "
        "--infer-frames 24"
    )


def test_asserts_seed_3_dit_layout_is_refused_with_the_seed_note():
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", num_gpus_dit=3, sample_steps=3))
    assert r.status is Status.FAIL
    assert r.data["violations"] == ["tpp.world_size", "tpp.num_gpus_dit"]
    assert r.details[0] == (
        "tpp.world_size: 4 processes (3 DiT + 1 VAE) -> "
        'AssertionError: "At least 5 GPUs are supported for distributed inference."'
    )
    assert 'AssertionError: "Only 4 GPUs are supported for distributed inference."' in r.details[1]
    assert r.details[2] == liveavatar.SEED_NOTE and "run_4gpu_tpp.sh" in r.details[2]
    assert r.remedy == liveavatar.SEED_REMEDY
    assert r.remedy.startswith("--mode single on one 80 GB-class GPU, or five GPUs for tpp")


def test_asserts_seed_layout_keeps_remedies_unrelated_to_gpu_count():
    r = liveavatar.asserts.run(make_ctx("5xH800-healthy", mode="tpp", num_gpus_dit=3, ulysses_size=3))
    assert r.data["violations"] == ["tpp.world_size", "tpp.num_gpus_dit", "tpp.sample_steps", "ulysses_size"]
    assert r.remedy == f"{liveavatar.SEED_REMEDY}; --ulysses-size 1"


def test_asserts_leave_the_gpu_count_to_gpu_visible():
    # TPP's config is valid on its own; that a 4-GPU box cannot host its 5 ranks is gpu.visible's to say.
    assert liveavatar.asserts.run(make_ctx("4x4090", mode="tpp")).status is Status.PASS


@pytest.mark.parametrize(
    ("num_gpus_dit", "violations"),
    [(5, ["tpp.num_gpus_dit", "tpp.sample_steps"]), (2, ["tpp.world_size", "tpp.num_gpus_dit", "tpp.sample_steps"])],
)
def test_asserts_tpp_layout_rules_share_one_remedy(num_gpus_dit, violations):
    r = liveavatar.asserts.run(make_ctx("8xH100", mode="tpp", num_gpus_dit=num_gpus_dit))  # steps stay 4
    assert r.data["violations"] == violations
    assert liveavatar.SEED_NOTE not in r.details
    assert r.remedy == "--num-gpus-dit 4"


# -------------------------------------------------------------------------------------------- la.lora


def test_lora_skipped_without_lora():
    r = liveavatar.lora.run(make_ctx("1xH200", lora_path=""))
    assert r.status is Status.SKIP
    assert "la.asserts" in r.summary


def test_lora_local_absolute_file_passes(tmp_path):
    write_lora(tmp_path / "my.safetensors")
    r = liveavatar.lora.run(make_ctx("1xH200", lora_path=str(tmp_path / "my.safetensors")))
    assert r.status is Status.PASS
    assert r.data == {"source": "local", "path": str(tmp_path / "my.safetensors"), "tensors": 1, "bytes": 64}
    assert r.details == ("1 tensors, 0.00 GiB; header, offsets and size verified",)


def test_lora_truncated_local_file_fails_naming_it(tmp_path):
    lora = write_lora(tmp_path / "my.safetensors")
    with open(lora, "r+b") as f:
        f.truncate(lora.stat().st_size - 1)
    r = liveavatar.lora.run(make_ctx("1xH200", lora_path=str(lora)))
    assert r.status is Status.FAIL
    assert r.summary.startswith(f"LoRA file {lora}: truncated: 167 bytes of 168")
    assert (
        r.remedy
        == "download it again: hf download Quark-Vision/Live-Avatar liveavatar.safetensors --local-dir ckpt/LiveAvatar"
    )


def test_lora_upstream_relative_path_resolves_in_the_checkout_even_offline(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    (root / "ckpt/LiveAvatar").mkdir(parents=True)
    write_lora(root / LORA_LOCAL)
    offline = {"HF_HUB_OFFLINE": "1"}
    ctx = make_ctx("1xH200", env=offline, cwd=tmp_path / "elsewhere", liveavatar=root, lora_path=LORA_LOCAL)
    r = liveavatar.lora.run(ctx)
    assert r.status is Status.PASS  # the offline remedy below leads here
    assert r.data["path"] == str(root / LORA_LOCAL)


def test_lora_local_file_shaped_like_a_hub_id_is_used_as_a_file(tmp_path):
    (tmp_path / "weights").mkdir()
    write_lora(tmp_path / "weights/lora.safetensors")  # upstream's Hub attempt fails, then it loads this
    ctx = make_ctx("1xH200", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path, lora_path="weights/lora.safetensors")
    r = liveavatar.lora.run(ctx)
    assert r.status is Status.PASS
    assert r.data == {"source": "local", "path": str(tmp_path / "weights/lora.safetensors"), "tensors": 1, "bytes": 64}


def test_lora_relative_path_without_checkout_resolves_against_cwd(tmp_path):
    write_lora(tmp_path / "lora.safetensors")
    r = liveavatar.lora.run(make_ctx("1xH200", cwd=tmp_path, lora_path="./lora.safetensors"))
    assert r.status is Status.PASS
    assert r.data["path"] == str(tmp_path / "lora.safetensors")


def test_lora_local_missing_fails_with_the_upstream_location(tmp_path):
    r = liveavatar.lora.run(make_ctx("1xH200", cwd=tmp_path, lora_path="weights/a/lora.safetensors"))
    assert r.status is Status.FAIL
    assert r.summary == f"LoRA file not found: {tmp_path / 'weights/a/lora.safetensors'}"
    assert r.details == (f"--lora-path weights/a/lora.safetensors is relative to {tmp_path}",)
    assert r.remedy == (
        "upstream keeps it at ckpt/LiveAvatar/liveavatar.safetensors: "
        "hf download Quark-Vision/Live-Avatar liveavatar.safetensors --local-dir ckpt/LiveAvatar"
    )


def test_lora_local_directory_fails(tmp_path):
    r = liveavatar.lora.run(make_ctx("1xH200", lora_path=str(tmp_path)))
    assert r.status is Status.FAIL
    assert r.summary == f"LoRA path {tmp_path} is a directory, not the liveavatar.safetensors file"


@pytest.mark.skipif(AS_ROOT, reason="root reads any file")
def test_lora_local_unreadable_fails(tmp_path):
    write_lora(tmp_path / "lora.safetensors")
    (tmp_path / "lora.safetensors").chmod(0)
    r = liveavatar.lora.run(make_ctx("1xH200", lora_path=str(tmp_path / "lora.safetensors")))
    assert r.status is Status.FAIL
    assert r.summary == f"cannot read the LoRA file {tmp_path / 'lora.safetensors'} (permission denied)"


def checkout_with_hub_cache(tmp_path: Path, **kw) -> tuple[Path, Path]:
    """A checkout whose ckpt/LiveAvatar holds what hf_hub_download(cache_dir="ckpt/LiveAvatar") leaves."""
    root = make_checkout(tmp_path / "LiveAvatar")
    return root, make_hub_cache(root / "ckpt/LiveAvatar", **kw)


def test_lora_hub_id_is_looked_up_in_the_checkouts_cache_dir_offline(tmp_path):
    root, cached = checkout_with_hub_cache(tmp_path)
    r = liveavatar.lora.run(
        make_ctx("1xH200", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path / "elsewhere", liveavatar=root)
    )
    assert r.status is Status.PASS
    assert r.summary == f"LoRA Quark-Vision/Live-Avatar is in the checkout's hub cache: {cached}"
    assert r.data["cache"] == str(root / "ckpt/LiveAvatar")


@pytest.mark.parametrize("env_key", ["HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"])
def test_lora_hub_id_in_the_users_hf_cache_is_not_what_upstream_reads(tmp_path, env_key):
    """upstream passes cache_dir="ckpt/LiveAvatar": ~/.cache/huggingface is never read, so offline it fails."""
    make_hub_cache(tmp_path / "home" / {"HF_HUB_CACHE": "", "HF_HOME": "hub"}.get(env_key, "huggingface/hub"))
    root = make_checkout(tmp_path / "LiveAvatar")
    env = {env_key: str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    r = liveavatar.lora.run(make_ctx("1xH200", env=env, liveavatar=root))
    assert r.status is Status.FAIL
    assert r.data["cache"] == str(root / "ckpt/LiveAvatar")


OFFLINE_ENVS = [
    {"HF_HUB_OFFLINE": "1"},
    {"HF_HUB_OFFLINE": "TRUE"},
    {"HF_HUB_OFFLINE": "yes"},
    {"TRANSFORMERS_OFFLINE": "On"},
]


@pytest.mark.parametrize("offline", OFFLINE_ENVS)
def test_lora_hub_id_offline_and_not_cached_fails(tmp_path, offline):
    r = liveavatar.lora.run(make_ctx("1xH200", env=offline, cwd=tmp_path))
    assert r.status is Status.FAIL
    assert r.summary == (
        "offline and the LoRA hub id is not in the checkout's hub cache: the launch will print "
        "'Failed to download from HF Hub ..., treating as local path' and fail after the DiT load"
    )
    assert r.remedy == (
        "--lora-path ckpt/LiveAvatar/liveavatar.safetensors (download it first where there is network: "
        "hf download Quark-Vision/Live-Avatar liveavatar.safetensors --local-dir ckpt/LiveAvatar)"
    )


def test_lora_hub_id_with_the_readme_download_present_says_to_pass_the_file(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    write_lora(root / LORA_LOCAL)
    r = liveavatar.lora.run(make_ctx("1xH200", liveavatar=root))  # online: upstream would download it again
    assert r.status is Status.WARN and f"into {root / 'ckpt/LiveAvatar'}" in r.summary
    assert r.remedy == "--lora-path ckpt/LiveAvatar/liveavatar.safetensors"
    assert any("upstream does not read it for a hub id" in d for d in r.details)


@pytest.mark.parametrize("env", [{}, {"HF_HUB_OFFLINE": "0"}, {"HF_HUB_OFFLINE": "false"}])
def test_lora_hub_id_online_and_not_cached_warns_with_the_local_path(tmp_path, env):
    r = liveavatar.lora.run(make_ctx("1xH200", env=env, cwd=tmp_path))
    assert r.status is Status.WARN
    assert r.summary == (
        f"LoRA Quark-Vision/Live-Avatar will be downloaded from the Hugging Face Hub at launch, into "
        f"{tmp_path / 'ckpt/LiveAvatar'} (network needed)"
    )
    assert r.remedy.startswith("--lora-path ckpt/LiveAvatar/liveavatar.safetensors (download it first")


def test_lora_hub_file_whose_blob_is_missing_is_not_cached(tmp_path):
    root, _ = checkout_with_hub_cache(tmp_path, with_blob=False)  # an interrupted download leaves a dangling symlink
    r = liveavatar.lora.run(make_ctx("1xH200", env={"HF_HUB_OFFLINE": "1"}, liveavatar=root))
    assert r.status is Status.FAIL


def test_lora_hub_snapshot_without_refs_main_is_not_found_offline(tmp_path):
    root, _ = checkout_with_hub_cache(
        tmp_path, with_ref=False
    )  # offline hf_hub_download resolves "main" through refs/main only
    r = liveavatar.lora.run(make_ctx("1xH200", env={"HF_HUB_OFFLINE": "1"}, liveavatar=root))
    assert r.status is Status.FAIL


# ------------------------------------------------------------------------------------------ la.commit


def git(root: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


@pytest.fixture
def clone(tmp_path, monkeypatch) -> Path:
    """A git checkout holding every rule file; its first commit stands for the pinned one."""
    root = make_checkout(tmp_path / "LiveAvatar")
    for rel in RULE_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "upstream")
    monkeypatch.setattr(liveavatar, "UPSTREAM_COMMIT", git(root, "rev-parse", "HEAD"))
    return root


def test_commit_at_the_pinned_commit_passes(clone):
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=clone))
    assert r.status is Status.PASS and "the commit avatardoctor's rules were verified against" in r.summary
    assert r.data["commit"] == liveavatar.UPSTREAM_COMMIT and r.data["modified_rule_files"] == []


def test_commit_a_later_commit_that_left_the_rule_files_alone_passes(clone):
    (clone / "README.md").write_text("news\n")
    git(clone, "add", "README.md")
    git(clone, "commit", "-qm", "Update README.md")
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=clone))
    assert r.status is Status.PASS and "the rule files match" in r.summary
    assert r.data["rule_files_changed_since_pinned"] == []


def test_commit_a_later_commit_that_changed_the_pipeline_warns_naming_it(clone):
    pipeline = "liveavatar/models/wan/causal_s2v_pipeline_tpp.py"
    (clone / pipeline).write_text("# cond cache of 9000 tokens\n")
    git(clone, "commit", "-qam", "bigger cond cache")
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=clone))
    assert r.status is Status.WARN and "may not hold" in r.summary
    assert f"changed since {liveavatar.UPSTREAM_COMMIT[:7]}: {pipeline}" in r.details


def test_commit_a_locally_edited_pipeline_warns_naming_the_file(clone):
    """Upstream issue #11: a user who edited the pipeline gets rules that may not hold, and is told so."""
    pipeline = "liveavatar/models/wan/causal_s2v_pipeline.py"
    (clone / pipeline).write_text("# patched\n")
    (clone / "infinite_inference_multi_gpu.sh").write_text("# my flags\n")
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=clone))
    assert r.status is Status.WARN and "modified locally" in r.summary
    assert r.data["modified_rule_files"] == [pipeline] and f"modified locally: {pipeline}" in r.details
    assert "1 other modified file (none the rules depend on)" in r.details


def test_commit_another_history_cannot_be_compared_and_warns(clone, monkeypatch):
    monkeypatch.setattr(liveavatar, "UPSTREAM_COMMIT", "9c2c38de1715e553127b42c82cb959f756b02595")
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=clone))
    assert r.status is Status.WARN and "not in this clone's history" in " ".join(r.details)


def test_commit_of_a_folder_that_is_no_git_checkout_warns(tmp_path):
    root = make_checkout(tmp_path / "LiveAvatar")
    r = liveavatar.commit.run(make_ctx("5xH800-healthy", liveavatar=root))
    assert r.status is Status.WARN and r.summary.startswith("not a git checkout") and r.data == {"commit": None}


def test_commit_skipped_without_a_checkout():
    assert liveavatar.commit.run(make_ctx("5xH800-healthy")).status is Status.SKIP
