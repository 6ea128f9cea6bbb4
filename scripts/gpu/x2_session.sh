#!/usr/bin/env bash
# Everything that needs the 2-GPU machine, in one call of under 10 minutes:
#   phase 0, both GPUs: the lesson 14 NCCL test (TP=2 == TP=1);
#   phase 1, in parallel: GPU 0 runs `aios bench` on the Qwen3-8B and -14B shapes at TP=1
#            (scripts/gpu/tp.sh), GPU 1 the script named by GPU1_SCRIPT (default
#            scripts/gpu/ladder.sh; e.g. GPU1_SCRIPT=scripts/gpu/lessons4to8.sh);
#   phase 2, both GPUs: 8B and 14B at TP=2.
# Each step's timeout is cut to what is left of DEADLINE seconds (default 560), so the call
# ends in time and returns what it measured. Results: $OUT/results.tgz (every log and JSON),
# $OUT/summary.txt, and the ladder's table.md / ladder.png.
#
#   bash scripts/gpu/x2_session.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
FINAL=${OUT:-/tmp/aios_out}
WORK=/tmp/aios_x2
DEADLINE=${DEADLINE:-570}
mkdir -p "$WORK/tp" "$WORK/ladder" "$FINAL"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { local t=$(( DEADLINE - SECONDS - ${1:-0} )); [ "$t" -gt "${2:-100000}" ] && t=${2}; echo $(( t > 10 ? t : 10 )); }
say() { echo "=== $* (t=${SECONDS}s)"; }

say "phase 0: NCCL test"
OUT="$WORK/tp" timeout "${GPUTEST_TIMEOUT:-180}" bash scripts/gpu/tp.sh gputest > "$WORK/tp/phase0_test.log" 2>&1
grep -E "exit code|passed|failed|FAILED|ERROR" "$WORK/tp/phase0_test.log" | tail -6

GPU1_SCRIPT=${GPU1_SCRIPT:-scripts/gpu/ladder.sh}
say "phase 1: $GPU1_SCRIPT on GPU 1, TP=1 benches on GPU 0"
(CUDA_VISIBLE_DEVICES=1 OUT="$WORK/ladder" LADDER_TIMEOUT=200 timeout 260 bash "$GPU1_SCRIPT" > "$WORK/ladder/console.log" 2>&1) &
LADDER=$!
for shape in 8b 14b; do
  TPS=1 CUDA_VISIBLE_DEVICES=0 OUT="$WORK/tp" BENCH_TIMEOUT=$(left 200 150) bash scripts/gpu/tp.sh "bench$shape" \
    > "$WORK/tp/phase1_$shape.log" 2>&1
  grep -E "exit code|throughput|Error" "$WORK/tp/phase1_$shape.log" | tail -3
done
wait $LADDER
say "$GPU1_SCRIPT done"; tail -25 "$WORK/ladder/console.log"

say "phase 2: TP=2 benches"
for shape in 8b 14b; do
  TPS=2 OUT="$WORK/tp" BENCH_TIMEOUT=$(left 10 150) bash scripts/gpu/tp.sh "bench$shape" > "$WORK/tp/phase2_$shape.log" 2>&1
  grep -E "exit code|throughput|Error|WARNING" "$WORK/tp/phase2_$shape.log" | tail -4
done

say summary
{ cat "$WORK/tp/gpu.txt" 2>/dev/null | head -4; tail -6 "$WORK/tp/phase2_14b.log"; echo; cat "$WORK/ladder/ladder/table.md" 2>/dev/null; } \
  | tee "$FINAL/summary.txt"
cp "$WORK/ladder/ladder/ladder.png" "$WORK/ladder/ladder/table.md" "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$WORK" . && say "done"
