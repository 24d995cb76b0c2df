"""The fuzz/fault harness: a bounded, seeded sample of every category in CI, as long as you like on demand.

CI runs each fuzz test with a small derandomized sample (the whole folder in well under a minute on two
cores). `AVATARDOCTOR_FUZZ=long` runs fresh random examples (`AVATARDOCTOR_FUZZ_EXAMPLES`, default 5000
per test), e.g. `AVATARDOCTOR_FUZZ=long .venv/bin/python -m pytest tests/fuzz -x`. A crasher hypothesis
finds is minimised by it; save the minimal input as a file in `corpus/<category>/` and it becomes a
regression case that runs every time (`corpus_files`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hypothesis
from click.testing import CliRunner

from avatardoctor import exitcodes
from avatardoctor.cli import main

LONG = os.environ.get("AVATARDOCTOR_FUZZ") == "long"
EXAMPLES = int(os.environ.get("AVATARDOCTOR_FUZZ_EXAMPLES", "5000" if LONG else "25"))
CORPUS = Path(__file__).parent / "corpus"


def fuzz_settings(ci_examples: int = EXAMPLES) -> hypothesis.settings:
    """No deadline (a busy 2-core machine is no reason to fail), derandomized in CI, random when long."""
    return hypothesis.settings(
        max_examples=EXAMPLES if LONG else ci_examples,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )


def corpus_files(category: str) -> list[Path]:
    """The minimised crashers kept for a category, one regression case each."""
    folder = CORPUS / category
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    output: str  # stdout and stderr together


def run_cli(*args: str) -> CliResult:
    """`avatardoctor ARGS` in this process, through the same error handling as the installed command;
    fails the test on a traceback (any exception that is not the command's own exit)."""
    saved = sys.argv
    with CliRunner().isolation() as (stdout, stderr, _):
        sys.argv = ["avatardoctor", *args]
        try:
            main()
            code = 0
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else 1
        except BaseException as err:
            raise AssertionError(f"avatardoctor {' '.join(args)} raised {err!r}") from err
        finally:
            sys.argv = saved
        output = stdout.getvalue().decode(errors="replace") + stderr.getvalue().decode(errors="replace")
    if code == exitcodes.CRASHED:  # main() caught a bug and printed its traceback: name the exception
        raised = output.split("Error: avatardoctor crashed")[0].rstrip().splitlines()[-1]
        raise AssertionError(f"avatardoctor {' '.join(args)} raised {raised}")
    assert code in (0, 1, 2), (code, output[-2000:])
    assert "Traceback" not in output, output[-2000:]
    return CliResult(code, output)
