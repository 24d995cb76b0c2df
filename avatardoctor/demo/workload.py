"""The built-in demo workload: a small real model run the way Live Avatar's TPP pipeline runs, one
process per rank under torchrun, printing Live Avatar's console lines at the same moments.

    python -m torch.distributed.run --nproc_per_node 5 --master_port P \\
        -m avatardoctor.demo.workload --num_gpus_dit 4 --enable_vae_parallel ... (entry_argv)

What is real: the process group (NCCL where every local rank has a GPU of its own, gloo on the CPU
otherwise: see placement());
small checkpoint tensors read from --ckpt_dir with the safetensors library; an FSDP-style root
unshard (each rank holds one shard of a flat parameter and all_gathers it); a rank-128 LoRA merged
into the weights; per clip and per 3-latent-frame block, DiT rank i running denoising step i (a
patchify / matmul / GELU / matmul velocity and an Euler update) and handing the latents to the next
rank with send/recv; the last rank decoding each block (a conv and a trilinear upsample to frames).
What is not: the model is a few hundred thousand random parameters drawn from --base_seed (the real
DiT's shapes would not fit this purpose, and a tiny skeleton's random bytes are not valid numbers),
the image and audio are not read, and the output is frame statistics in an .npz, never a video.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from avatardoctor.ckpt import layout
from avatardoctor.demo.memory import ROOT_UNSHARD_BYTES, cuda_device_count, cuda_ordinal
from avatardoctor.upstream import LORA_RANK, SIZES, Size, str2bool

LATENT_CHANNELS = 16
LATENT_STRIDE = 8  # pixels per latent, each way
BLOCK_LATENT_FRAMES = 3  # Live Avatar's num_frames_per_block
MOTION_FRAMES = 73  # the s2v config's motion frames: they set how many blocks a clip has
PATCH = 2
TOKEN_FEATURES = LATENT_CHANNELS * PATCH * PATCH
HIDDEN = 256
VOCAB = 256  # the demo's "text encoder" embeds the prompt's UTF-8 bytes
SCHEDULE_SHIFT = 3.0  # FlowMatchEulerDiscreteScheduler(shift=3), as upstream's euler solver
LORA_ALPHA = 64.0  # liveavatar/configs/s2v_causal_sft.yaml lora_alpha
SMALL_FILE_BYTES = 64 * 2**20  # checkpoint files the demo loads whole: a tiny skeleton's (KB), not a real one's (GB)
VAE_BOTTLENECK_S = 0.01  # upstream warns when the VAE rank found its latents already waiting
UNSHARD_HOLD_S = 2.0  # the unsharded root is held this long: 20 of the sampler's 10 Hz samples, a few on a starved box


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Upstream's flag names and defaults; flags the demo does not know are accepted and ignored."""
    p = argparse.ArgumentParser(description="avatardoctor's demo workload (Live Avatar's TPP run, small)")
    p.add_argument("--task", default="s2v-14B")
    p.add_argument("--size", default="1280*720", choices=SIZES)
    p.add_argument("--ckpt_dir", default=None)
    p.add_argument("--offload_model", type=str2bool, default=None)
    p.add_argument("--ulysses_size", type=int, default=1)
    p.add_argument("--save_file", default=None)
    p.add_argument("--prompt", default="")
    p.add_argument("--image", default=None)
    p.add_argument("--audio", default=None)
    p.add_argument("--base_seed", type=int, default=420)
    p.add_argument("--sample_solver", default="euler", choices=("euler", "unipc", "dpm++"))
    p.add_argument("--sample_steps", type=int, default=None)
    p.add_argument("--sample_guide_scale", type=float, default=None)
    p.add_argument("--num_clip", type=int, default=None)
    p.add_argument("--infer_frames", type=int, default=80)
    p.add_argument("--lora_path_dmd", default=None)
    p.add_argument("--training_config", default=None)
    p.add_argument("--num_gpus_dit", type=int, default=4)
    for switch in (
        "--load_lora",
        "--convert_model_dtype",
        "--single_gpu",
        "--enable_vae_parallel",
        "--offload_kv_cache",
        "--enable_online_decode",
        "--fp8",
        "--t5_fsdp",
        "--t5_cpu",
        "--dit_fsdp",
    ):
        p.add_argument(switch, action="store_true")
    args, _unknown = p.parse_known_args(argv)
    args.sample_steps = args.sample_steps or 40  # upstream's config fallback
    args.num_clip = args.num_clip or 2  # upstream: as many as the audio allows; the demo reads no audio
    if args.sample_solver != "euler":
        raise NotImplementedError("Unsupported solver.")
    if args.infer_frames % 4:
        raise ValueError(f"--infer_frames {args.infer_frames}: must be a multiple of 4")
    return args


