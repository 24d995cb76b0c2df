"""The OOM step's rank (tests/gpu/gpu_acceptance.py): a real CUDA out-of-memory in the first clip's
denoising, run by the runner under the per-rank shim as Live Avatar's entry would be.

It prints Live Avatar's phase lines (load, text encoding, clip 1 denoise), holds half of the free
memory, then asks for 8 GiB more than is left, in whole GiB, so that torch's message ("Tried to
allocate N.00 GiB") and the shim's OOM observer can be compared with the request exactly. torch is
imported before the first phase line: the shim attaches its OOM observer at a phase change once the
entry has imported torch.
"""

from __future__ import annotations

import torch

GIB = 2**30


def main() -> None:
    print("Creating WanS2V pipeline.", flush=True)  # load
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    free, _ = torch.cuda.mem_get_info(device)
    held = torch.empty(free // 2 // GIB * GIB, dtype=torch.uint8, device=device)
    print("Generating video ...", flush=True)  # text encoding
    print("complete prepare conditional inputs", flush=True)  # clip 1 denoise
    free, _ = torch.cuda.mem_get_info(device)
    request = (free // GIB + 8) * GIB
    print(f"acceptance: requesting {request} bytes on cuda:0 ({free} free, {held.numel()} held)", flush=True)
    torch.empty(request, dtype=torch.uint8, device=device)
    print("acceptance: the allocation did not fail", flush=True)


if __name__ == "__main__":
    main()
