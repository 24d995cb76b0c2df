"""The fleet view over real `check --json` reports (tests/fixtures/fleet, see its README) and edits of them."""

from __future__ import annotations

import copy
import functools
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, MACHINES
from rich.console import Console
from schemas import assert_valid

from avatardoctor.fleet import (
    MAX_FILE_BYTES,
    UnreadableReport,
    fleet_document,
    merge_fleet,
    node_from_report,
    read_nodes,
    render_fleet,
)

FLEET = FIXTURES / "fleet"
HEALTHY = sorted((FLEET / "healthy").glob("*.json"))
PLANTED = sorted((FLEET / "planted").glob("*.json"))


def fleet_of(paths):
    return merge_fleet(read_nodes(paths))


def kinds(fleet) -> set[tuple[str, str]]:
    return {(o.kind, o.node) for o in fleet.outliers}


def edited(tmp_path: Path, source: Path, name: str, edit) -> Path:
    """A copy of a recorded report with one change, as a node could have written it."""
    doc = json.loads(source.read_text())
    edit(doc)
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_every_planted_outlier_is_found_on_its_node():
    fleet = fleet_of(HEALTHY + PLANTED)
    assert kinds(fleet) == {
        ("gpu-model", "hgx-h100-01"),
        ("slow-busbw", "hgx-h800-04"),
        ("not-ready", "hgx-h800-05"),
        ("foreign-process", "hgx-h800-05"),
        ("low-vram", "hgx-h800-05"),
        ("driver", "hgx-h800-06"),
    }
    said = {o.kind: o.message for o in fleet.outliers}
    assert said["foreign-process"] == "other processes hold GPU memory: GPU 2 PID 4242 (python3, 60.00 GiB)"
    assert said["driver"] == "driver 535.183.01, where 6 of 7 nodes have 550.127.08"
    assert said["slow-busbw"] == "all_reduce busbw 18.7 GB/s, under 50% of the fleet median 111.9 GB/s"
    assert said["low-vram"] == "least free GPU 19.12 GiB, under 90% of the fleet median 79.12 GiB"
    assert said["not-ready"] == "not ready: failed fit.peak"
    assert said["gpu-model"] == "GPUs NVIDIA H100 80GB HBM3, where 6 of 7 nodes have NVIDIA H800"
    assert not fleet.ready and fleet.exit_code == 1
    # Rows come sorted by hostname; the outliers follow the rows.
    assert [n.hostname for n in fleet.nodes] == sorted(n.hostname for n in fleet.nodes)
    assert fleet.outliers[0].node == "hgx-h100-01"


def test_a_healthy_fleet_has_no_outliers_and_its_rows_hold_the_facts():
    assert "pairs" in json.loads(HEALTHY[0].read_text())["machine"]  # a full report, as `check --json` prints it
    fleet = fleet_of(HEALTHY)
    assert fleet.outliers == () and fleet.ready and fleet.exit_code == 0
    node = fleet.nodes[0]
    assert (node.hostname, node.verdict, node.gpus, node.gpu_models) == ("hgx-h800-01", "ready", 5, {"NVIDIA H800": 5})
    assert (node.free_bytes_min, node.free_bytes_total) == (84953530368, 5 * 84953530368)
    assert (node.driver_version, node.busbw_gbs, node.failing, node.processes) == ("550.127.08", 112.42, (), ())


def test_the_medians_need_three_nodes_with_a_figure():
    # Two nodes: the median cannot say which of the two is the odd one.
    assert kinds(fleet_of([HEALTHY[0], FLEET / "planted" / "hgx-h800-04.json"])) == set()
    # A node without nccl.live figures shows none and does not count towards the median.
    fleet = fleet_of(HEALTHY[:1] + [FLEET / "planted" / "hgx-h800-04.json", FLEET / "planted" / "hgx-h100-01.json"])
    assert ("slow-busbw", "hgx-h800-04") not in kinds(fleet)
    assert next(n for n in fleet.nodes if n.hostname == "hgx-h100-01").busbw_gbs is None


def test_with_no_majority_every_node_is_named():
    fleet = fleet_of([HEALTHY[0], FLEET / "planted" / "hgx-h800-06.json"])
    assert kinds(fleet) == {("driver", "hgx-h800-01"), ("driver", "hgx-h800-06")}
    assert (
        fleet.outliers[1].message
        == "driver 535.183.01, and no majority in the fleet (550.127.08 on 1, 535.183.01 on 1)"
    )


