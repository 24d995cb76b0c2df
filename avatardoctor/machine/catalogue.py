"""Built-in machines for "what if" questions: `--machine COUNTxMODEL` (5x4090, 8xH100, 1xH200...).

Each card is described as NVML reports it: its name, total memory in MiB, compute capability, and
how such boxes are really built: GeForce and workstation cards on PCIe in a dual-socket server
(NVIDIA disables GeForce peer-to-peer, so P2P is reported unsupported), SXM cards on an HGX board
where every pair is joined by NVSwitch (nvidia-smi shows NV12 / NV18 / NV8). Catalogue GPUs are idle
and headless; driver-reserved memory and the host (RAM, /dev/shm) are not modelled: record the
real box with `machine record` for those.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from avatardoctor.errors import InputError
from avatardoctor.machine.model import Gpu, GpuPair, Machine, Pcie
from avatardoctor.units import MIB

DEMO_SPEC = "5x4090"  # the seeds' box: five RTX 4090 on PCIe


@dataclass(frozen=True)
class Card:
    key: str
    name: str  # as NVML reports it
    total_mib: int  # as NVML / nvidia-smi report it for this card
    cc: tuple[int, int]
    pcie_gen: int
    nvlinks_per_pair: int = 0  # 0: a PCIe box; otherwise an HGX board with NVSwitch
    pcie_p2p: bool = True  # GeForce cards: peer-to-peer disabled by the driver

    @property
    def max_count(self) -> int:
        return 8 if self.nvlinks_per_pair else 16


CARDS = (
    Card("3090", "NVIDIA GeForce RTX 3090", 24576, (8, 6), 4, pcie_p2p=False),
    Card("4090", "NVIDIA GeForce RTX 4090", 24564, (8, 9), 4, pcie_p2p=False),
    Card("5090", "NVIDIA GeForce RTX 5090", 32607, (12, 0), 5, pcie_p2p=False),
    Card("A6000", "NVIDIA RTX A6000", 49140, (8, 6), 4),
    Card("L40S", "NVIDIA L40S", 46068, (8, 9), 4),
    Card("A100-40GB", "NVIDIA A100-SXM4-40GB", 40960, (8, 0), 4, nvlinks_per_pair=12),
    Card("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920, (8, 0), 4, nvlinks_per_pair=12),
    Card("H100", "NVIDIA H100 80GB HBM3", 81559, (9, 0), 5, nvlinks_per_pair=18),
    Card("H800", "NVIDIA H800", 81559, (9, 0), 5, nvlinks_per_pair=8),
    Card("H200", "NVIDIA H200", 143771, (9, 0), 5, nvlinks_per_pair=18),
)

_SPEC = re.compile(r"^\s*(\d{1,3})\s*[x×]\s*(.+?)\s*$", re.IGNORECASE)
# Bus ids as such boxes enumerate them (HGX order for SXM boards, one root port per slot for PCIe).
_HGX_BUSES = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")


def _normalise(model: str) -> str:
    s = model.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace("RTX", "")
    return re.sub(r"[\s_\-]", "", s).replace("GB", "G")


def looks_like_spec(text: str) -> bool:
    return bool(_SPEC.match(text))


def find_card(model: str) -> Card:
    wanted = _normalise(model)
    for card in CARDS:
        if _normalise(card.key) == wanted:
            return card
    if wanted == "A100":
        raise InputError("--machine: the A100 comes as A100-40GB and A100-80GB; name one (e.g. 4xA100-80GB)")
    known = ", ".join(c.key for c in CARDS)
    raise InputError(f"--machine: unknown GPU model {model!r}; the catalogue has {known}")


def catalogue_machine(spec: str) -> Machine:
    m = _SPEC.match(spec)
    if not m:
        raise InputError(f"--machine: {spec!r} is not COUNTxMODEL (e.g. 5x4090, 8xH100)")
    count, card = int(m.group(1)), find_card(m.group(2))
    if not 1 <= count <= card.max_count:
        board = "an HGX board holds" if card.nvlinks_per_pair else "the catalogue's PCIe boxes hold"
        raise InputError(f"--machine: {board} 1 to {card.max_count} {card.key} GPUs, not {count}")
    canonical = f"{count}x{card.key}"
    gpus = []
    for i in range(count):
        bus = _HGX_BUSES[i] if card.nvlinks_per_pair else f"{(i * 0x20 + 1) % 0x100:02X}"
        total = card.total_mib * MIB
        gpus.append(
            Gpu(
                index=i,
                name=card.name,
                uuid="GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"avatardoctor/{canonical}/{i}")),
                pci_bus_id=f"00000000:{bus}:00.0",
                compute_capability=card.cc,
                total_bytes=total,
                used_bytes=0,
                free_bytes=total,
                persistence_mode=True,
                pcie=Pcie(card.pcie_gen, card.pcie_gen, 16, 16),
            )
        )
    pairs = []
    half = (count + 1) // 2 if count >= 5 else count  # 5+ cards sit on a dual-socket server
    for a in range(count):
        for b in range(a + 1, count):
            same_socket = (a < half) == (b < half)
            level = "NODE" if same_socket else "SYS"
            if card.nvlinks_per_pair:
                pairs.append(GpuPair(a, b, level, "ok", "ok", nvlinks=card.nvlinks_per_pair))
                continue
            if not card.pcie_p2p:
                p2p = "chipset_not_supported"
            else:
                p2p = "ok" if same_socket else "topology_not_supported"
            pairs.append(GpuPair(a, b, level, p2p, p2p))
    return Machine(
        source=f"catalogue:{canonical}",
        gpus=tuple(gpus),
        pairs=tuple(pairs),
    )