# ------------------------------------------------------------------------------------- the console


def init_logging(rank: int) -> None:
    """Upstream's: INFO lines from rank 0 only, in Wan's format."""
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s", stream=sys.stdout)
    else:
        logging.basicConfig(level=logging.ERROR)


def say(line: str) -> None:
    """One line in one write, at once: the runner timestamps lines as they come, and ranks sharing
    the console never interleave inside a line (print() writes the line end separately, which
    PYTHONUNBUFFERED turns into a second write)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def tqdm_bar(total: int, seconds: float) -> str:
    """What tqdm leaves in a log for a finished bar: its first and last states, \\r-separated. One
    write, so another rank's line is never glued onto a half-drawn bar."""
    rate = total / max(seconds, 1e-6)
    rate_text = f"{rate:5.2f}it/s" if rate >= 1 else f"{1 / rate:5.2f}s/it"
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"\r  0%|          | 0/{total} [00:00<?, ?it/s]"
        f"\r100%|██████████| {total}/{total} [{minutes:02d}:{secs:02d}<00:00, {rate_text}]\n"
    )


# --------------------------------------------------------------------------------- the checkpoint


@dataclass(frozen=True)
class LoadedTensors:
    files: int
    tensors: int  # named in the files' headers
    nbytes: int  # of tensor data read: 0 where only the headers were
    data_read: bool


def load_tensors(paths: list[Path], device: torch.device) -> LoadedTensors:
    """Small files (a tiny skeleton): every tensor, with the safetensors library, onto the device.
    Larger ones (a full-size skeleton, the real 32 GB checkpoint): the headers only; safetensors
    maps the file, and touching even small tensors spread over 32 GB pulls gigabytes into the
    page cache (17 s on a fresh sparse skeleton)."""
    if any(p.stat().st_size > SMALL_FILE_BYTES for p in paths):
        from avatardoctor.ckpt.safetensors_file import read_header

        return LoadedTensors(len(paths), sum(len(read_header(p).tensors) for p in paths), 0, data_read=False)
    from safetensors import safe_open

    tensors = nbytes = 0
    for path in paths:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensor = f.get_tensor(name).to(device)
                tensors, nbytes = tensors + 1, nbytes + tensor.numel() * tensor.element_size()
    return LoadedTensors(len(paths), tensors, nbytes, data_read=True)


def describe(loaded: LoadedTensors, what: str, where: Path) -> str:
    if loaded.data_read:
        return f"demo: loaded {loaded.tensors} {what} tensors ({loaded.nbytes} bytes) from {where} ({loaded.files} file(s))"
    return f"demo: read only the headers of {where} ({loaded.files} file(s), {loaded.tensors} {what} tensors): too large to load"


def checkpoint_shards(ckpt_dir: Path) -> list[Path] | None:
    """The DiT shards named by the index (upstream's or the seeds'), or None without an index."""
    import json

    for index_name in (layout.UPSTREAM_INDEX, layout.SEED_INDEX):
        index = ckpt_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [ckpt_dir / s for s in shards]
    return None


