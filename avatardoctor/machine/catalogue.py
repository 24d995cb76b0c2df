"""Built-in machines for "what if" questions: `--machine COUNTxMODEL` (5x4090, 8xH100, 1xH200...).

Each card is described as NVML reports it: its name, total memory in MiB, compute capability, and
how such boxes are really built: GeForce and workstation cards on PCIe in a dual-socket server
(NVIDIA disables GeForce peer-to-peer, so P2P is reported unsupported), SXM cards on an HGX board
where every pair is joined by NVSwitch (nvidia-smi shows NV12 / NV18 / NV8). Catalogue GPUs are idle
and headless; driver-reserved memory and the host (RAM, /dev/shm) are not modelled: record the
real box with `machine record` for those.

Boxes nobody can record yet are described in TOML (docs/machines.md, "Your own cards"): cards in the
user catalogue (`$XDG_CONFIG_HOME/avatardoctor/machines.toml`, else `~/.config/avatardoctor/machines.toml`)
add COUNTxKEY specs; `--machine FILE.toml` names a box (`gpus` and `model`, and its own cards).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from avatardoctor.errors import InputError
from avatardoctor.files import FileTooLarge, read_limited

if sys.version_info >= (3, 11):
    import tomllib
else:  # setup.cfg installs tomli on 3.10 only
    import tomli as tomllib
from avatardoctor.machine.model import Gpu, GpuPair, Machine, Pcie
from avatardoctor.units import MIB

DEMO_SPEC = "5x4090"
MAX_TOML_BYTES = 2**20  # a box or a catalogue of cards is a few KB  # the seeds' box: five RTX 4090 on PCIe


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


# Memory as nvidia-smi reports it (MiB) where a recorded box or a published nvidia-smi output shows it;
# "spec" marks a figure from NVIDIA's data sheet (GB x 1000^3 / 2^20, less what the driver keeps), not
# yet seen on a real box: record one (`machine record`) to replace it.
CARDS = (
    Card("3090", "NVIDIA GeForce RTX 3090", 24576, (8, 6), 4, pcie_p2p=False),
    Card("4090", "NVIDIA GeForce RTX 4090", 24564, (8, 9), 4, pcie_p2p=False),
    # 4090 boards rebuilt with 48 GB (the ones asked for in upstream's issues): not an NVIDIA product;
    # NVML names them as the 24 GB card. 49140 MiB assumed as for other 48 GB Ada/Ampere cards: not verified.
    Card("4090-48GB", "NVIDIA GeForce RTX 4090", 49140, (8, 9), 4, pcie_p2p=False),
    # https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/ (32 GB GDDR7, Blackwell)
    Card("5090", "NVIDIA GeForce RTX 5090", 32607, (12, 0), 5, pcie_p2p=False),
    Card("A6000", "NVIDIA RTX A6000", 49140, (8, 6), 4),
    # https://www.nvidia.com/en-us/data-center/l20/ (48 GB GDDR6, Ada, PCIe Gen4): MiB as the L40S, not verified
    Card("L20", "NVIDIA L20", 46068, (8, 9), 4),
    Card("L40S", "NVIDIA L40S", 46068, (8, 9), 4),
    # https://www.nvidia.com/en-us/products/workstations/professional-desktop-gpus/rtx-pro-6000/ (96 GB GDDR7,
    # Blackwell, PCIe Gen5); NVML name and MiB (96 GB less the driver's share) not verified on a real box
    Card("RTX-PRO-6000", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, (12, 0), 5),
    Card("A100-40GB", "NVIDIA A100-SXM4-40GB", 40960, (8, 0), 4, nvlinks_per_pair=12),
    Card("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920, (8, 0), 4, nvlinks_per_pair=12),
    # https://www.nvidia.com/en-us/data-center/a800/ : the A100 with NVLink cut to 400 GB/s (8 links)
    Card("A800", "NVIDIA A800-SXM4-80GB", 81920, (8, 0), 4, nvlinks_per_pair=8),
    Card("H100", "NVIDIA H100 80GB HBM3", 81559, (9, 0), 5, nvlinks_per_pair=18),
    Card("H800", "NVIDIA H800", 81559, (9, 0), 5, nvlinks_per_pair=8),
    # H20: Hopper with 96 GB HBM3 and 900 GB/s NVLink (18 links) on an HGX board, sold in China; NVIDIA
    # publishes no product page for it: figures from vendors' HGX H20 sheets, MiB not verified
    Card("H20", "NVIDIA H20", 97871, (9, 0), 5, nvlinks_per_pair=18),
    Card("H200", "NVIDIA H200", 143771, (9, 0), 5, nvlinks_per_pair=18),
    # https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200: 8 x 180 GB HBM3e, NVLink 5 at 1.8 TB/s, 18 links),
    # compute capability 10.0; MiB (180 GB less the driver's share) not verified on a real box
    Card("B200", "NVIDIA B200", 183359, (10, 0), 5, nvlinks_per_pair=18),
)

_SPEC = re.compile(r"^\s*(\d{1,3})\s*[x×]\s*(.+?)\s*$", re.IGNORECASE)
# Bus ids as such boxes enumerate them (HGX order for SXM boards, one root port per slot for PCIe).
_HGX_BUSES = ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")


def _normalise(model: str) -> str:
    s = model.upper().replace("NVIDIA", "").replace("GEFORCE", "").replace("RTX", "")
    return re.sub(r"[\s_\-]", "", s).replace("GB", "G")


def looks_like_spec(text: str) -> bool:
    return bool(_SPEC.match(text))


def user_catalogue_path(env: Mapping[str, str]) -> Path:
    """Where a user's own cards live: the XDG config folder."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "avatardoctor" / "machines.toml"


