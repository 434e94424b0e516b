#!/usr/bin/env bash
# The GPU check of issue 6, one command on a CUDA machine, from the repository root:
#
#     bash benchmarks/gpu_check.sh          # results in $OUT (or ./gpu_check_out): log.txt, bench.md
#
# Needs python3 with torch and triton; our package runs from src/ (not installed). Wheels in .whl/
# (e.g. mlstm_kernels, pure Python, for the TFLA rows) are installed into /tmp/site first.
# 1. the Triton tests compiled on the GPU (tests/ops/test_*triton*.py), at most 110 s;
# 2. benchmarks/bench_triton.py (its own time budget keeps it near 6 min), at most 370 s.
# Both steps always run; the script exits non-zero if either failed. Total well under 8 min.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONPATH=src PYTHONUNBUFFERED=1

{
  echo "== $(date -u +%FT%TZ) gpu_check in $PWD"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=src:/tmp/site && echo "installed: $(ls .whl)"
  fi
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$LOG"
# The export above ran in a pipeline's subshell: repeat it here.
compgen -G "/tmp/site/mlstm_kernels" > /dev/null && export PYTHONPATH=src:/tmp/site

echo "== tests (tests/ops/test_*triton*.py)" | tee -a "$LOG"
timeout 110 python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_*triton*.py 2>&1 | tee -a "$LOG"
tests_rc=$?

echo "== benchmark (benchmarks/bench_triton.py)" | tee -a "$LOG"
timeout 370 python3 benchmarks/bench_triton.py --out "$OUT/bench.md" "$@" 2>&1 | tee -a "$LOG"
bench_rc=$?

echo "== exit codes: tests $tests_rc, benchmark $bench_rc (124: timed out)" | tee -a "$LOG"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