def test_a_failed_live_test_has_no_busbw_and_its_node_is_not_ready(tmp_path):
    def timed_out(doc):
        live = next(c for c in doc["checks"] if c["id"] == "nccl.live")
        live.update(status="fail", data={"busbw_gbs": None, "backend": "nccl", "world_size": 5, "failure": "timeout"})
        doc["verdict"] = "not-ready"

    fleet = fleet_of(HEALTHY[:2] + [edited(tmp_path, HEALTHY[2], "hgx-h800-03.json", timed_out)])
    node = fleet.nodes[2]
    assert (node.busbw_gbs, node.failing) == (None, ("nccl.live",))
    assert kinds(fleet) == {("not-ready", "hgx-h800-03")} and fleet.exit_code == 1


def test_two_reports_from_one_host_are_both_kept_and_flagged(tmp_path):
    copy = tmp_path / "rerun.json"
    shutil.copy(HEALTHY[0], copy)
    fleet = fleet_of(HEALTHY + [copy])
    assert sorted(n.file for n in fleet.nodes if n.hostname == "hgx-h800-01") == sorted([str(HEALTHY[0]), str(copy)])
    assert kinds(fleet) == {("duplicate", "hgx-h800-01")}
    assert str(copy) in fleet.outliers[0].message and str(HEALTHY[0]) in fleet.outliers[0].message