# ------------------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class Geometry:
    """A clip's shape in latents, from --size and --infer_frames as upstream derives it."""

    height: int  # pixels
    width: int
    infer_frames: int

    @classmethod
    def from_args(cls, size: str, infer_frames: int) -> Geometry:
        # --size is an area budget at the image's aspect ratio, padded to multiples of 64; the demo
        # reads no image and assumes one of the size's own aspect ratio.
        parsed = Size(size)
        width, height = parsed.width // 64 * 64, parsed.height // 64 * 64
        return cls(height, width, infer_frames)

    @property
    def latent_frames(self) -> int:
        motion_latents = (MOTION_FRAMES + 3) // 4
        return (self.infer_frames + 3 + MOTION_FRAMES) // 4 - motion_latents

    @property
    def blocks(self) -> int:
        return self.latent_frames // BLOCK_LATENT_FRAMES

    @property
    def frames_per_block(self) -> int:
        return self.infer_frames // self.blocks


ROOT_SHAPES = {
    "w_in": (TOKEN_FEATURES, HIDDEN),
    "w_out": (HIDDEN, TOKEN_FEATURES),
    "text_embedding": (VOCAB, HIDDEN),
    "vae_conv": (3, LATENT_CHANNELS, 3, 3),
}
ROOT_SCALES = {"w_in": TOKEN_FEATURES**-0.5, "w_out": HIDDEN**-0.5, "text_embedding": 0.1, "vae_conv": 0.2}


def root_parameter(seed: int) -> torch.Tensor:
    """The weights the demo computes with, drawn from the seed: the start of the flat root parameter."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(math.prod(shape), generator=g) * ROOT_SCALES[name] for name, shape in ROOT_SHAPES.items()]
    return torch.cat(parts)


# FSDP's gather into one flat tensor; torch 2.13 renamed it (the old name warns), torch>=2.1 has the old one
all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def unshard_root(seed: int, rank: int, world: int, device: torch.device) -> dict[str, torch.Tensor]:
    """FSDP's root unshard: this rank keeps only its shard of the flat parameter, then all_gathers the
    others' and holds the whole of it (ROOT_UNSHARD_BYTES, the real root's share of a rank's memory) for
    UNSHARD_HOLD_S, long enough for the sampler to see it, before freeing it. The flat parameter starts
    with the weights the demo computes with (root_parameter: every rank draws them from the seed and keeps
    its shard, so the gathered weights equal what a single process draws); the rest stands for what the
    real root also holds (embeddings, audio injectors, AdaLN, head) and is zeros."""
    used = root_parameter(seed)
    total = max(ROOT_UNSHARD_BYTES // 4, used.numel())
    shard_len = -(-total // world)
    shard = torch.zeros(shard_len)
    mine = used[rank * shard_len : (rank + 1) * shard_len]
    shard[: mine.numel()] = mine
    shard = shard.to(device)
    flat = torch.empty(shard_len * world, device=device)
    all_gather_flat(flat, shard)  # straight into the flat parameter, as FSDP does: no second copy
    del shard
    weights, at = {}, 0
    for name, shape in ROOT_SHAPES.items():
        n = math.prod(shape)
        weights[name] = flat[at : at + n].reshape(shape).clone()
        at += n
    time.sleep(UNSHARD_HOLD_S)
    del flat  # the demo's DiT keeps only its own weights: the spike ends here
    return weights


def merge_lora(weights: dict[str, torch.Tensor], seed: int) -> None:
    """W += alpha / rank * B @ A on the DiT projections, as peft's merge_and_unload does."""
    g = torch.Generator().manual_seed(seed + 1)
    for name in ("w_in", "w_out"):
        rows, cols = weights[name].shape
        down = torch.randn(rows, LORA_RANK, generator=g) * 0.01
        up = torch.randn(LORA_RANK, cols, generator=g) * 0.01
        weights[name] += (LORA_ALPHA / LORA_RANK * down @ up).to(weights[name].device)


def euler_sigmas(steps: int) -> list[float]:
    """The shifted flow-matching schedule, ending at 0."""
    base = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    shifted = SCHEDULE_SHIFT * base / (1 + (SCHEDULE_SHIFT - 1) * base)
    return shifted.tolist()


