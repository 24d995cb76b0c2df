"""Another Python interpreter on this host (`--python PATH`): Live Avatar's environment when avatardoctor is
installed elsewhere (pipx, its own venv). It is asked once, by running it with a small script, for its
version and import path; the software checks then read that path's metadata and files as they read this
interpreter's (avatardoctor.checks.software), so nothing is imported into it but json and sys.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass

from avatardoctor.errors import InputError

ASK = "import json, sys; print(json.dumps({'executable': sys.executable, 'version': list(sys.version_info[:3]), 'path': sys.path}))"
ANSWER_LIMIT = 256 * 1024  # a sys.path is a few KB; a program that is not Python may print without end
ASK_TIMEOUT_S = 30.0  # a cold start from a network file system


@dataclass(frozen=True)
class Interpreter:
    given: str  # PATH as the user gave it: remedies name it (PATH -m pip install ...)
    executable: str
    version: tuple[int, int, int]
    path: tuple[str, ...]


def _run_bounded(argv: list[str]) -> tuple[int | None, bytes]:
    """The exit code (None when stopped for time or output) and at most ANSWER_LIMIT bytes of output."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    assert proc.stdout is not None
    out = bytearray()
    deadline = time.monotonic() + ASK_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while len(out) <= ANSWER_LIMIT and (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    proc.stdout.close()
    try:
        if len(out) <= ANSWER_LIMIT:  # else stopped at once: it is not answering as Python would
            return proc.wait(timeout=max(0.0, deadline - time.monotonic())), bytes(out)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):  # its own session: whatever it started goes too
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None, bytes(out[:ANSWER_LIMIT])


def inspect_interpreter(given: str) -> Interpreter:
    """Ask PATH for its version and import path; an InputError naming --python when it is not a Python."""
    fix = "pass the python of Live Avatar's environment, e.g. --python ~/LiveAvatar/.venv/bin/python"
    try:
        code, out = _run_bounded([given, "-c", ASK])
    except FileNotFoundError:
        raise InputError(f"--python {given}: no such program; {fix}") from None
    except OSError as e:
        raise InputError(f"--python {given}: cannot run it ({e.strerror}); {fix}") from None
    text = out.decode("utf-8", errors="replace").strip()
    if code is None:
        why = f"{ANSWER_LIMIT // 1024} KiB of output" if len(out) >= ANSWER_LIMIT else f"{ASK_TIMEOUT_S:.0f} s"
        raise InputError(f"--python {given}: did not answer as Python would (stopped after {why}); {fix}")
    if code != 0:
        last = text.splitlines()[-1][:200] if text else "no output"
        raise InputError(f"--python {given}: exited with {code} ({last}); {fix}")
    try:
        answer = json.loads(text.splitlines()[-1] if text else "")
        executable, version, path = answer["executable"], answer["version"], answer["path"]
        if not (
            isinstance(executable, str)
            and isinstance(path, list)
            and all(isinstance(p, str) for p in path)
            and isinstance(version, list)
            and len(version) == 3
            and all(isinstance(n, int) for n in version)
        ):
            raise ValueError(text[:200])
    except (ValueError, KeyError, TypeError, IndexError):
        raise InputError(f"--python {given}: did not answer as a Python interpreter; {fix}") from None
    return Interpreter(given, executable or given, (version[0], version[1], version[2]), tuple(path))
