#!/usr/bin/env bash
# Lesson 16 (chunked prefill) on one GPU, in one call:
#   1. its tests (visible + hidden) on the GPU, reference engine;
#   2. the GPU benchmark: short requests' TTFT and inter-token latency while 8k-token prompts
#      arrive, prefill-first against chunked prefill (budget 1024), on the 0.6b shape;
#   3. the ladder's stages 13 and 16 side by side (throughput: what chunking costs or gains).
#
#   bash scripts/gpu/lesson16.sh [all|tests|bench]     # results and logs under $OUT (default /tmp/aios_out)
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lesson16.sh    # on a CPU: tiny model, small workload
#
# Files written to $OUT: gpu.txt, lesson16_tests.log, lesson16_benchmark.json (pytest-benchmark;
# the figures in extra_info), chunked_prefill.json (the same figures), lesson16_bench.log,
# ladder16/{table.md,ladder.json,ladder.png}.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment transformers

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: the latency workload on the tiny model, CPU"
  timeout 300 python3 -m aios.bench.chunked_prefill --preset tiny --device cpu --scale small --budget 16 \
    --out "$OUT" 2>&1 | tee "$OUT/lesson16_bench.log"
  exit $?
fi

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lesson 16 on the GPU (benchmark excluded)"
  timeout 400 python3 -m pytest tests/lesson16 grader/hidden/lesson16 -m "not benchmark_gpu" -q -rs \
    -p no:cacheprovider > "$OUT/lesson16_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson16_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section checkpoint
  MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
  export AIOS_BENCH_MODEL="$MODEL"

  section "lesson 16 GPU benchmark (latency under 8k-token prompts)"
  AIOS_BENCH_OUT="$OUT" timeout 500 python3 -m pytest tests/lesson16/test_l16_benchmark.py -m benchmark_gpu \
    -q -rs -s -p no:cacheprovider --benchmark-json "$OUT/lesson16_benchmark.json" > "$OUT/lesson16_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^$" "$OUT/lesson16_bench.log" | tail -20

  section "ladder stages 13 and 16"
  timeout 400 python3 -m aios.bench.ladder --ladder --model "$MODEL" --stages 13,16 --out "$OUT/ladder16" 2>&1 | tail -8
fi
section done
exit $status
