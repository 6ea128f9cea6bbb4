#!/usr/bin/env bash
# The throughput ladder on one GPU: the reference engine stage by stage (lessons 3-13) on the
# syllabus's 32-request workload, written as a table, JSON and a bar chart, plus the ratios
# between consecutive stages (they calibrate MIN_SPEEDUP in aios/bench/ladder.py).
#
#   bash scripts/gpu/ladder.sh                      # on a GPU machine; results under $OUT
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/ladder.sh   # on a CPU: tiny model, workload --scale small
#
# Files written to $OUT (default /tmp/aios_out): gpu.txt (device and versions), ladder.log
# (the printed ladder and ratios), ladder/table.md, ladder/ladder.json, ladder/ladder.png.
# The files are rewritten after every stage, so a run cut short still leaves what it measured.
# Sized for ~4 minutes on an H200: stages 3-6 time requests one at a time for LADDER_SINGLE_BUDGET
# seconds (default 6), any stage is stopped after LADDER_STAGE_TIMEOUT seconds (default 60), and
# the whole ladder after LADDER_TIMEOUT (default 215). Everything runs against solutions/
# (AIOS_IMPL=reference); the checkpoint is the 0.6b fixture, made here and loaded with
# load_format="dummy" (random weights, never read).
set -u -o pipefail
source "$(dirname "$0")/common.sh"

record_environment matplotlib

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: the ladder on the tiny model, CPU, --scale small"
  MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_tiny}
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model tiny "$MODEL" --force >/dev/null
  timeout 300 python3 -m aios.bench.ladder --ladder --model "$MODEL" --device cpu --scale small \
    --single-budget 1 --out "$OUT/ladder" 2>&1 | tee "$OUT/ladder.log"
  status=${PIPESTATUS[0]}
  section done
  exit $status
fi

section checkpoint
MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
[ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force >/dev/null

section "throughput ladder, stages 3-13"
timeout "${LADDER_TIMEOUT:-215}" python3 -m aios.bench.ladder --ladder --model "$MODEL" --device cuda \
  --single-budget "${LADDER_SINGLE_BUDGET:-6}" --stage-timeout "${LADDER_STAGE_TIMEOUT:-60}" \
  --out "$OUT/ladder" 2>&1 | tee "$OUT/ladder.log" | grep -v "^$"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "the ladder ran past ${LADDER_TIMEOUT:-215} s: $OUT/ladder holds the stages it finished"

section table
cat "$OUT/ladder/table.md" 2>/dev/null || echo "no table written"
section done
exit $status
