#!/usr/bin/env bash
# Lesson 17 (overlap scheduling) on one GPU, in one call:
#   1. its tests (visible + hidden) on the GPU, reference engine (the CPU tests force async_scheduling=True;
#      here they also run with CUDA graphs and Triton where the options allow);
#   2. the GPU benchmark: the synchronous loop against the overlapped one on the 0.6b shape: throughput
#      (aios bench's workload shape, 128 requests), batch-1 decode, and the torch.profiler timeline of 30
#      decode steps of 64 sequences (GPU idle time per step; two Chrome traces);
#   3. aios bench (256 requests, the headline) and aios bench --batch1, each with and without overlap;
#   4. the ladder's stages 16 and 17 side by side.
#
#   bash scripts/gpu/lesson17.sh [all|tests|bench]     # results and logs under $OUT (default /tmp/aios_out)
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lesson17.sh    # on a CPU: tiny model, small workload
#   BENCH_FLAGS="--profile" LADDER=0 bash scripts/gpu/lesson17.sh bench   # extra aios bench flags; no ladder
#
# Files written to $OUT: gpu.txt, lesson17_tests.log, lesson17_benchmark.json (pytest-benchmark; the figures
# in extra_info), async_overlap.json (the same figures), timeline_sync.json / timeline_async.json (Perfetto),
# lesson17_bench.log, bench_{sync,async}.json, bench1_{sync,async}.json, ladder17/{table.md,ladder.json,ladder.png}.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: sync vs async on the tiny model, CPU"
  timeout 300 python3 -m aios.bench.async_overlap --preset tiny --device cpu --scale small --out "$OUT" 2>&1 \
    | tee "$OUT/lesson17_bench.log"
  exit $?
fi

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lesson 17 on the GPU (benchmark excluded), and the server over the overlapped engine"
  timeout 400 python3 -m pytest tests/lesson17 grader/hidden/lesson17 tests/infra/test_async_scheduling_server.py \
    -m "not benchmark_gpu" -q -rs -p no:cacheprovider > "$OUT/lesson17_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson17_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section checkpoint
  MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
  export AIOS_BENCH_MODEL="$MODEL"

  section "lesson 17 GPU benchmark (sync vs async: throughput, batch-1, GPU idle per step)"
  AIOS_BENCH_OUT="$OUT" timeout 500 python3 -m pytest tests/lesson17/test_l17_benchmark.py -m benchmark_gpu \
    -q -rs -s -p no:cacheprovider --benchmark-json "$OUT/lesson17_benchmark.json" > "$OUT/lesson17_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^$" "$OUT/lesson17_bench.log" | tail -20

  for mode in sync async; do
    flag=--no-async-scheduling; [ $mode = async ] && flag=--async-scheduling
    section "aios bench $flag (headline workload, 256 requests)"
    timeout 300 python3 -m aios bench --model "$MODEL" $flag --no-progress ${BENCH_FLAGS:-} \
      --json "$OUT/bench_$mode.json" > "$OUT/bench_$mode.log" 2>&1; tail -3 "$OUT/bench_$mode.log"
    section "aios bench --batch1 $flag"
    timeout 200 python3 -m aios bench --model "$MODEL" --batch1 $flag --no-progress ${BENCH_FLAGS:-} \
      --json "$OUT/bench1_$mode.json" > "$OUT/bench1_$mode.log" 2>&1; tail -2 "$OUT/bench1_$mode.log"
  done

  [ "${LADDER:-1}" = 1 ] || { section done; exit $status; }
  section "ladder stages 16 and 17"
  timeout 400 python3 -m aios.bench.ladder --ladder --model "$MODEL" --stages 16,17 --out "$OUT/ladder17" 2>&1 | tail -8
fi
section done
exit $status