class DemoDiT:
    def __init__(self, weights: dict[str, torch.Tensor]):
        self.w = weights
        half = HIDDEN // 2
        self.freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half).to(weights["w_in"].device)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        ids = torch.tensor(list(prompt.encode("utf-8")), dtype=torch.long, device=self.freqs.device)
        if ids.numel() == 0:
            return torch.zeros(HIDDEN, device=self.freqs.device)
        return self.w["text_embedding"][ids].mean(0)

    def step(self, latents: torch.Tensor, sigma: float, sigma_next: float, context: torch.Tensor) -> torch.Tensor:
        """One denoising step on a block [C, F, h, w]: predict the velocity, then an Euler update."""
        c, f, h, w = latents.shape
        patches = latents.reshape(c, f, h // PATCH, PATCH, w // PATCH, PATCH).permute(1, 2, 4, 0, 3, 5)
        tokens = patches.reshape(-1, TOKEN_FEATURES)
        angles = sigma * 1000.0 * self.freqs
        time_embedding = torch.cat([angles.sin(), angles.cos()])
        hidden = F.gelu(tokens @ self.w["w_in"] + time_embedding + context)
        velocity = (hidden @ self.w["w_out"]).reshape(f, h // PATCH, w // PATCH, c, PATCH, PATCH)
        velocity = velocity.permute(3, 0, 1, 4, 2, 5).reshape(c, f, h, w)
        return latents + (sigma_next - sigma) * velocity

    def decode(self, latents: torch.Tensor, frames: int) -> torch.Tensor:
        """The "VAE": a 3x3 conv to RGB, then a trilinear upsample to frames x height x width. [3, T, H, W]"""
        _, _, h, w = latents.shape
        rgb = F.conv2d(latents.permute(1, 0, 2, 3), self.w["vae_conv"], padding=1)  # [F, 3, h, w]
        size = (frames, h * LATENT_STRIDE, w * LATENT_STRIDE)
        video = F.interpolate(rgb.permute(1, 0, 2, 3)[None], size=size, mode="trilinear", align_corners=False)[0]
        return video.tanh()


# ---------------------------------------------------------------------------------- the pipeline


@dataclass
class Decoded:
    blocks: int = 0
    checksum: float = 0.0  # sum of every final latent the VAE rank received
    frame_means: list[np.ndarray] = field(default_factory=list)  # [T, 3] per block

    @property
    def frames(self) -> int:
        return sum(len(m) for m in self.frame_means)


def generate(
    args, model: DemoDiT, geo: Geometry, rank: int, dit_ranks: int, vae_rank: int, device: torch.device
) -> Decoded:
    """TPP: step i of every block runs on DiT rank i % dit_ranks (upstream's modulo cycling), each
    handing the latents on with send/recv; the final step's latents go to the VAE rank. With one
    process, every step and the decode run here."""
    sigmas = euler_sigmas(args.sample_steps)
    context = model.encode_prompt(args.prompt)
    h, w = geo.height // LATENT_STRIDE, geo.width // LATENT_STRIDE
    block_shape = (LATENT_CHANNELS, BLOCK_LATENT_FRAMES, h, w)
    say("complete prepare conditional inputs")  # tpp.py:919
    dist.barrier()  # upstream: wait for all ranks to finish initialisation
    decoded = Decoded()
    for clip in range(args.num_clip):
        noise = None
        if rank == 0:  # step 0 of every block runs on rank 0, from the clip's noise (seed + clip, as upstream)
            g = torch.Generator().manual_seed(args.base_seed + clip)
            noise = torch.randn(LATENT_CHANNELS, geo.latent_frames, h, w, generator=g).to(device)
        for block in range(geo.blocks):
            started = time.perf_counter()
            latents = (
                None if noise is None else noise[:, block * BLOCK_LATENT_FRAMES : (block + 1) * BLOCK_LATENT_FRAMES]
            )
            for i in range(args.sample_steps):
                if rank != i % dit_ranks:
                    continue
                previous = (i - 1) % dit_ranks
                if i > 0 and previous != rank:
                    latents = torch.empty(block_shape, device=device)
                    dist.recv(latents, previous)
                assert latents is not None  # rank 0 starts every block from the noise; the others receive it
                latents = model.step(latents.contiguous(), sigmas[i], sigmas[i + 1], context)
                target = vae_rank if i == args.sample_steps - 1 else (i + 1) % dit_ranks
                if target != rank:
                    dist.send(latents.contiguous(), target)
            sys.stderr.write(
                tqdm_bar(args.sample_steps, time.perf_counter() - started)
            )  # tpp.py:1061 tqdm(timesteps): every rank, every block
            sys.stderr.flush()
            if rank == vae_rank:
                last_dit = (args.sample_steps - 1) % dit_ranks
                if last_dit != rank:
                    waited = time.perf_counter()
                    latents = torch.empty(block_shape, device=device)
                    dist.recv(latents, last_dit)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if time.perf_counter() - waited < VAE_BOTTLENECK_S:
                        say("WARNING: VAE serves as a bottleneck!")  # tpp.py:1101
                assert latents is not None  # from the last DiT rank, or this rank's own last step
                decoded.blocks += 1
                decoded.checksum += latents.double().sum().item()
                video = model.decode(latents, geo.frames_per_block)
                if clip == 0 and block == 0:
                    video = video[:, 3:]  # upstream keeps 3 frames fewer of the very first block
                decoded.frame_means.append(video.mean(dim=(2, 3)).T.cpu().numpy())
    dist.barrier()  # tpp.py:1133-1134: every rank's last bar is drawn before any rank says "denoising video done"
    return decoded


def output_path(args) -> Path:
    """Where upstream writes its MP4, with .npz: ./output/<YYYYmmdd_HHMMSS>_<steps>step_<prompt[:50]>."""
    if args.save_file:
        return Path(args.save_file).with_suffix(".npz")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    prompt = args.prompt.replace(" ", "_").replace("/", "_")[:50]
    return Path("output") / f"{stamp}_{args.sample_steps}step_{prompt}.npz"


def save(args, decoded: Decoded, world: int) -> Path:
    path = output_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        frame_means=np.concatenate(decoded.frame_means),  # [frames, 3]: each frame's mean R, G, B in [-1, 1]
        latent_checksum=decoded.checksum,
        blocks=decoded.blocks,
        prompt=args.prompt,
        size=args.size,
        base_seed=args.base_seed,
        world_size=world,
    )
    return path


@dataclass(frozen=True)
class Placement:
    device: torch.device
    backend: str
    note: str  # what rank 0 prints about the choice


def placement(local_rank: int, local_world: int, cuda_devices: int) -> Placement:
    """cuda:<local rank> with NCCL where every local rank has a GPU of its own; otherwise every rank on
    the CPU with gloo. Never NCCL with fewer GPUs than ranks: NCCL refuses two ranks on one GPU
    ("Duplicate GPU detected"), and gloo's send/recv cannot carry a CUDA tensor to a CPU rank."""
    ranks = f"{local_world} rank{'s' if local_world > 1 else ''}"
    ordinal = cuda_ordinal(local_rank, local_world, cuda_devices)  # the plan's prediction is keyed by the same choice
    if ordinal is not None:
        gpus = "GPU 0" if local_world == 1 else f"GPUs 0-{local_world - 1}"
        return Placement(torch.device(f"cuda:{ordinal}"), "nccl", f"{ranks} on {gpus} with nccl")
    why = f"{cuda_devices} GPU{'s' if cuda_devices != 1 else ''} for {ranks}" if cuda_devices else "no CUDA"
    return Placement(torch.device("cpu"), "gloo", f"{ranks} on the CPU with gloo ({why})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    say(
        "COMPILE: False"
    )  # the demo never calls torch.compile (upstream inference_utils.py:6 print(f"COMPILE: {COMPILE}"))
    world = int(os.environ.get("WORLD_SIZE", 1))
    say(f"world_size: {world}")  # upstream entry:354
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    where = placement(local_rank, local_world, cuda_device_count())
    device = where.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(where.backend)  # always, even for one process, as upstream
    rank = dist.get_rank()
    init_logging(rank)
    if rank == 0:
        say(f"demo: {where.note}")
    if args.offload_model is None:
        args.offload_model = world == 1
        logging.info(f"offload_model is not specified, set to {args.offload_model}.")  # entry:363-364
    if world > 1:
        if not args.enable_vae_parallel:
            raise AssertionError("VAE parallel is required for distributed inference.")  # entry:374
        if args.num_gpus_dit != world - 1:
            raise AssertionError(
                f"--num_gpus_dit {args.num_gpus_dit}: the demo needs world_size - 1 = {world - 1} DiT ranks"
            )
        dit_ranks, vae_rank = args.num_gpus_dit, args.num_gpus_dit
        say("Using TPP distributed inference.")  # entry:377
    else:
        dit_ranks, vae_rank = 1, 0
        say(f"Using single GPU inference with offload mode: {args.offload_model}")  # entry:389
    geo = Geometry.from_args(args.size, args.infer_frames)
    logging.info(f"Generation job args: {args}")  # entry:415
    logging.info(
        f"Generation model config: demo DiT: {HIDDEN} hidden, {LATENT_CHANNELS} latent channels, "
        f"{geo.height}x{geo.width} pixels, {geo.blocks} blocks of {BLOCK_LATENT_FRAMES} latent frames per clip"
    )
    logging.info(f"Input prompt: {args.prompt}")  # entry:423
    logging.info("Creating WanS2V pipeline.")  # entry:454
    logging.info(f"Creating WanModel from {args.ckpt_dir}")  # tpp.py:157
    ckpt = Path(args.ckpt_dir) if args.ckpt_dir else None
    shards = checkpoint_shards(ckpt) if ckpt and ckpt.is_dir() else None
    loaded = load_tensors(shards, device) if shards else None  # every rank loads its own copy, as in TPP
    if rank == 0:
        if loaded and ckpt:
            say(describe(loaded, "DiT", ckpt))
        else:
            say(f"demo: no DiT index in {args.ckpt_dir}: random weights only")
    weights = unshard_root(args.base_seed, rank, world, device)
    if rank == 0:
        say(
            f"demo: root parameter unsharded: {ROOT_UNSHARD_BYTES / 2**20:.0f} MiB gathered from {world} rank(s), "
            f"held {UNSHARD_HOLD_S:.0f} s and freed; the demo's DiT keeps {sum(t.numel() for t in weights.values())} values"
        )
    if args.load_lora and args.lora_path_dmd:
        say(
            f"Use LoRA: lora path: {args.lora_path_dmd}, lora rank: {LORA_RANK} , lora alpha:  {LORA_ALPHA}"
        )  # entry:470, upstream's spacing
        lora_file = Path(args.lora_path_dmd)
        if lora_file.is_file() and lora_file.suffix == ".safetensors":
            say(describe(load_tensors([lora_file], device), "LoRA", lora_file))
        else:
            say(
                f"demo: {args.lora_path_dmd} is not a local .safetensors file; the demo downloads nothing, and merges a random LoRA"
            )
        say(f"Merging LoRA weights from {args.lora_path_dmd}...")  # tpp.py:232
        merge_lora(weights, args.base_seed)
        say("LoRA merged successfully.")  # tpp.py:234
    logging.info("Generating video ...")  # entry:500
    decoded = generate(args, DemoDiT(weights), geo, rank, dit_ranks, vae_rank, device)
    say("denoising video done")  # entry:534
    say(f"rank: {rank}")  # entry:535
    if rank == vae_rank:
        path = save(args, decoded, world)
        say(
            f"demo: rank {rank} decoded {decoded.frames} frames from {decoded.blocks} blocks, "
            f"latent checksum {decoded.checksum:.9e}; wrote frame statistics (not a video) to {path}"
        )
    say(f"rank {rank} done, waiting for other ranks to finish...")  # entry:589
    dist.barrier()
    say(f"rank {rank} start destroying process group...")  # entry:591
    dist.destroy_process_group()
    logging.info("Finished.")  # entry:594


if __name__ == "__main__":
    main()
