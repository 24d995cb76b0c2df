"""avatardoctor's command line in a process of its own whose NVML is a fake box, for tests that need one (signals,
process trees, the runner's sampler):

    PYTHONPATH=tests python -m fake_pynvml SPEC.json record --attach-gpus 0,1

SPEC is {"box": a boxes function's name, "compute": {"<GPU index>": [PID, ...]}}: the compute processes NVML lists,
exactly (a GPU not named lists none, whatever the box had), so a test can put real processes it started on GPUs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from avatardoctor.cli import main
from fake_pynvml import boxes, install
from fake_pynvml.library import Process

PROCESS_BYTES = 512 * 2**20  # what each listed process holds: any size will do

spec = json.loads(Path(sys.argv[1]).read_text())
box = getattr(boxes, spec["box"])()
compute = {int(index): pids for index, pids in spec.get("compute", {}).items()}
for index, gpu in enumerate(box.gpus):
    gpu.compute = [Process(pid, PROCESS_BYTES) for pid in compute.get(index, [])]
install(pytest.MonkeyPatch(), box)  # this process is the test's: nothing to undo
sys.argv = ["avatardoctor", *sys.argv[2:]]
main()
