"""What happened to a run: its class, the line that says so, and the smallest change that would help.

When several ranks fail they each say something, and the first real error is the cause:
1. success: exit code 0, neither hung nor interrupted, and no root-cause error (2); no-sound when the
   log also shows the audio merge failing (upstream catches it, exits 0 and leaves a silent MP4).
2. The earliest root-cause error: out of memory, an upstream rule (avatardoctor.upstream's log texts:
   assertions, the single-GPU KeyError '5', argparse's --size refusal, the conditioning-cache
   overflow; flash-attn's bare assertion, named by its traceback frame), a missing file, a failed
   Hugging Face download (its "treating as local path" fallback is what then misses the file). They
   beat NCCL errors whatever the order: the ranks that lose a peer report NCCL errors as they die.
3. interrupted (what the ranks print while being stopped is its echo).
4. hang: the runner saw the output stop (what the stopped job then prints is ignored).
5. The earliest NCCL error, NCCL watchdog timeout (hang) or other exception line (crashed).
6. crashed: torchrun's "failed (exitcode: N)" line, else the exit code.
A signal followed by two phase starts did not stop the run (connection retries while the ranks
meet, an optional file a library looked for): it is ignored. Out-of-memory and assertion errors
always end the rank, so they never are (the other ranks may still start one more clip).
Traceback frames (indented code) are never read as errors: they quote the raising code.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avatardoctor.config import resolve_config
from avatardoctor.files import UnreadableFile, open_regular
from avatardoctor.machine.model import XID_HARDWARE, xid_meaning
from avatardoctor.rules import RULES, SEED_REMEDY, Launch, Rule
from avatardoctor.runner.logparse import BAR, segments
from avatardoctor.upstream import LORA_DOWNLOAD, LORA_FILE, LORA_LOCAL

MAX_MESSAGE = 300


@dataclass(frozen=True)
class Failure:
    cls: str  # success, no-sound, oom, gpu-fault, nccl, hang, assertion, missing-file, hub-download, interrupted, crashed
    message: str
    remedy: str | None
    gpu: int | None = None  # CUDA index as the job sees it (rank i drives GPU i on one node)
    phase: str | None = None
    tried_to_allocate_mib: float | None = None
    at_elapsed_s: float | None = None

    def to_dict(self) -> dict:
        return {
            "class": self.cls,
            "message": self.message,
            "remedy": self.remedy,
            "gpu": self.gpu,
            "phase": self.phase,
            "tried_to_allocate_mib": self.tried_to_allocate_mib,
            "at_elapsed_s": self.at_elapsed_s,
        }


@dataclass(frozen=True)
class _Signal:
    kind: str
    text: str
    at: float
    rank: int | None


# What a launch prints when it hits one of upstream's rules (their log_text), beside argparse's refusal.
ASSERT_TEXTS: tuple[tuple[str, Rule], ...] = tuple((text, r) for r in RULES for text in r.log_texts)
FLASH_ATTN_REMEDY = (
    "install flash-attn 2 built for this torch and CUDA (pip install flash-attn==2.8.3 --no-build-isolation), or "
    "FlashAttention 3 on Hopper; the cross-attention calls it directly (`avatardoctor check --deep` imports it)"
)

# A GPU that failed, not the program: CUDA's sticky errors, and the driver's hardware Xid codes where the log quotes
# them (NVIDIA's Xid catalogue, avatardoctor.machine.model.XID_HARDWARE: 79 fallen off the bus, 48 double-bit ECC...).
GPU_FAULT = re.compile(
    r"an illegal memory access was encountered|uncorrectable ECC error|fallen off the bus"
    r"|\bXid\b(?:\s*\([^)]*\))?:?\s*(" + "|".join(map(str, XID_HARDWARE)) + r")\b"  # "Xid (PCI:...): 79, ", "Xid 79"
)


@dataclass(frozen=True)
class SeenXid:
    """An Xid NVML reported during the run (logs/gpu_health.csv)."""

    at_s: float  # elapsed_s of the health row that carried it
    gpu: int  # NVML index
    xid: int


MAX_HEALTH_CSV = 256 * 2**20


def read_health_xids(path: Path) -> list[SeenXid]:
    """The Xids in a run's logs/gpu_health.csv, in time order; none where the file is missing or unreadable (a CPU
    run, an older run folder), and a damaged row is passed over: the log's own evidence still classifies."""
    try:
        f, _ = open_regular(path, MAX_HEALTH_CSV)
    except UnreadableFile:
        return []
    seen = []
    with io.TextIOWrapper(f, errors="replace", newline="") as text, contextlib.suppress(csv.Error):
        for row in csv.DictReader(text):  # csv.Error (a field over its limit) ends it with what came before
            for code in (row.get("xid") or "").split(";"):
                try:
                    seen.append(SeenXid(float(row["elapsed_s"]), int(row["gpu"]), int(code)))
                except (TypeError, ValueError, KeyError):
                    continue
    return sorted(seen, key=lambda x: x.at_s)


