#!/usr/bin/env bash
# Lessons 9 and 11 on one GPU, in one call: the GPU tests (visible + hidden, reference engine),
# the lesson 9/11 GPU benchmarks, then the headline benchmark (throughput, batch-1 decode, profiles).
# Optional: WITH_SWEEP=1 (kernel launch settings), WITH_EAGER=1 (headline without graphs),
# WITH_NO_COMPILE=1 (graphs without compile_elementwise), REPEAT=N (headline N times), WITH_DEMOS=1.
#
#   bash scripts/gpu/lesson9_11.sh [all|tests|bench]      # results and logs under $OUT (default /tmp/aios_out)
#
# Everything runs against solutions/ (AIOS_IMPL=reference). The checkpoint is the 0.6b fixture,
# made here (random weights; the benchmarks use load_format="dummy" and never read them).
set -u -o pipefail
MODE=${1:-all}
source "$(dirname "$0")/common.sh"
record_environment triton transformers

section checkpoint
MODEL=/tmp/aios_q06
[ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
export AIOS_BENCH_MODEL="$MODEL"

if [ "${WITH_SWEEP:-0}" = 1 ]; then
  section "kernel launch-setting sweep (scripts/gpu/kernel_sweep.py)"
  timeout 240 python3 scripts/gpu/kernel_sweep.py --json "$OUT/sweep.json" > /tmp/sweep.txt 2>&1
  grep -A5 "best per case" /tmp/sweep.txt; grep -c "failed" /tmp/sweep.txt
fi

if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "GPU tests, lessons 9 and 11"
  SUITES=""
  for d in tests/lesson09 grader/hidden/lesson09 tests/lesson11 grader/hidden/lesson11; do [ -d "$d" ] && SUITES="$SUITES $d"; done
  timeout 300 python3 -m pytest $SUITES -q -rs -p no:cacheprovider --benchmark-json "$OUT/lesson_benchmarks.json" \
    -o console_output_style=classic > "$OUT/tests.log" 2>&1; grep -E "passed|failed|^FAILED|^ERROR" "$OUT/tests.log" | tail -25
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section "headline: python -m aios bench (engine defaults)"
  timeout 200 python3 -m aios bench --model "$MODEL" --no-progress --profile --json "$OUT/headline.json" > /tmp/log.txt 2>&1; grep -v "^ *$" /tmp/log.txt | head -14
  for i in $(seq 2 "${REPEAT:-1}"); do
    section "headline again (run $i, no profile)"
    timeout 200 python3 -m aios bench --model "$MODEL" --no-progress --json "$OUT/headline_run$i.json" > /tmp/log.txt 2>&1; tail -1 /tmp/log.txt
  done
  section "batch-1 decode: python -m aios bench --batch1"
  timeout 120 python3 -m aios bench --model "$MODEL" --batch1 --profile --json "$OUT/batch1.json" > /tmp/log.txt 2>&1; grep -v "^ *$" /tmp/log.txt | head -14
  if [ "${WITH_EAGER:-0}" = 1 ]; then
    section "headline without CUDA graphs (lessons 9-10 engine: enforce_eager=True)"
    timeout 200 python3 -m aios bench --model "$MODEL" --no-progress --enforce-eager --json "$OUT/headline_eager.json" \
      > /tmp/log.txt 2>&1; grep -v "^ *$" /tmp/log.txt | tail -2
  fi
  if [ "${WITH_NO_COMPILE:-0}" = 1 ]; then
    section "CUDA graphs without compile_elementwise (headline, batch-1)"
    timeout 200 python3 -m aios bench --model "$MODEL" --no-progress --no-compile --json "$OUT/headline_nocompile.json" \
      > /tmp/log.txt 2>&1; grep -v "^ *$" /tmp/log.txt | tail -1
    timeout 150 python3 -m aios bench --model "$MODEL" --batch1 --no-compile --json "$OUT/batch1_nocompile.json" \
      > /tmp/log.txt 2>&1; grep -v "^ *$" /tmp/log.txt | tail -1
  fi
fi

if [ "${WITH_DEMOS:-0}" = 1 ]; then
  section "lesson demos on the GPU (small fixture)"
  timeout 120 python3 exercises/lesson09/run_lesson9.py --reference 2>&1 | tail -12
  timeout 120 python3 exercises/lesson11/run_lesson11.py --reference 2>&1 | tail -5
fi
section done