def _card_from_table(table: object, where: str) -> Card:
    """One [[card]] table, every field checked: a wrong one is a one-line error naming the file and key."""
    fields = {"key": str, "name": str, "memory_mib": int, "compute_capability": str, "pcie_gen": int}
    optional = {"nvlinks_per_pair": int, "pcie_p2p": bool}
    if not isinstance(table, dict):
        raise InputError(f"{where}: each [[card]] must be a table")
    label = f"{where}: card {table.get('key', '?')!r}"
    for name, kind in {**fields, **optional}.items():
        if name in fields and name not in table:
            raise InputError(f"{label}: {name} is missing")
        value = table.get(name, kind())
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InputError(f"{label}: {name} must be {kind.__name__}, not {value!r}")
    if unknown := set(table) - set(fields) - set(optional):
        raise InputError(f"{label}: unknown field {sorted(unknown)[0]!r}")
    major, dot, minor = table["compute_capability"].partition(".")
    if not (major.isdigit() and dot and minor.isdigit()):
        raise InputError(f'{label}: compute_capability is MAJOR.MINOR, e.g. "8.9"')
    if table["memory_mib"] <= 0 or table["pcie_gen"] not in range(1, 8):
        raise InputError(f"{label}: memory_mib must be positive and pcie_gen 1 to 7")
    return Card(
        table["key"],
        table["name"],
        table["memory_mib"],
        (int(major), int(minor)),
        table["pcie_gen"],
        table.get("nvlinks_per_pair", 0),
        table.get("pcie_p2p", True),
    )


def read_toml(path: Path, flag: str) -> dict:
    """A TOML file, bounded and parsed; InputError naming the flag and file when it cannot be."""
    where = f"{flag} {path}"
    try:
        text = read_limited(path, MAX_TOML_BYTES).decode("utf-8")
    except FileTooLarge:
        raise InputError(f"{where}: too large for a machine description (limit 1 MiB)") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{where}: not valid TOML ({e})") from None


def cards_in(doc: dict, where: str, known: tuple[Card, ...]) -> tuple[Card, ...]:
    """The [[card]] tables of a TOML document; a key the catalogue already has is refused (no silent change)."""
    tables = doc.get("card", [])
    if not isinstance(tables, list):
        raise InputError(f"{where}: card must be an array of tables ([[card]])")
    cards = tuple(_card_from_table(t, where) for t in tables)
    taken = {_normalise(c.key) for c in known}
    for card in cards:
        if _normalise(card.key) in taken:
            raise InputError(f"{where}: card {card.key!r} is already in the catalogue; give yours another key")
        taken.add(_normalise(card.key))
    return cards


def all_cards(env: Mapping[str, str] | None = None) -> tuple[Card, ...]:
    """The built-in cards, then the user's (the XDG catalogue file, when there is one)."""
    path = user_catalogue_path(os.environ if env is None else env)
    if not path.exists():
        return CARDS
    return CARDS + cards_in(read_toml(path, "user catalogue"), f"user catalogue {path}", CARDS)


def find_card(model: str, cards: tuple[Card, ...] | None = None) -> Card:
    cards = all_cards() if cards is None else cards
    wanted = _normalise(model)
    for card in cards:
        if _normalise(card.key) == wanted:
            return card
    if wanted == "A100":
        raise InputError("--machine: the A100 comes as A100-40GB and A100-80GB; name one (e.g. 4xA100-80GB)")
    known = ", ".join(c.key for c in cards)
    raise InputError(f"--machine: unknown GPU model {model!r}; the catalogue has {known}")


def spec_file_machine(path: Path) -> Machine:
    """`--machine FILE.toml`: a box nobody could record yet, `gpus = COUNT` of `model = KEY` (a catalogue
    card or one of the file's own [[card]] tables)."""
    where = f"--machine {path}"
    doc = read_toml(path, "--machine")
    known = all_cards()
    cards = known + cards_in(doc, where, known)
    count, key = doc.get("gpus"), doc.get("model")
    if not isinstance(count, int) or isinstance(count, bool) or not isinstance(key, str):
        raise InputError(f'{where}: name the box with gpus = COUNT and card = "KEY" (see docs/machines.md)')
    return catalogue_machine(f"{count}x{key}", cards, source=f"catalogue:{path}")  # described, not recorded


def catalogue_machine(spec: str, cards: tuple[Card, ...] | None = None, source: str | None = None) -> Machine:
    m = _SPEC.match(spec)
    if not m:
        raise InputError(f"--machine: {spec!r} is not COUNTxMODEL (e.g. 5x4090, 8xH100)")
    count, card = int(m.group(1)), find_card(m.group(2), cards)
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
        source=source or f"catalogue:{canonical}",
        gpus=tuple(gpus),
        pairs=tuple(pairs),
    )