def xid_remedy(xid: int, gpu: int | None) -> str:
    return xid_meaning(xid).replace("-i N", f"-i {gpu if gpu is not None else 'N'}")


# Tried in order; the first that matches names the line's kind.
_KINDS = (
    ("hub-download", re.compile(r"Failed to download from HF Hub")),  # before nccl: it may quote "Connection refused"
    ("oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory")),
    ("gpu-fault", GPU_FAULT),
    (
        "ffmpeg",
        re.compile(
            r"FFmpeg execute failed|merge_video_audio failed|No such file or directory: '?ffmpeg\b|ffmpeg: (?:command )?not found"
        ),
    ),
    (
        "flash-attn",
        re.compile(r"^\s*assert FLASH_ATTN_2_AVAILABLE"),
    ),  # the traceback's code line: a bare AssertionError follows
    ("assertion", re.compile("|".join(re.escape(text) for text, _ in ASSERT_TEXTS) + r"|^AssertionError\b")),
    ("hang", re.compile(r"Watchdog caught collective operation timeout")),
    (
        "nccl",
        re.compile(
            r"NCCL (?:error|WARN)|unhandled (?:system|cuda) error|nccl[A-Z]\w*Error|Dist(?:Backend|Network|Store)Error"
            r"|[Aa]ddress already in use|Connection refused|Connection reset by peer"
        ),
    ),
    (
        "missing-file",
        re.compile(
            r"No such file or directory|FileNotFoundError:|Incorrect path_or_model_id"
            r"|does not appear to have a file named"
        ),
    ),
    ("exit", re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")),
    ("summary", re.compile(r"ChildFailedError|SignalException")),  # torchrun's own, after the ranks have spoken
    ("exception", re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception)(?::|$)")),
)
_FRAME_KINDS = tuple((k, p) for k, p in _KINDS if k == "flash-attn")  # the one error only its frame names
ROOT_KINDS = ("oom", "gpu-fault", "flash-attn", "assertion", "missing-file", "hub-download")
ALWAYS_FATAL = ("oom", "gpu-fault", "flash-attn", "assertion")  # a CUDA context after an illegal access is gone


def classify(
    log_lines: Iterable[tuple[float, str]],
    exit_code: int | None,
    hung: bool = False,
    interrupted: bool = False,
    phases: list | None = None,
    nproc: int = 1,
    visible_gpus: Sequence[int] = (),
    xids: Sequence[SeenXid] = (),
) -> Failure:
    """What ended the job, from its log's last lines. `visible_gpus` is the job's CUDA_VISIBLE_DEVICES: the
    job's GPU n is visible_gpus[n], and the failure and its remedy name that one. `xids`: what NVML reported during
    the run (read_health_xids); a hardware Xid explains a run that did not succeed even where the log is silent
    or blames what followed it (NCCL errors, a hang, a generic crash), unless the log names the GPU fault itself."""
    phases = phases or []
    starts = sorted(start for _, start, _ in phases)
    went_on_after = starts[-2] if len(starts) > 1 else float("-inf")
    first, last_at = _first_signals(log_lines, went_on_after)
    at_end = _phase_at(phases, last_at)
    roots = sorted((first[k] for k in ROOT_KINDS if k in first), key=lambda s: s.at)
    if exit_code == 0 and not hung and not interrupted and not roots:
        if merge := first.get("ffmpeg"):  # upstream catches it: the run ends well, the MP4 is silent
            return Failure(
                "no-sound",
                f"finished without sound: {_cut(merge.text)}",
                _ffmpeg_remedy(merge.text, nproc),
                phase=_phase_at(phases, merge.at),
                at_elapsed_s=merge.at,
            )
        return Failure("success", "the run finished (exit code 0)", None)
    hardware = next((x for x in xids if x.xid in XID_HARDWARE), None)
    if hardware is not None and not (roots and roots[0].kind == "gpu-fault"):
        return Failure(
            "gpu-fault",
            f"Xid {hardware.xid} on GPU {hardware.gpu} at {hardware.at_s:.1f} s, reported by NVML during the run"
            f"{'' if roots else ' (the log does not say)'}",
            xid_remedy(hardware.xid, hardware.gpu),
            hardware.gpu,
            _phase_at(phases, hardware.at_s),
            at_elapsed_s=hardware.at_s,
        )
    if roots:
        return _explain(roots[0], phases, nproc, visible_gpus)
    if interrupted:
        return Failure("interrupted", "stopped by the user", None, phase=at_end, at_elapsed_s=last_at)
    if hung:
        where = f" during {at_end}" if at_end else ""
        return Failure(
            "hang",
            f"the output stopped at {last_at or 0:.1f} s{where} and the job did not finish",
            _hang_remedy(nproc),
            phase=at_end,
            at_elapsed_s=last_at,
        )
    errors = sorted((first[k] for k in ("hang", "nccl", "exception") if k in first), key=lambda s: s.at)
    if errors:
        return _explain(errors[0], phases, nproc, visible_gpus)
    if "exit" in first:
        return _explain(first["exit"], phases, nproc, visible_gpus)
    said = f"exit code {exit_code}" if exit_code is not None else "the job ended without an exit code"
    return Failure("crashed", f"{said}; no error in the log", None, phase=at_end, at_elapsed_s=last_at)


