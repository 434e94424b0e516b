#!/usr/bin/env bash
# Sets up everything this project needs in ./.venv on a fresh Linux machine with only Python.
# torch is pinned: on the project's machines the CPU build of 2.13.0 lies on disk, and an
# unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q "torch==2.13.0" "triton==3.9.0"  # 3.9: its interpreter (the CPU tests) works with numpy >= 2.4
.venv/bin/python -m pip install -q -e ".[dev,train,triton]"
