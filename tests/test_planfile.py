"""The plan file: one typed value, one validating reader, one writer, and what a plan made by `plan` holds."""

from __future__ import annotations

import json

import pytest
from conftest import make_ctx

from avatardoctor.errors import InputError
from avatardoctor.planfile import PLAN_SCHEMA, PlanFile, PlannedGpu, read_plan_file
from avatardoctor.planner import make_plan, plan_file


def made_plan(**config) -> PlanFile:
    ctx = make_ctx("5xH800-healthy", **config)
    return plan_file(make_plan(ctx.config, ctx.visible.gpus, ctx.components, ctx.terms), ctx)


def test_what_the_planner_writes_the_reader_reads_back_field_by_field(tmp_path):
    plan = made_plan(prompt="a host waves")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan.to_dict()))
    assert read_plan_file(path) == plan
    assert (
        plan.to_dict()["schema"] == PLAN_SCHEMA and plan.nproc == 5 and plan.argv[-2:] == ("--prompt", "a host waves")
    )


def test_a_plan_records_the_machine_checkout_interpreter_and_configuration(tmp_path):
    plan = made_plan(liveavatar=tmp_path)
    assert plan.machine.source.startswith("recorded:") and plan.machine.gpus[0] == PlannedGpu(
        0, "NVIDIA H800", plan.machine.gpus[0].uuid
    )
    assert plan.checkout == str(tmp_path) and plan.interpreter and plan.config["mode"] == "tpp"
    assert plan.inputs_note.startswith("no --image/--audio/--prompt: upstream falls back to examples/boy.jpg")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nproc": "5"}, "nproc"),
        ({"master_port": 0}, "master_port"),
        ({"mode": "../x"}, "mode"),
        ({"env": {"A": 1}}, "env 'A'"),
        ({"argv": ["--prompt", "a\0b"]}, "argv[1] (the value of --prompt)"),
    ],
)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(tmp_path, change, field):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({**made_plan().to_dict(), **change}))
    with pytest.raises(InputError) as err:
        read_plan_file(path)
    assert str(err.value).startswith(f"--plan {path}: {field}") and "\n" not in str(err.value)


def test_an_older_plan_without_the_newer_fields_still_reads():
    old = {
        "schema": PLAN_SCHEMA,
        "mode": "tpp",
        "nproc": 5,
        "argv": ["--size", "720*400"],
        "master_port": 29102,
        "env": {},
    }
    plan = PlanFile.from_dict(old, "old plan")
    assert plan.machine is None and plan.checkout is None and plan.config is None and plan.num_clip is None
