"""avatardoctor/schemas/check.schema.json (JSON Schema 2020-12) against what `check --json` prints: the
demo box, this machine live, every recorded machine, and a live machine of each fake NVML generation."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources

import jsonschema
import pytest
import schemas
from click.testing import CliRunner
from conftest import MACHINES
from fake_pynvml import boxes, install

from avatardoctor.checks import CHECK_SCHEMA
from avatardoctor.cli import cli


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """check/1 with the schemas it names (machine/1, predict/1's prediction) beside it, as shipped."""
    schema = json.loads((resources.files("avatardoctor") / "schemas" / "check.schema.json").read_text())
    assert schema["title"] == schema["properties"]["schema"]["const"] == CHECK_SCHEMA
    return schemas.validator(CHECK_SCHEMA)


def check_json(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["check", "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def assert_valid(validator, doc: dict) -> None:
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []


def test_this_machine_live_as_the_command_prints_it(validator):
    """A real process, its real stdout: here NVML is missing, so the machine carries nvml_error."""
    run = subprocess.run(
        [sys.executable, "-m", "avatardoctor", "check", "--json"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode in (0, 1), run.stderr
    assert_valid(validator, json.loads(run.stdout))


@pytest.mark.parametrize("args", [["--demo"], ["--machine", "8xH100"], ["--machine", "1xH200", "--mode", "single"]])
def test_catalogue_boxes(validator, args):
    doc = check_json(*args)
    assert doc["prediction"] is not None
    assert_valid(validator, doc)


@pytest.mark.parametrize("name", sorted(p.stem for p in MACHINES.glob("*.json")))
def test_recorded_machines(validator, name):
    assert_valid(validator, check_json("--machine", str(MACHINES / f"{name}.json")))


@pytest.mark.parametrize("generation", sorted(boxes.GENERATIONS))
def test_live_machines_of_every_driver_generation(validator, monkeypatch, generation):
    install(monkeypatch, boxes.GENERATIONS[generation]())
    doc = check_json()
    assert doc["machine"]["source"] == "nvml"
    assert_valid(validator, doc)


MUTATIONS = {
    "an unknown status": lambda d: d["checks"][0].update(status="ok"),
    "no verdict": lambda d: d.pop("verdict"),
    "a field the schema does not know": lambda d: d.update(extra=1),
    "a GPU without its UUID": lambda d: d["machine"]["gpus"][0].pop("uuid"),
    "sizes as text": lambda d: d["machine"]["gpus"][0].update(total_bytes="24 GB"),
    "a P2P status NVML has not": lambda d: d["machine"]["pairs"][0].update(p2p_read="fast"),
    "another schema": lambda d: d.update(schema="avatardoctor.check/2"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_the_schema_refuses_what_check_never_prints(validator, mutation):
    doc = copy.deepcopy(check_json("--demo"))
    MUTATIONS[mutation](doc)
    assert not validator.is_valid(doc)
