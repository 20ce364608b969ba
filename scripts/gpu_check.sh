#!/usr/bin/env bash
# The GPU checks as one script (issue 15), for a CUDA machine:
#   1. the tests marked `gpu` (torch on CUDA against the CPU and against clip_grad_norm_);
#   2. the global-norm clip's fraction of memory bandwidth on 1.31B float32 parameters
#      (benchmarks/bench_bandwidth.py; target >= 80%);
#   3. the torch suite's clipping rows on the GPU (benchmarks/bench_torch.py --device cuda).
# Extra arguments go to bench_bandwidth.py (e.g. --peak-gbs 4800 on an H200).
#
#   bash scripts/gpu_check.sh [--peak-gbs N]
#
# Python: $GRADCLIP_PYTHON, else .venv/bin/python (bash scripts/dev.sh setup), else python3
# with the repository on PYTHONPATH: a GPU image that has torch, numpy and pytest needs
# array-api-compat only (a pure-Python wheel; install it or put it on PYTHONPATH).
# Each step runs even if one before it failed; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${GRADCLIP_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD:$PWD/adapters${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (torch.cuda.is_available() is False)')" || exit 2
rc=0
step() { echo "=== $*" >&2; "$@" || { s=$?; [ "$rc" = 0 ] && rc=$s; }; }
step "$PY" -m pytest -p no:cacheprovider -q -m gpu tests/torch
step "$PY" benchmarks/bench_bandwidth.py --device cuda "$@"
step "$PY" benchmarks/bench_torch.py --device cuda --rules clip_by
exit "$rc"
