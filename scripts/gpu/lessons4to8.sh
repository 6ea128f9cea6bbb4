#!/usr/bin/env bash
# The GPU throughput benchmarks of lessons 4-8 in one call: each times its lesson's generation
# loop and the one before it on the same workload, in the same process, and asserts the ratio
# (aios/bench/ladder.py: LESSON_BENCHMARKS, MIN_SPEEDUP). Then a one-line-per-lesson summary.
#
#   bash scripts/gpu/lessons4to8.sh                      # on a GPU machine; results under $OUT
#   AIOS_BENCH_SMOKE=1 bash scripts/gpu/lessons4to8.sh   # on a CPU: tiny model, shrunk workloads
#
# Files written to $OUT (default /tmp/aios_out): gpu.txt (device and versions),
# lessons4to8.log (pytest output), lessons4to8_benchmarks.json (pytest-benchmark, with each
# comparison in extra_info), lessons4to8_summary.txt (tok/s of both stages and the ratio).
# Everything runs against solutions/ (AIOS_IMPL=reference). The checkpoint is the 0.6b fixture,
# made here; the benchmarks load it with load_format="dummy" (random weights, never read).
# AIOS_BENCH_ROUNDS (default 2) sets the timed rounds per stage; LESSONS (default "4 5 6 7 8")
# picks the lessons, e.g. LESSONS="7 8" to split the five over two GPUs.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
BENCHMARKS=""
for n in ${LESSONS:-4 5 6 7 8}; do BENCHMARKS="$BENCHMARKS tests/lesson0$n/test_l0${n}_benchmark.py"; done

record_environment transformers

if [ "${AIOS_BENCH_SMOKE:-0}" = 1 ]; then
  section "smoke: the whole ladder on the tiny model, CPU, workloads x0.1"
  timeout 300 python3 -m aios.bench.ladder --preset tiny --device cpu --scale 0.1 2>&1 | tee "$OUT/lessons4to8_summary.txt"
  status=$?
  section "smoke: the benchmark tests collect (and skip without CUDA)"
  timeout 120 python3 -m pytest $BENCHMARKS -m benchmark_gpu -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/lessons4to8.log" | tail -8
  section done
  exit $status
fi

section checkpoint
MODEL=${AIOS_BENCH_MODEL:-/tmp/aios_q06}
[ -f "$MODEL/config.json" ] || python3 -m aios make-model 0.6b "$MODEL" --force
export AIOS_BENCH_MODEL="$MODEL"

section "lessons 4-8 GPU benchmarks"
timeout 540 python3 -m pytest $BENCHMARKS -m benchmark_gpu -q -rs -s -p no:cacheprovider \
  --benchmark-json "$OUT/lessons4to8_benchmarks.json" 2>&1 | tee "$OUT/lessons4to8.log" | grep -v "^$" | tail -40
status=${PIPESTATUS[0]}

section summary
python3 - "$OUT/lessons4to8_benchmarks.json" <<'EOF' 2>&1 | tee "$OUT/lessons4to8_summary.txt"
import json, sys
try:
    records = json.load(open(sys.argv[1]))["benchmarks"]
except (OSError, ValueError, KeyError) as exc:
    sys.exit(f"no benchmark results: {exc}")
for r in sorted(records, key=lambda r: r["extra_info"].get("lesson", 0)):
    e = r["extra_info"]
    if "speedup" not in e:
        continue
    verdict = "ok" if e["speedup"] >= e["min_speedup"] else "BELOW THRESHOLD"
    print(f"lesson {e['lesson']}: {e['stage']} {e['tokens_per_second']} tok/s vs {e['baseline_stage']} "
          f"{e['baseline_tokens_per_second']} tok/s = x{e['speedup']} (min x{e['min_speedup']}, "
          f"syllabus x{e['syllabus_speedup']}) [{verdict}]")
EOF
section done
exit $status
