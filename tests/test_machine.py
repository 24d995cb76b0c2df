"""The machine layer: catalogue specs, recorded files (good and malformed), the live NVML backend."""

from __future__ import annotations

import json

import pytest
from conftest import MACHINES

from avatardoctor.errors import InputError
from avatardoctor.machine import backend_for
from avatardoctor.machine.catalogue import CARDS, catalogue_machine
from avatardoctor.machine.model import SCHEMA, machine_from_dict
from avatardoctor.machine.nvml import NvmlBackend
from avatardoctor.machine.recorded import read_machine_file
from avatardoctor.units import MIB

# name as NVML reports it, total MiB as nvidia-smi shows it, compute capability
EXPECTED_CARDS = {
    "3090": ("NVIDIA GeForce RTX 3090", 24576, (8, 6)),
    "4090": ("NVIDIA GeForce RTX 4090", 24564, (8, 9)),
    "5090": ("NVIDIA GeForce RTX 5090", 32607, (12, 0)),
    "A6000": ("NVIDIA RTX A6000", 49140, (8, 6)),
    "L40S": ("NVIDIA L40S", 46068, (8, 9)),
    "A100-40GB": ("NVIDIA A100-SXM4-40GB", 40960, (8, 0)),
    "A100-80GB": ("NVIDIA A100-SXM4-80GB", 81920, (8, 0)),
    "H100": ("NVIDIA H100 80GB HBM3", 81559, (9, 0)),
    "H800": ("NVIDIA H800", 81559, (9, 0)),
    "H200": ("NVIDIA H200", 143771, (9, 0)),
    "4090-48GB": ("NVIDIA GeForce RTX 4090", 49140, (8, 9)),
    "L20": ("NVIDIA L20", 46068, (8, 9)),
    "RTX-PRO-6000": ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, (12, 0)),
    "A800": ("NVIDIA A800-SXM4-80GB", 81920, (8, 0)),
    "H20": ("NVIDIA H20", 97871, (9, 0)),
    "B200": ("NVIDIA B200", 183359, (10, 0)),
}


@pytest.mark.parametrize("key", sorted(EXPECTED_CARDS))
def test_catalogue_card_facts(key):
    name, total_mib, cc = EXPECTED_CARDS[key]
    m = catalogue_machine(f"2x{key}")
    assert [g.name for g in m.gpus] == [name, name]
    assert m.gpus[0].total_bytes == total_mib * MIB
    assert m.gpus[0].compute_capability == cc
    assert m.source == f"catalogue:2x{key}"


def test_catalogue_covers_every_card():
    assert {c.key for c in CARDS} == set(EXPECTED_CARDS)


@pytest.mark.parametrize("spec", ["5x4090", "5X4090", "5xRTX4090", "5 x rtx-4090", "5×4090"])
def test_catalogue_spec_spellings(spec):
    assert catalogue_machine(spec).source == "catalogue:5x4090"


def test_geforce_pcie_box_has_no_p2p_and_hgx_has_nvlink():
    pcie = catalogue_machine("5x4090")
    assert len(pcie.pairs) == 10
    assert all(p.nvlinks == 0 and p.p2p_read != "ok" for p in pcie.pairs)
    # five cards need a dual-socket server: 0-2 on one socket, 3-4 on the other
    assert pcie.pair(0, 1).level == "NODE" and pcie.pair(2, 3).level == "SYS"
    hgx = catalogue_machine("8xH100")
    assert all(p.nvlinks == 18 and p.p2p_read == "ok" for p in hgx.pairs)
    assert catalogue_machine("5xH800").pair(0, 4).nvlinks == 8
    a6000 = catalogue_machine("6xA6000")
    assert a6000.pair(0, 1).p2p_read == "ok"


def test_catalogue_has_no_host_facts():
    # A what-if box is not this host: its RAM and /dev/shm are unknown, never borrowed.
    assert catalogue_machine("1xH200").host.ram_total_bytes is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("5xA100", "A100-40GB and A100-80GB"),
        ("5xV100", "unknown GPU model 'V100'"),
        ("9xH100", "1 to 8 H100"),
        ("0x4090", "1 to 16 4090"),
    ],
)
def test_catalogue_errors_name_the_problem(spec, message):
    with pytest.raises(InputError, match=message):
        catalogue_machine(spec)


