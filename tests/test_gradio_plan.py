"""The Gradio launch as upstream's gradio scripts make it (gradio_multi_gpu.sh, gradio_single_gpu.sh)."""

from __future__ import annotations

import socket

import pytest

from avatardoctor.planfile import PlanFile
from avatardoctor.runner.auto import gradio_plan
from avatardoctor.upstream import GRADIO_PORT


def cli_plan(mode: str = "tpp", explicit=()) -> PlanFile:
    argv = (
        "--size",
        "720*400",
        "--num_clip",
        "10000",
        "--enable_online_decode",
        "--fp8",
        "--prompt",
        "hi",
        "--audio",
        "/a.wav",
    )
    return PlanFile(
        mode=mode,
        nproc=5 if mode == "tpp" else 1,
        argv=argv,
        master_port=29102,
        env={"NCCL_DEBUG": "WARN"},
        config={"explicit": list(explicit)},
    )


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_flags_the_gradio_entry_refuses_are_dropped_and_the_scripts_flags_kept():
    doc, _ = gradio_plan(cli_plan(), 0)
    assert "--enable_online_decode" not in doc.argv  # gradio_app.py's argparse has no such flag
    assert "--fp8" in doc.argv and "--prompt" not in doc.argv and "--audio" not in doc.argv
    assert doc.argv[doc.argv.index("--num_clip") + 1] == "100"
    assert doc.env == {
        "NCCL_DEBUG": "WARN",
        "TORCH_NCCL_BLOCKING_WAIT": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0",
        "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "86400",
    }


@pytest.mark.parametrize("mode", ["tpp", "single"])
def test_the_gradio_scripts_master_port_unless_the_user_chose_one(mode):
    doc, note = gradio_plan(cli_plan(mode), 0)
    if free(GRADIO_PORT[mode]):
        assert doc.master_port == GRADIO_PORT[mode]
    else:  # this machine's own job holds it: the next free one, and the note says who
        assert doc.master_port != GRADIO_PORT[mode] and f"master port {GRADIO_PORT[mode]} is held" in note
    chosen, _ = gradio_plan(cli_plan(mode, explicit=["master_port"]), 0)
    assert chosen.master_port == 29102


def test_a_held_gradio_master_port_moves_to_a_free_one_and_says_so():
    with socket.socket() as held:
        try:
            held.bind(("0.0.0.0", GRADIO_PORT["tpp"]))
            held.listen()
        except OSError:
            pass  # already held by another process on this machine: held all the same
        doc, note = gradio_plan(cli_plan("tpp"), 0)
    assert doc.master_port != GRADIO_PORT["tpp"] and f"master port {GRADIO_PORT['tpp']} is held" in note


def test_a_held_server_port_with_no_free_port_above_it_is_kept_and_the_note_says_so():
    """Nothing is free above 65535: the port stays (it was "--server_port None") and the note says why."""
    with socket.socket() as held:
        try:
            held.bind(("0.0.0.0", 65535))
            held.listen()
        except OSError:
            pass  # already held by another process on this machine: held all the same
        doc, note = gradio_plan(cli_plan("tpp"), 65535)
    assert doc.server_port == 65535
    assert doc.argv[doc.argv.index("--server_port") + 1] == "65535"
    assert note is not None and "server port 65535 is held" in note and "None" not in note
