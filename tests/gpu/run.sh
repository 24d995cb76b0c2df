#!/usr/bin/env bash
# The GPU acceptance run (docs/machines.md, "The GPU acceptance run"): every step of
# tests/gpu/gpu_acceptance.py, its results in one folder (default tests/gpu/results/<UTC time>-<host>).
# Under five minutes on one GPU; without CUDA every step says "skipped: no CUDA" and it exits 0.
# It runs with $PYTHON, else the checkout's .venv (which needs torch's CUDA build and the [test] extra).
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
exec "$python" tests/gpu/gpu_acceptance.py "$@"
