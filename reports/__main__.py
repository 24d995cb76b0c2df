"""`python -m avatardoctor.reports`: the runner's report, drawn in a process of its own.

The runner starts this when the job starts, so that pandas and matplotlib load while the job runs
(not after it, on the run's wall time) and so that the runner, a lower layer, never imports the
reports. It reads one run folder's path from stdin when the job is over, renders that folder's
report, and prints the report's path; an empty stdin (no report wanted) ends it quietly. A report
that cannot be drawn leaves report-error.txt in the folder and prints nothing: the run's own result
stands without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avatardoctor.errors import InputError
from avatardoctor.reports.render import render_report


def main() -> int:
    folder = sys.stdin.readline().strip()
    if not folder:
        return 0
    try:
        print(render_report(Path(folder)), flush=True)
    except (InputError, OSError, ValueError) as e:
        try:
            (Path(folder) / "report-error.txt").write_text(f"the report could not be rendered: {e}\n")
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
