#!/usr/bin/env bash
# Lessons 12 (sampling) and 13 (prefix caching) on one GPU, in one call:
#   1. their tests (visible + hidden) on the GPU, reference engine;
#   2. the GPU benchmarks: the Sampler's cost per decode step, the engine sampled vs greedy
#      (lesson 12), and the shared-system-prompt workload with prefix caching off and on (lesson 13);
#   3. a summary of the figures.
#
#   bash scripts/gpu/lessons12_13.sh [all|tests|bench]     # results and logs under $OUT (default /tmp/aios_out)
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lessons12_13.sh    # on a CPU: tiny model, shrunk workload
#
# Files written to $OUT: gpu.txt (device, versions), lessons12_13_tests.log,
# lessons12_13_benchmarks.json (pytest-benchmark; each figure in extra_info), lessons12_13_bench.log,
# lessons12_13_summary.txt. The checkpoint is the 0.6b fixture, made here; the benchmarks load it
# with load_format="dummy" (random weights, never read).
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
SUITES="tests/lesson12 grader/hidden/lesson12 tests/lesson13 grader/hidden/lesson13"
BENCHMARKS="tests/lesson12/test_l12_benchmark.py tests/lesson13/test_l13_benchmark.py"

record_environment transformers

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: lesson 13 workload on the tiny model, CPU, workload x0.05"
  timeout 300 python3 -m aios.bench.prefix_cache --preset tiny --device cpu --scale 0.05 \
    --json "$OUT/lesson13_smoke.json" 2>&1 | tee "$OUT/lessons12_13_summary.txt"
  status=$?
  section "smoke: the benchmark tests collect (and skip without CUDA)"
  timeout 120 python3 -m pytest $BENCHMARKS -q -rs -p no:cacheprovider 2>&1 | tail -4
  section done
  exit $status
fi

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lessons 12 and 13 on the GPU (benchmarks excluded)"
  timeout 300 python3 -m pytest $SUITES -m "not benchmark_gpu" -q -rs -p no:cacheprovider \
    -o console_output_style=classic > "$OUT/lessons12_13_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lessons12_13_tests.log" | tail -25
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section checkpoint
  MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
  export AIOS_BENCH_MODEL="$MODEL"

  section "lessons 12 and 13 GPU benchmarks"
  timeout 420 python3 -m pytest $BENCHMARKS -m benchmark_gpu -q -rs -s -p no:cacheprovider \
    --benchmark-json "$OUT/lessons12_13_benchmarks.json" > "$OUT/lessons12_13_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^$" "$OUT/lessons12_13_bench.log" | tail -30

  section summary
  python3 - "$OUT/lessons12_13_benchmarks.json" <<'EOF' 2>&1 | tee "$OUT/lessons12_13_summary.txt"
import json, sys
try:
    records = json.load(open(sys.argv[1]))["benchmarks"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"no benchmark results: {exc}")
for r in records:
    e, stats = r["extra_info"], r["stats"]
    if "case" in e:
        print(f"lesson 12 sampler [{e['case']}] {e['rows']}x{e['vocab']}: median {stats['median'] * 1e3:.3f} ms/call")
    elif "sampled_over_greedy" in e:
        print(f"lesson 12 engine: greedy {e['greedy_tokens_per_second']} tok/s, sampled "
              f"{e['sampled_tokens_per_second']} tok/s (x{e['sampled_over_greedy']})")
    elif "prefill_reduction" in e:
        off, on = e["off"], e["on"]
        print(f"lesson 13: prefilled {off['prefill_tokens']} -> {on['prefill_tokens']} tokens "
              f"(x{e['prefill_reduction']} fewer, syllabus ~x50); prefill time {off['prefill_seconds']:.3f} -> "
              f"{on['prefill_seconds']:.3f} s (x{e['prefill_time_speedup']}); whole run {off['seconds']:.3f} -> "
              f"{on['seconds']:.3f} s (x{e['total_time_speedup']})")
EOF
fi
section done
exit $status
