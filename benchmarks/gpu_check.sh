#!/usr/bin/env bash
# The GPU check of issue 6, one command on a CUDA machine, from the repository root:
#
#     bash benchmarks/gpu_check.sh          # results in $OUT (or ./gpu_check_out): log.txt, bench.md
#
# Needs python3 with torch and triton; our package runs from src/ (not installed). Wheels in .whl/
# (e.g. mlstm_kernels, pure Python, for the TFLA rows) are installed into /tmp/site first.
# 1. the Triton tests compiled on the GPU (tests/ops/test_*triton*.py), at most 100 s;
# 2. benchmarks/tune_triton.py, the launch-parameter sweep (its budget ~100 s), at most 130 s: configs.json;
# 3. benchmarks/bench_triton.py with those parameters (its own budget), at most 280 s.
# Every step runs; the script exits non-zero if any failed. Total under 9 min. Arguments go to step 3.
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
xdist=()  # the tests' time is mostly Triton compiling on the CPU: spread it where pytest-xdist is there
python3 -c "import xdist" 2>/dev/null && xdist=(-n 4)
timeout 100 python3 -m pytest -q -x -p no:cacheprovider "${xdist[@]}" tests/ops/test_*triton*.py 2>&1 | tee -a "$LOG"
tests_rc=$?

echo "== launch-parameter sweep (benchmarks/tune_triton.py)" | tee -a "$LOG"
timeout 130 python3 benchmarks/tune_triton.py --budget-s 100 --out "$OUT/configs.json" 2>&1 | tee -a "$LOG"
tune_rc=$?
configs=()
[ "$tune_rc" -eq 0 ] && [ -s "$OUT/configs.json" ] && configs=(--configs "$OUT/configs.json")

echo "== benchmark (benchmarks/bench_triton.py ${configs[*]})" | tee -a "$LOG"
timeout 280 python3 benchmarks/bench_triton.py --budget-s 200 --out "$OUT/bench.md" "${configs[@]}" "$@" 2>&1 | tee -a "$LOG"
bench_rc=$?

echo "== exit codes: tests $tests_rc, sweep $tune_rc, benchmark $bench_rc (124: timed out)" | tee -a "$LOG"
[ "$tests_rc" -eq 0 ] && [ "$tune_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
