#!/usr/bin/env bash
# Lesson 19 (speculative decoding) on one GPU, in one call:
#   1. its tests (visible + hidden) on the GPU, reference engine;
#   2. the GPU benchmark: decode tokens/s with and without speculation on the 8b shape (random weights):
#      n-gram lookup (k = 2, 4) on prompts that repeat a phrase, and a 2-layer draft at controlled
#      acceptance (noise sigma 0 .. 4 on the draft's weights), batch sizes 1, 4, 16, 64, with acceptance
#      rate and mean accepted length beside every speed-up.
#
#   bash scripts/gpu/lesson19.sh [all|tests|bench]     # results and logs under $OUT (default /tmp/aios_out)
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lesson19.sh    # on a CPU: tiny shape, small workload
#
# Files written to $OUT: gpu.txt, lesson19_tests.log, lesson19_benchmark.json (pytest-benchmark; the rows
# in extra_info), speculative.json (the same rows), lesson19_bench.log (the table).
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment transformers

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: the speculative benchmark on the tiny shape, CPU"
  timeout 300 python3 - "$OUT" <<'PY' 2>&1 | tee "$OUT/lesson19_bench.log"
import sys, torch
torch.cuda.synchronize = lambda *a, **k: None
torch.cuda.get_device_name = lambda *a, **k: "cpu"
from aios.bench import speculative as S
target = S.config_only_checkpoint("tiny", sys.argv[1] + "/spec_smoke/target")
result = S.run_speculative_benchmark(target, sys.argv[1] + "/spec_smoke", batch_sizes=(1, 4), output_len=24,
                                     prompt_len=48, sigmas=(0.0, 0.05), draft_layers=1, progress=lambda s: None)
print(S.summary(result))
PY
  exit $?
fi

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lesson 19 on the GPU (benchmark excluded)"
  timeout 400 python3 -m pytest tests/lesson19 grader/hidden/lesson19 -m "not benchmark_gpu" -q -rs \
    -p no:cacheprovider > "$OUT/lesson19_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson19_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section "lesson 19 GPU benchmark (speculative decoding, ${AIOS_SPEC_PRESET:-8b} shape)"
  AIOS_BENCH_OUT="$OUT" timeout 540 python3 -m pytest tests/lesson19/test_l19_benchmark.py -m benchmark_gpu \
    -q -rs -s -p no:cacheprovider --benchmark-json "$OUT/lesson19_benchmark.json" > "$OUT/lesson19_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^{" "$OUT/lesson19_bench.log" | grep -v "^$" | tail -40
fi
section done
exit $status
