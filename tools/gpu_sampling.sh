#!/usr/bin/env bash
# Issue 10's GPU measurement in one run (~7-8 minutes on one H100/H200; torch 2.11 or later, no network):
# for vaihingen, monuseg and cityscapes, eager vs compiled fast path and the reference path at 30 x 100
# (ms per network call, s/image, TFLOP/s and % of the bf16 matmul peak measured in the same run, compile time
# cold and warm in fresh processes, peak memory), the compile="auto" rule with this run's numbers, and a
# torch.profiler summary (top kernels, which SDPA kernel runs in bf16).
#
#   bash tools/gpu_sampling.sh              # results in $OUT (default ./gpu-sampling-out)
#   QUICK=1 bash tools/gpu_sampling.sh      # a CPU smoke run of this script (tiny preset, eager only)
#
# Writes small files only: benchmark.json, benchmark.md (the table of docs/results.md), benchmark.log,
# profile/profile.{json,txt}, env.txt; if time is left, cudagraphs.{json,md} (CUDA-graph variants, vaihingen).
# The report is rewritten after each preset: a run cut short keeps the presets it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-sampling-out}
BUDGET=${BUDGET:-470}  # seconds for everything
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
CACHE=${SEGDIFF_BENCH_CACHE:-/tmp/segdiff-compile}  # compile caches: large, kept out of $OUT
mkdir -p "$CACHE"
start=$(date +%s)
{
  date -u
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  $PY -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "python", platform.python_version())'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
} > "$OUT/env.txt" 2>&1

if [ "${QUICK:-0}" = 1 ]; then
  ARGS=(--quick --device cpu --threads 2 --variants default --profile "$OUT/profile")
else
  ARGS=(--preset vaihingen monuseg cityscapes --variants default,compile --compile-times
        --compile-cache "$CACHE" --measure-steps 10 --repeats 2 --reference-generations 3
        --profile "$OUT/profile")
fi
timeout "$BUDGET" $PY -m segdiff benchmark "${ARGS[@]}" --no-train \
  --out "$OUT/benchmark.json" --md "$OUT/benchmark.md" 2>&1 | grep -v -i "warning" | tee "$OUT/benchmark.log"
status=${PIPESTATUS[0]}
echo "benchmark exit status $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/benchmark.log"

# CUDA-graph variants (never measured so far: compilation dominated a short run) with what time is left
left=$(( BUDGET - ($(date +%s) - start) ))
if [ "${QUICK:-0}" != 1 ] && [ "$left" -gt 120 ]; then
  timeout "$left" $PY -m segdiff benchmark --preset vaihingen --variants cudagraphs,channels_last+compile \
    --compile-cache "$CACHE" --measure-steps 10 --repeats 2 --no-reference --no-train \
    --out "$OUT/cudagraphs.json" --md "$OUT/cudagraphs.md" 2>&1 | grep -v -i "warning" | tee "$OUT/cudagraphs.log"
  echo "cudagraphs exit status ${PIPESTATUS[0]}" | tee -a "$OUT/cudagraphs.log"
fi
exit "$status"