@pytest.mark.parametrize("name", sorted(p.stem for p in MACHINES.glob("*.json")))
def test_fixtures_round_trip(name):
    m = read_machine_file(MACHINES / f"{name}.json")
    again = machine_from_dict(json.loads(json.dumps(m.to_dict())), m.source)
    assert again == m


def test_unknown_topology_level_is_kept_unknown(tmp_path):
    from avatardoctor.checks.topology import topology_matrix

    d = _good()
    d["pairs"][0]["level"] = None  # NVML could not tell: shown as "?", never guessed
    m = read_machine_file(_write(tmp_path, d))
    assert m.pair(0, 1).level is None
    assert topology_matrix(m, m.gpus[:2])[1].split() == ["GPU0", "X", "?"]


def test_recorded_fixture_facts():
    m = read_machine_file(MACHINES / "5xH800-gpu2-busy.json")
    assert m.source.startswith("recorded:")
    busy = m.gpus[2]
    assert [(p.pid, p.name, p.kind) for p in busy.processes] == [(4242, "python3", "compute")]
    assert busy.free_bytes < m.gpus[0].free_bytes
    assert m.memory_info_version == 2 and busy.reserved_bytes > 0


def _write(tmp_path, obj, name="m.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _good():
    return json.loads((MACHINES / "5x4090-pcie.json").read_text())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="avatardoctor.machine/9"), "expected 'avatardoctor.machine/1'"),
        (lambda d: d["gpus"][1].pop("uuid"), r"gpus\[1\]\.uuid is missing"),
        (lambda d: d["gpus"][0].update(total_bytes=-5), r"gpus\[0\]\.total_bytes must be an integer >= 1"),
        (lambda d: d["gpus"][0].update(total_bytes="24GB"), r"gpus\[0\]\.total_bytes must be an integer"),
        (lambda d: d["gpus"][0].update(compute_capability=[8]), r"gpus\[0\]\.compute_capability"),
        (lambda d: d["gpus"][0].update(free_bytes=d["gpus"][0]["total_bytes"] + 1), "cannot exceed total_bytes"),
        (lambda d: d["pairs"][0].update(level="WARP"), r"pairs\[0\]\.level must be one of"),
        (lambda d: d["pairs"][0].update(b=17), r"pairs\[0\] must name two different GPU indices"),
        (lambda d: d["gpus"][0]["processes"].append({"pid": 1, "kind": "ghost"}), r"processes\[0\]\.kind"),
        (lambda d: d.update(gpus={"0": {}}), "gpus must be a list"),
    ],
)
def test_malformed_recorded_files_are_one_line_errors(tmp_path, mutate, message):
    d = _good()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(InputError, match=message) as err:
        read_machine_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "avatardoctor.machine/1", "gpus": [', r"not valid JSON \(line 1"),
        ("[1, 2, 3]", "top level must be an object"),
        (b"\xff\xfe\x00junk", "not UTF-8"),
    ],
)
def test_unreadable_recorded_files(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(InputError, match=message):
        read_machine_file(path)


def test_oversized_recorded_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:
        f.truncate(17 * 2**20)  # sparse: no 17 MiB written
    with pytest.raises(InputError, match="over 16 MiB, not a machine description"):
        read_machine_file(path)


def test_backend_for_chooses_file_spec_or_error(tmp_path):
    assert backend_for(str(MACHINES / "5xH800-healthy.json")).snapshot().gpus[0].name == "NVIDIA H800"
    assert backend_for("3xL40S").snapshot().source == "catalogue:3xL40S"
    assert backend_for(demo=True).snapshot().source == "catalogue:5x4090"
    with pytest.raises(InputError, match="neither a file nor a COUNTxMODEL"):
        backend_for(str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="--demo and --machine"):
        backend_for("5x4090", demo=True)


def test_nvml_backend_without_a_driver_reports_why(monkeypatch):
    """This machine has no NVIDIA driver: the live backend must say so, not raise."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on a GPU machine
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here; the no-driver path needs a machine without one")
    m = NvmlBackend().snapshot()
    assert m.gpus == ()
    assert "libnvidia-ml.so.1" in m.nvml_error
    assert m.host.ram_total_bytes > 0 and m.host.cpu_count >= 1
    assert m.to_dict()["schema"] == SCHEMA
