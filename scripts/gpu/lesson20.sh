#!/usr/bin/env bash
# Lesson 20 (Mixture-of-Experts, Qwen3-MoE) on one GPU, in one call:
#   1. its tests (visible + hidden) on the GPU, reference engine (compiled Triton kernel, CUDA graphs);
#   2. the kernel benchmark: fused_moe against the per-expert loop on one Qwen3-30B-A3B layer
#      (128 experts, 8 per token, bf16) for 256, 2048 and 8192 tokens; target >= 5x;
#   3. the headline workload (256 requests, 100-1024 tokens in and out) on the Qwen3-30B-A3B
#      shape with random bf16 weights (~61 GB on one H200; load_format="dummy", nothing written to disk).
#
#   bash scripts/gpu/lesson20.sh [all|tests|bench|headline]   # results and logs under $OUT (default /tmp/aios_out)
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lesson20.sh            # on a CPU: tiny-moe, small workload
#
# Files written to $OUT: gpu.txt, lesson20_tests.log, lesson20_benchmark.json (pytest-benchmark; figures
# in extra_info), moe_kernel.json (one line per batch size), lesson20_bench.log, moe.json (kernel table
# and the headline figure), lesson20_headline.log.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment transformers triton

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: kernel comparison and headline on tiny-moe, CPU"
  timeout 300 python3 -m aios.bench.moe --kernel --headline --device cpu --out "$OUT" 2>&1 | tee "$OUT/lesson20_bench.log"
  exit $?
fi

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lesson 20 on the GPU (benchmark excluded)"
  timeout 400 python3 -m pytest tests/lesson20 grader/hidden/lesson20 -m "not benchmark_gpu" -q -rs \
    -p no:cacheprovider > "$OUT/lesson20_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson20_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section "lesson 20 GPU benchmark (fused MoE vs per-expert loop, 30B-A3B layer)"
  AIOS_BENCH_OUT="$OUT" timeout 400 python3 -m pytest tests/lesson20/test_l20_benchmark.py -m benchmark_gpu \
    -q -rs -s -p no:cacheprovider --benchmark-json "$OUT/lesson20_benchmark.json" > "$OUT/lesson20_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^$" "$OUT/lesson20_bench.log" | tail -12
fi

if [ "$MODE" = all ] || [ "$MODE" = headline ]; then
  section "headline workload on the Qwen3-30B-A3B shape (random bf16 weights)"
  timeout 580 python3 -m aios.bench.moe --headline --out "$OUT" 2>&1 | tee "$OUT/lesson20_headline.log" | tail -8
  headline_status=$?
  [ $status = 0 ] && status=$headline_status
fi
section done
exit $status
