#!/usr/bin/env bash
# Every GPU check of the IF engine in one command, for a CUDA machine (H100/H200 class), inside a time budget
# (GPU_CHECK_BUDGET_S, default 540 s: a 600 s device limit less a margin). Phases, most important first, each in
# its own process under `timeout` with at most what is left of the budget:
#   tests     pytest tests/gpu: the tiny pipelines on CUDA (every operation; the fast path's modes against eager,
#             padding, CUDA graphs, attention kernels) and the real IF-I-XL architecture for a few steps
#   main      bench_if.py, both UNets (IF-I-XL 4.3B, IF-II-L 1.2B, random fp16 weights) built on the GPU: modes
#             eager, reduce-overhead, default, eager + channels-last; one UNet call per bucket 2..32 for stage I
#             and stage II in each mode; every operation eager and with reduce-overhead
#   t5        bench_if.py --t5 gpu 8bit cpu: IF's T5-XXL (random weights, built on the GPU) in each placement,
#             its encode times and the peak memory of a request
#   flow      bench_flow.py: model time of 10 and 100 guided MNIST digits at the default request, and D=64
#             training images/s (data on the device, fp32 and bf16 + channels-last + compile, batch 4096)
#             (bench_flow.txt)
#   batching  bench_batching.py: IF-I-XL per-image step cost at 2..32 rows with per-row timesteps, and a mix of
#             every operation one by one against all at once through the worker's batcher (bench_batching.txt)
#   autotune  bench_if.py --modes max-autotune, stage-I buckets, with the time that is left
# A phase that runs out of time is stopped; bench_if.py rewrites its JSON after each mode, so what it measured
# stays. Output in $OUT (default bench/out/), seven files: nvidia-smi.txt, gpu_tests.txt, gpu_check.log, bench_flow.txt, bench_batching.txt
# (everything printed), bench_if.json (every run and the phases) and gpu_table.md (the section for BENCHMARKS.md,
# also printed last). Exit status: nonzero when a phase failed, timed out or was skipped. Arguments go to every
# bench_if.py run. ALLOW_CPU=1 runs without CUDA, to check the script itself:
#   ALLOW_CPU=1 GPU_CHECK_BUDGET_S=300 bash bench/gpu_check.sh --tiny --stride 330 --upscale-steps 3
#
# On a machine with the project installed (`make setup` with a CUDA torch) it needs nothing else. On a lent
# device machine (no network, no diffusers, no bitsandbytes) run bench/prepare_gpu_check.sh here first and carry
# .whl and shared: the wheels in .whl are installed into /tmp/site, the slimmed bitsandbytes in .whl/bnb goes on
# PYTHONPATH, and the configs are found in ./shared/if_configs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
START=$SECONDS
RAW=$(mktemp -d)
LOG="$OUT/gpu_check.log"
: >"$LOG"
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
if [ -d .whl/bnb ] && ! "$PY" -c "import bitsandbytes" 2>/dev/null; then
  export PYTHONPATH=$PWD/.whl/bnb${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device visible to $PY (set ALLOW_CPU=1 to run the checks on the CPU anyway)" >&2
  exit 2
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"

rc=0
# limit CAP: seconds for the next phase, at most CAP and what is left of the budget less 10 s
limit() {
  local left=$((BUDGET - (SECONDS - START) - 10))
  echo $(($1 < left ? $1 : left))
}
# phase NAME SECONDS CMD...: run CMD under timeout, output to the log and $RAW/NAME.txt; record its status
phase() {
  local name=$1 seconds=$2 t0=$SECONDS status word
  shift 2
  if ((seconds < 30)); then
    echo "== $name: skipped, the budget of ${BUDGET}s is spent" | tee -a "$LOG"
    printf '%s\tskipped (budget spent)\t0\n' "$name" >>"$RAW/phases.tsv"
    rc=1
    return
  fi
  echo "== $name (at most ${seconds}s): $*" | tee -a "$LOG"
  timeout -k 15 "$seconds" "$@" 2>&1 | tee "$RAW/$name.txt" >>"$LOG"
  status=${PIPESTATUS[0]}
  tail -n 40 "$RAW/$name.txt"
  word=ok
  if ((status == 124 || status == 137)); then
    word="stopped at its limit of ${seconds}s"
  elif ((status != 0)); then
    word="failed (exit $status)"
  fi
  ((status == 0)) || rc=1
  printf '%s\t%s\t%d\n' "$name" "$word" $((SECONDS - t0)) >>"$RAW/phases.tsv"
  echo "== $name: $word in $((SECONDS - t0))s" | tee -a "$LOG"
}

PHASES=" ${GPU_CHECK_PHASES:-tests flow main t5 batching autotune} "
wanted() { [[ $PHASES == *" $1 "* ]]; }

if wanted tests; then
  L=$(limit 150)
  phase tests "$L" "$PY" -m pytest tests/gpu -q -p no:cacheprovider -rs
  cp "$RAW/tests.txt" "$OUT/gpu_tests.txt" 2>/dev/null || true
fi
# MNIST flow (issue 13): 10 and 100 guided digits at the default request, and D=64 class-model training with the
# data on the device, bf16, channels-last and compile at batch 4096 (short: it is cheap, and first in line)
if wanted flow; then
  L=$(limit 120)
  if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    flow=(--device cuda --threads 0 --no-old --repeats 20 --train-widths 64 --train-batch 4096 --train-steps 30
      --train-bf16 --train-channels-last --train-compile --train-fp32)
  else
    flow=(--threads 2 --repeats 2 --train-widths 32 --train-batch 64 --train-steps 2)  # the script check on a CPU
  fi
  phase flow "$L" "$PY" bench/bench_flow.py "${flow[@]}" --json "$RAW/flow.json"
  cp "$RAW/flow.txt" "$OUT/bench_flow.txt" 2>/dev/null || true
fi
# reduce-overhead right after eager: it is the mode the targets are about; its warm-up may take most of the phase
# (default then reuses its compiled kernels from inductor's cache)
if wanted main; then
  L=$(limit 300)
  phase main "$L" "$PY" bench/bench_if.py --modes off reduce-overhead default off+cl --ops-modes off reduce-overhead \
    --unet-buckets --warmup-timeout $((L > 120 ? L - 90 : 30)) --json "$RAW/main.json" "$@"
fi
if wanted t5; then
  L=$(limit 150)
  phase t5 "$L" "$PY" bench/bench_if.py --no-ops --t5 gpu 8bit cpu --t5-dir "$RAW/t5" --json "$RAW/t5.json" "$@"
  rm -rf "$RAW/t5"
fi
if wanted batching; then
  L=$(limit 120)
  tiny=()
  [[ " $* " == *" --tiny "* ]] && tiny=(--tiny --stride 100 --repeat 1)  # the script check on a CPU
  phase batching "$L" "$PY" bench/bench_batching.py --repeat 2 "${tiny[@]}" --json "$RAW/batching.json"
  cp "$RAW/batching.txt" "$OUT/bench_batching.txt" 2>/dev/null || true
fi
if wanted autotune; then
  L=$(limit 600)
  phase autotune "$L" "$PY" bench/bench_if.py --modes max-autotune --no-stage2 --no-ops --unet-buckets \
    --warmup-timeout $((L > 90 ? L - 60 : 30)) --json "$RAW/autotune.json" "$@"
fi

runs=()
for name in main t5 autotune; do
  [ -f "$RAW/$name.json" ] && runs+=("$RAW/$name.json")
done
"$PY" bench/gpu_table.py "${runs[@]}" --phases "$RAW/phases.tsv" --combined "$OUT/bench_if.json" >"$OUT/gpu_table.md"
echo
cat "$OUT/gpu_table.md"
rm -rf "$RAW"
exit "$rc"