def _first_signals(
    log_lines: Iterable[tuple[float, str]], went_on_after: float
) -> tuple[dict[str, _Signal], float | None]:
    """The first line of each kind that can explain the end: one per kind, so memory stays flat."""
    first: dict[str, _Signal] = {}
    last_at = None
    for at, line in log_lines:
        last_at = at
        for rank, text in segments(line):
            frame = text.startswith(("    ", '  File "')) or BAR.match(
                text
            )  # a traceback frame quotes code; bars say nothing
            kinds = _FRAME_KINDS if frame else _KINDS
            kind = next((k for k, pattern in kinds if pattern.search(text)), None)
            if kind and kind not in first and (kind in ALWAYS_FATAL or at >= went_on_after):
                first[kind] = _Signal(kind, text.strip(), at, rank)
    return first, last_at


def _explain(signal: _Signal, phases: list, nproc: int, visible_gpus: Sequence[int]) -> Failure:
    phase = _phase_at(phases, signal.at)
    gpu = signal.rank if signal.rank is not None else (0 if nproc == 1 else None)
    message = _cut(signal.text)
    if signal.kind == "oom":
        if on_gpu := re.search(r"GPU (\d+) has a total capacity|\(GPU (\d+);", signal.text):
            gpu = int(on_gpu[1] or on_gpu[2])
        tried = re.search(r"Tried to allocate ([\d.]+) ?(B|KiB|MiB|GiB|TiB)\b", signal.text)
        mib = round(float(tried[1]) * _MIB_PER[tried[2]], 2) if tried else None
        gpu = _physical(gpu, visible_gpus)
        return Failure("oom", message, _oom_remedy(gpu, phase, nproc), gpu, phase, mib, signal.at)
    if signal.kind == "exit" and (named := re.search(r"local_rank: (\d+)", signal.text)):
        gpu = int(named[1])  # torchrun's own line names the rank that failed (the "exit" pattern holds it)
    cls = {"exception": "crashed", "exit": "crashed", "flash-attn": "assertion"}.get(signal.kind, signal.kind)
    remedy = _REMEDIES[signal.kind](signal.text, nproc)
    return Failure(cls, message, remedy, _physical(gpu, visible_gpus), phase, None, signal.at)


def _physical(gpu: int | None, visible_gpus: Sequence[int]) -> int | None:
    """The job's CUDA ordinal as NVML (and the plan, and the user) number that GPU."""
    return visible_gpus[gpu] if gpu is not None and gpu < len(visible_gpus) else gpu


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _phase_at(phases: list, at: float | None) -> str | None:
    """The phase under way at that time (a gap belongs to the phase before it)."""
    under_way = [name for name, start, _ in phases if at is not None and start <= at]
    return under_way[-1] if under_way else None


_MIB_PER = {"B": 2**-20, "KiB": 2**-10, "MiB": 1.0, "GiB": 1024.0, "TiB": 1024.0**2}
SMALLER_SIZES = "a smaller --size (688*368, then 384*256)"


def _oom_remedy(gpu: int | None, phase: str | None, nproc: int) -> str:
    if phase in (None, "load", "lora merge", "fp8", "text encoding"):
        idea = "--t5-cpu (T5 stays in host RAM); --fp8 does not lower this peak: it converts after the bf16 load"
    elif phase == "decode":
        idea = "--enable-online-decode (each clip decoded as it is made)" if nproc == 1 else SMALLER_SIZES
    elif nproc == 1:
        idea = f"--offload-kv-cache (the 4 KV caches in host RAM), then {SMALLER_SIZES}, or --fp8"
    else:
        idea = f"--fp8 if it is off, then {SMALLER_SIZES}"
    where = f"GPU {gpu}" if gpu is not None else "a GPU"
    return f"{where} ran out of memory{f' during {phase}' if phase else ''}: {idea}"


def _assertion_remedy(text: str, nproc: int) -> str | None:
    rule = next((r for printed, r in ASSERT_TEXTS if printed in text), None)
    if rule is None:
        return None
    if rule.gpu_layout:  # as la.asserts says it: upstream TPP is exactly 4 DiT GPUs and a VAE GPU
        return SEED_REMEDY
    return rule.remedy(Launch(resolve_config(nproc, "tpp" if nproc > 1 else "single"))) or None


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg")


