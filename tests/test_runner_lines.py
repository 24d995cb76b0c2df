"""Lines out of a rank's output: each kept to its first 64 KiB with the rest counted, in memory bounded by
that cap however the output is chunked, in the runner (bytes) and in the per-rank shim (text)."""

from __future__ import annotations

import os
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from avatardoctor.runner.lines import LINE_CAP, BoundedLines
from avatardoctor.runner.shim import Phases, PhaseWatcher, Recorder


def reference(text: bytes, cap: int) -> list[bytes]:
    """What the lines must be: split at newlines, each cut to its head with the rest counted."""
    *whole, last = text.split(b"\n")
    cut = lambda line: line[:cap] + (f" [... {len(line) - cap} bytes cut]".encode() if len(line) > cap else b"")  # noqa: E731
    return [cut(line) for line in whole] + ([cut(last)] if last else [])


@settings(deadline=None, max_examples=300)
@given(
    text=st.binary(max_size=400).map(lambda b: b.replace(b"a", b"\n")),
    cap=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 400)),
)
def test_lines_do_not_depend_on_how_the_stream_was_chunked(text, cap, cuts):
    lines, got, at = BoundedLines(b"", cap), [], 0
    for end in sorted(cuts) + [len(text)]:
        got += lines.feed(text[at:end])
        at = max(at, end)
    last = lines.finish()
    assert got + ([last] if last is not None else []) == reference(text, cap)


def test_eight_megabytes_without_a_newline_keep_the_head_and_count_the_rest():
    lines = BoundedLines("")
    tracemalloc.start()
    try:
        for _ in range(8 * 1024):  # 8 MiB in 1 KiB writes, as a rank's print() loop hands them over
            assert lines.feed("y" * 1024) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LINE_CAP  # the cap and a chunk, never the 8 MiB (tracemalloc counts Python's own allocations)
    (line,) = lines.feed("\nnext")
    assert line == "y" * LINE_CAP + f" [... {8 * 2**20 - LINE_CAP} characters cut]"
    assert lines.finish() == "next"


def test_the_shim_passes_a_huge_line_through_and_tracks_phases_after_it(tmp_path):
    recorder = Recorder(0, tmp_path)
    with open(os.devnull, "w") as sink:
        watcher = PhaseWatcher(sink, Phases(recorder))
        tracemalloc.start()
        try:
            for _ in range(4 * 1024):  # 4 MiB with no newline: a tensor printed whole
                assert watcher.write("z" * 1024) == 1024  # passed through unchanged, all of it
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        watcher.write("\ncomplete prepare conditional inputs\n")
    assert peak < 4 * LINE_CAP
    assert any(e["event"].startswith("phase: ") for e in recorder.doc["events"])  # the line after is still read
