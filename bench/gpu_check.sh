#!/usr/bin/env bash
# Every GPU check of the IF engine in one command, for a CUDA machine: nvidia-smi, the CUDA tests (tests/gpu)
# and the benchmark table (bench/bench_if.py, IF-I-XL + IF-II-L architectures with random fp16 weights).
# Output goes to $OUT (default bench/out/): nvidia-smi.txt, gpu_tests.txt, bench_if.txt, bench_if.json.
# Exit status: nonzero when a test or the benchmark failed. Arguments go to bench_if.py. ALLOW_CPU=1 lets it
# run without CUDA (to check the script itself: `ALLOW_CPU=1 bash bench/gpu_check.sh --tiny --stride 330`).
#
# On a machine with the project installed (`make setup` with a CUDA torch) it needs nothing else. On a lent
# device machine (no network, no diffusers) run bench/prepare_gpu_check.sh here first and carry .whl and
# shared: the wheels are installed into /tmp/site, the configs are found in ./shared/if_configs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import diffusers" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "diffusers is not installed and .whl/ holds no wheels: run bench/prepare_gpu_check.sh first" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible to $PY (set ALLOW_CPU=1 to run the checks on the CPU anyway)" >&2
  exit 2
fi
rc=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -m pytest tests/gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.txt"
rc=$((rc | PIPESTATUS[0]))
"$PY" bench/bench_if.py --json "$OUT/bench_if.json" "$@" 2>&1 | tee "$OUT/bench_if.txt"
rc=$((rc | PIPESTATUS[0]))
exit "$rc"