def _missing_file_remedy(text: str, nproc: int) -> str:
    named = re.search(r"""(?:No such file or directory|Incorrect path_or_model_id):? ['"]([^'"]+)['"]""", text)
    if not named:
        return "check --ckpt-dir, --image and --audio; `avatardoctor ckpt verify CKPT_DIR` names every missing checkpoint file"
    path = PurePosixPath(named[1])
    relative = "relative paths start in the Live Avatar checkout"
    if path.name == LORA_FILE:
        return f"{LORA_DOWNLOAD}, then --lora-path {LORA_LOCAL}"
    if path.suffix.lower() in IMAGE_SUFFIXES + AUDIO_SUFFIXES:
        flag = "--image" if path.suffix.lower() in IMAGE_SUFFIXES else "--audio"
        return f"{flag}: {path} does not exist ({relative})"
    return f"{path} is missing: check --ckpt-dir ({relative}); `avatardoctor ckpt verify {path.parent}` lists every missing file"


def _nccl_remedy(text: str, nproc: int) -> str:
    if "address already in use" in text.lower():
        port = re.search(r"(?:\]:|port: ?)(\d{2,5})", text)
        taken = f": {port[1]} is taken (`ss -ltnp 'sport = :{port[1]}'` shows by whom)" if port else ""
        return f"--master-port with a free port{taken}"
    if "connection refused" in text.lower():
        return (
            "the ranks could not reach each other or the rendezvous: set NCCL_SOCKET_IFNAME to the interface they "
            "share (lo on one machine), check MASTER_ADDR, --master-port and firewalls; rerun with NCCL_DEBUG=INFO"
        )
    return (
        f"rerun with NCCL_DEBUG=INFO to see the failing call; then try NCCL_P2P_DISABLE=1, NCCL_SOCKET_IFNAME=lo "
        f"(one machine) and a larger /dev/shm (docker --shm-size=16g); "
        f"`avatardoctor nccl --nproc {nproc}` tests the GPUs without the model"
    )


def _hang_remedy(nproc: int) -> str:
    if nproc == 1:
        return (
            "rerun with NCCL_DEBUG=INFO (NCCL starts even for one GPU); with --offload-model True, swapping the "
            "models through a full host RAM stalls for minutes: check `free -g`"
        )
    return (
        f"a rank waits for a peer that never answers (TPP hands latents rank to rank): `avatardoctor nccl --nproc {nproc}` "
        "tests send/recv between these GPUs; try NCCL_P2P_DISABLE=1 on PCIe servers; rerun with NCCL_DEBUG=INFO"
    )


def _gpu_fault_remedy(text: str, nproc: int) -> str:
    if (xid := GPU_FAULT.search(text)) and xid[1]:
        return xid_meaning(int(xid[1]))
    if "ECC" in text:
        return xid_meaning(48)
    if "fallen off the bus" in text:
        return xid_meaning(79)
    return (
        "an illegal memory access: a kernel built for another torch or CUDA (flash-attn), or a failing GPU; rerun with "
        "CUDA_LAUNCH_BLOCKING=1 to name the kernel, and `avatardoctor check` (gpu.ecc, gpu.retired_pages, gpu.xid); "
        "the same GPU failing again points at the hardware"
    )


def _ffmpeg_remedy(text: str, nproc: int) -> str:
    if "FFmpeg execute failed" not in text:
        return "install ffmpeg on PATH (apt-get install ffmpeg, or conda install -c conda-forge ffmpeg): only the audio merge needs it"
    return "the audio merge failed (ffmpeg's reason follows the message): check that --audio decodes (`ffmpeg -v error -i AUDIO -f null -`)"


def _exit_remedy(text: str, nproc: int) -> str | None:
    if (code := re.search(r"exitcode: (-?\d+)\) local_rank: (\d+)", text)) and code[1] == "-9":
        return (
            f"rank {code[2]} was killed by SIGKILL without an error of its own: usually the kernel's OOM killer (host "
            "RAM: every TPP rank loads the weights through it); `dmesg | grep -i -e oom -e 'killed process'` confirms it"
        )
    return None


_REMEDIES = {
    "assertion": _assertion_remedy,
    "missing-file": _missing_file_remedy,
    "hub-download": lambda text, nproc: (
        f"--lora-path {LORA_LOCAL} (download it once where there is network: {LORA_DOWNLOAD})"
    ),
    "flash-attn": lambda text, nproc: FLASH_ATTN_REMEDY,
    "gpu-fault": _gpu_fault_remedy,
    "nccl": _nccl_remedy,
    "hang": lambda text, nproc: _hang_remedy(nproc),
    "exception": lambda text, nproc: None,
    "exit": _exit_remedy,
}
