"""Numbers on the command line: whatever a user types for a numeric flag is a number in range or a one-line
usage error (exit 2), never a traceback. NaN passed click's own range checks and crashed the prediction."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from harness import fuzz_settings, run_cli
from hypothesis import given

NUMERIC = [
    ("predict", "--audio-seconds"),
    ("predict", "--infer-frames"),
    ("predict", "--num-clip"),
    ("predict", "--sample-steps"),
    ("predict", "--master-port"),
]
TYPED = st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "1e309", "-0", "0x10", "", " ", "1_000", "３", "1e-400"])


@pytest.mark.parametrize("text", ["nan", "NaN", "-nan", "inf", "1e400"])
def test_audio_seconds_that_is_no_number_is_a_usage_error(text):
    r = run_cli("predict", "--machine", "5xH800", "--audio-seconds", text)
    assert r.exit_code == 2 and "--audio-seconds" in r.output


@fuzz_settings(ci_examples=20)
@given(flag=st.sampled_from(NUMERIC), text=TYPED | st.text(max_size=12) | st.floats().map(repr))
def test_numeric_flags_never_crash(flag, text):
    command, option = flag
    run_cli(command, "--machine", "5xH800", option, text)