def test_a_report_without_a_hostname_is_named_by_its_file(tmp_path):
    path = edited(tmp_path, HEALTHY[0], "node-17.json", lambda doc: doc["machine"].pop("hostname"))
    assert [n.hostname for n in fleet_of([path]).nodes] == ["node-17"]


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _bad_files(tmp_path: Path) -> dict[Path, str]:
    """Files a node, a shell or a person could leave in the folder, and the reason each row gives."""
    oversized = tmp_path / "huge.json"
    with oversized.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    text = HEALTHY[1].read_text()
    (tmp_path / "a-folder.json").mkdir()

    def bad_free(doc):
        doc["machine"]["gpus"][0]["free_bytes"] = "lots"

    return {
        oversized: "over 16 MiB, not a `check --json` report",
        _write(tmp_path, "truncated.json", text[: len(text) // 2]): "not valid JSON (line ",
        _write(tmp_path, "empty.json", ""): "not valid JSON (line 1, column 1: Expecting value)",
        _write(tmp_path, "latin1.json", b"\xff\xfe{}"): "not UTF-8 text",
        _write(tmp_path, "deep.json", "[" * 100_000): "JSON nested too deeply",
        MACHINES / "5xH800-healthy.json": "schema is 'avatardoctor.machine/1', expected 'avatardoctor.check/1'",
        _write(tmp_path, "list.json", "[]"): "schema is None, expected 'avatardoctor.check/1'",
        edited(
            tmp_path, HEALTHY[1], "verdict.json", lambda d: d.update(verdict="maybe")
        ): "verdict must be ready or not-ready, not 'maybe'",
        edited(
            tmp_path, HEALTHY[1], "checks.json", lambda d: d.update(checks={"id": 1})
        ): "checks must be a list of objects with an id",
        edited(tmp_path, HEALTHY[1], "nomachine.json", lambda d: d.pop("machine")): "machine must be an object",
        edited(
            tmp_path, HEALTHY[1], "free.json", bad_free
        ): "machine.gpus[0].free_bytes must be an integer >= 0, not 'lots'",
        tmp_path / "a-folder.json": "a directory where a file should be",
        tmp_path / "missing.json": "cannot read (No such file or directory)",
    }


def test_each_unreadable_file_is_a_row_with_its_reason_and_the_rest_still_merge(tmp_path):
    bad = _bad_files(tmp_path)
    fleet = fleet_of(HEALTHY + list(bad))
    rows = {n.file: n for n in fleet.nodes}
    for path, reason in bad.items():
        row = rows[str(path)]
        assert (row.verdict, row.hostname) == ("unreadable", path.stem)
        assert row.error.startswith(reason), (path.name, row.error)
    assert {o.node for o in fleet.outliers if o.kind == "unreadable"} == {p.stem for p in bad}
    assert sum(n.verdict == "ready" for n in fleet.nodes) == len(HEALTHY)
    assert not fleet.ready and fleet.exit_code == 2


def _leaves(obj, path=()):
    yield path
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in children:
        yield from _leaves(value, (*path, key))


def test_any_field_of_any_type_gives_a_row_or_a_reason_never_a_traceback():
    report = json.loads((FLEET / "planted" / "hgx-h800-05.json").read_text())
    # What the merge reads: two of the checks (one with figures), the machine, schema and verdict.
    report["checks"] = [c for c in report["checks"] if c["id"] in ("nccl.live", "fit.peak")]
    report["checks"][0]["data"].pop("allreduce")
    for unread in ("config", "prediction", "counts"):
        report.pop(unread)
    for path in _leaves(report):
        for value in (None, True, -1, 1.5, float("nan"), "x", [], {}, 2**70):
            doc = copy.deepcopy(report)
            if not path:
                doc = value
            else:
                parent = functools.reduce(lambda obj, key: obj[key], path[:-1], doc)
                parent[path[-1]] = value
            try:
                node_from_report(doc, "node.json")
            except UnreadableReport:
                pass


def test_the_json_document_follows_its_schema():
    doc = json.loads(json.dumps(fleet_document(fleet_of(HEALTHY + PLANTED))))
    assert (doc["schema"], doc["verdict"]) == ("avatardoctor.fleet/1", "not-ready")
    assert set(doc) == {"schema", "avatardoctor_version", "verdict", "nodes", "outliers"}
    assert_valid(doc)  # avatardoctor/schemas/fleet.schema.json
    node = next(n for n in doc["nodes"] if n["hostname"] == "hgx-h800-05")
    assert node == {
        "file": str(FLEET / "planted" / "hgx-h800-05.json"),
        "hostname": "hgx-h800-05",
        "verdict": "not-ready",
        "error": None,
        "gpus": 5,
        "gpu_models": {"NVIDIA H800": 5},
        "free_bytes_min": 20529020928,
        "free_bytes_total": 4 * 84953530368 + 20529020928,
        "failing": ["fit.peak"],
        "driver_version": "550.127.08",
        "busbw_gbs": 111.64,
        "processes": [{"gpu": 2, "pid": 4242, "name": "python3", "used_bytes": 60 * 2**30}],
    }
    assert all(set(o) == {"node", "kind", "message"} for o in doc["outliers"])
    assert fleet_document(fleet_of(HEALTHY))["verdict"] == "ready"


def test_the_human_view_labels_units_and_lists_the_outliers_without_colour():
    out = io.StringIO()
    render_fleet(fleet_of(HEALTHY + PLANTED), Console(file=out, width=100, highlight=False))
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: no colour codes
    assert "free GiB" in text and "busbw" in text and "GB/s" in text
    lines = [line.rstrip() for line in text.splitlines()]
    row = next(line for line in lines if line.lstrip().startswith("hgx-h800-05"))
    assert row.split() == [
        "hgx-h800-05",
        "5",
        "x",
        "H800",
        "19.12",
        "/",
        "335.60",
        "550.127.08",
        "111.6",
        "not-ready:",
        "fit.peak",
    ]
    h100 = next(line for line in lines if line.lstrip().startswith("hgx-h100-01"))
    assert h100.split()[-2:] == ["-", "ready"]  # no live test ran there: no busbw
    assert "  [!] hgx-h800-06: driver 535.183.01, where 6 of 7 nodes have 550.127.08" in lines
    assert lines[-1] == "Fleet not ready: 1 of 7 nodes (hgx-h800-05)."


def avatardoctor(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avatardoctor", *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_the_command_prints_json_or_a_table_and_exits_by_the_fleet_verdict(tmp_path):
    if avatardoctor("fleet", "--help").returncode != 0:
        pytest.skip("`avatardoctor fleet` is not wired into the CLI yet (avatardoctor/cli.py)")
    ready = avatardoctor("fleet", *map(str, HEALTHY))
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.rstrip().splitlines()[-1] == "Fleet ready: all 3 nodes ready."
    planted = avatardoctor("fleet", "--json", *map(str, HEALTHY + PLANTED))
    assert planted.returncode == 1, planted.stderr
    assert json.loads(planted.stdout)["schema"] == "avatardoctor.fleet/1"
    broken = _write(tmp_path, "broken.json", "{")
    unreadable = avatardoctor("fleet", "--json", *map(str, HEALTHY), str(broken))
    assert unreadable.returncode == 2
    assert (
        unreadable.stderr.strip()
        == f"Error: {broken}: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)"
    )
    assert json.loads(unreadable.stdout)["nodes"][0]["verdict"] == "unreadable"
    assert avatardoctor("fleet").returncode == 2  # no files: a usage error
