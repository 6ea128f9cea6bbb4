#!/usr/bin/env bash
# The bf16 decode GEMV of the dense linears (solutions/aios/layers/dense_gemv.py; issue 15's batch-1 target)
# on one GPU:
#   1. tests: its GPU tests (every setting at the Qwen3-0.6B and 8B shapes at 1, 3 and 8 rows against F.linear,
#      the tuned linears replayed from a CUDA graph), then lesson 18's GEMV tests (they share the tuner);
#   2. sweep: F.linear against every GEMV setting and the tuned dispatcher at M = 1 and 4 on the 0.6B and 8B
#      shapes, CUDA-graph timed (hot, L2-cold, and back to back over > 200 MB of weight copies), TB/s;
#   3. bench: aios bench --batch1 on the 0.6b shape with the GEMV off (AIOS_DENSE_GEMV=0) and on, each with the
#      profile of a few decode steps (torch.profiler's kernel table: where the GEMM time went), and the
#      headline throughput with it on (must not lose against lesson 17's figures: batches above 8 rows keep cuBLAS).
#
#   bash scripts/gpu/dense_gemv.sh [all|tests|sweep|bench]   # results and logs under $OUT (default /tmp/aios_out)
#   (each of tests, sweep and bench fits in 10 minutes; all three together do not)
#   BENCH_FLAGS="--no-async-scheduling" HEADLINE=0 bash scripts/gpu/dense_gemv.sh bench
#
# Files written to $OUT: gpu.txt, dense_gemv_tests.log, quant_gemv_tests.log, gemv_sweep.{json,log},
# bench1_gemv{0,1}.{json,log} (engine.dense_gemv.choices in the JSON: what each decode shape chose),
# bench_gemv1.{json,log}.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment triton

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "dense GEMV tests on the GPU"
  timeout 300 python3 -m pytest tests/infra/test_dense_gemv.py -q -rs -s -p no:cacheprovider \
    > "$OUT/dense_gemv_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR|dense choices" "$OUT/dense_gemv_tests.log" | tail -20
  section "lesson 18's GEMV tests (the shared tuner)"
  timeout 250 python3 -m pytest tests/infra/test_quant_gemv.py -q -rs -p no:cacheprovider \
    > "$OUT/quant_gemv_tests.log" 2>&1
  quant_status=$?
  [ $status = 0 ] && status=$quant_status
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/quant_gemv_tests.log" | tail -10
fi

if [ "$MODE" = all ] || [ "$MODE" = sweep ]; then
  section "sweep: F.linear against the GEMV settings (bf16, M = 1 and 4, 0.6B and 8B shapes)"
  timeout 500 python3 scripts/gpu/quant_sweep.py --dense --json "$OUT/gemv_sweep.json" > "$OUT/gemv_sweep.log" 2>&1
  sweep_status=$?
  [ $status = 0 ] && status=$sweep_status
  grep -E "^M=|F.linear|dispatch|seq .*(F.linear|dispatch)|dense choices|took" "$OUT/gemv_sweep.log" | tail -90
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section checkpoint
  MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
  for gemv in 0 1; do
    section "aios bench --batch1 --profile, AIOS_DENSE_GEMV=$gemv"
    AIOS_DENSE_GEMV=$gemv timeout 200 python3 -m aios bench --model "$MODEL" --batch1 --profile --no-progress \
      ${BENCH_FLAGS:-} --json "$OUT/bench1_gemv$gemv.json" > "$OUT/bench1_gemv$gemv.log" 2>&1
    grep -E "tok/s|engine ready" "$OUT/bench1_gemv$gemv.log" | tail -3
    grep -E "decode profile|Self CUDA time total|gemm|gemv|nvjet|cutlass|sm90" "$OUT/bench1_gemv$gemv.log" | head -10
  done
  python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {g: json.loads((out / f"bench1_gemv{g}.json").read_text()) for g in (0, 1) if (out / f"bench1_gemv{g}.json").exists()}
for g, r in runs.items():
    print(f"AIOS_DENSE_GEMV={g}: {r.get('output_tokens_per_second', r.get('tok_s'))} tok/s  choices {r.get('engine', {}).get('dense_gemv')}")
if len(runs) == 2:
    a, b = (runs[g].get("output_tokens_per_second") for g in (0, 1))
    if a and b:
        print(f"batch-1 decode with the GEMV: x{b / a:.2f}")
PY
  if [ "${HEADLINE:-1}" = 1 ]; then
    section "aios bench (headline workload) with the GEMV on"
    timeout 150 python3 -m aios bench --model "$MODEL" --no-progress ${BENCH_FLAGS:-} --json "$OUT/bench_gemv1.json" \
      > "$OUT/bench_gemv1.log" 2>&1
    tail -2 "$OUT/bench_gemv1.log"
  fi
fi
section done
exit $status
