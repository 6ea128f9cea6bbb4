#!/usr/bin/env bash
# Everything that needs the 2-GPU machine, in one call of under 10 minutes:
#   phase 0, both GPUs: the lesson 14 NCCL test (TP=2 == TP=1)            [PHASE0=0 skips it];
#   phase 1, in parallel, one script per GPU:
#            GPU 0 runs GPU0_SCRIPT (default: `aios bench` on the Qwen3-8B and -14B shapes at TP=1),
#            GPU 1 runs GPU1_SCRIPT (default scripts/gpu/ladder.sh), e.g.
#            GPU0_SCRIPT=scripts/gpu/serve.sh GPU1_SCRIPT=scripts/gpu/lessons4to8.sh;
#            GPU0_ENV / GPU1_ENV add environment settings to each (e.g. GPU1_ENV='LESSONS="7 8"');
#   phase 2, both GPUs: `aios bench` at TP=2 on TP2_SHAPES (default "8b 14b"; "" skips it).
# Each step's timeout is cut to what is left of DEADLINE seconds (default 570), so the call
# ends in time and returns what it measured. Results: $OUT/results.tgz (every log and JSON,
# phase 1's under gpu0/ and gpu1/), $OUT/summary.txt, and a ladder's table.md / ladder.png.
#
#   bash scripts/gpu/x2_session.sh
set -u -o pipefail
cd "$(dirname "$0")/../.."
FINAL=${OUT:-/tmp/aios_out}
WORK=/tmp/aios_x2
DEADLINE=${DEADLINE:-570}
TP2_SHAPES=${TP2_SHAPES-"8b 14b"}
mkdir -p "$WORK/tp" "$WORK/gpu0" "$WORK/gpu1" "$FINAL"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
left() { local t=$(( DEADLINE - SECONDS - ${1:-0} )); [ "$t" -gt "${2:-100000}" ] && t=${2}; echo $(( t > 10 ? t : 10 )); }
say() { echo "=== $* (t=${SECONDS}s)"; }

if [ "${PHASE0:-1}" = 1 ]; then
  say "phase 0: NCCL test"
  OUT="$WORK/tp" timeout "${GPUTEST_TIMEOUT:-180}" bash scripts/gpu/tp.sh gputest > "$WORK/tp/phase0_test.log" 2>&1
  echo "exit code $?"; grep -E "passed|failed|FAILED|ERROR" "$WORK/tp/phase0_test.log" | tail -6
  pgrep -f "from multiprocessing.spawn import spawn_main" > /dev/null && echo "WARNING: a tensor-parallel worker outlived the test"
fi

# The default GPU 0 script: TP=1 benches of both shapes, each cut to the time left.
tp1_benches() {
  for shape in 8b 14b; do
    TPS=1 OUT="$WORK/gpu0" BENCH_TIMEOUT=$(left 200 150) bash scripts/gpu/tp.sh "bench$shape"
  done
}
PHASE1_TIMEOUT=$(left "${PHASE2_RESERVE:-300}" "${PHASE1_MAX:-300}")
GPU1_SCRIPT=${GPU1_SCRIPT:-scripts/gpu/ladder.sh}
say "phase 1 (${PHASE1_TIMEOUT}s): GPU 0 ${GPU0_SCRIPT:-TP=1 benches}, GPU 1 $GPU1_SCRIPT"
(export CUDA_VISIBLE_DEVICES=1 OUT="$WORK/gpu1" LADDER_TIMEOUT=$((PHASE1_TIMEOUT - 60)); eval "${GPU1_ENV:-}"
 timeout "$PHASE1_TIMEOUT" bash "$GPU1_SCRIPT" > "$WORK/gpu1/console.log" 2>&1) &
GPU1=$!
(export CUDA_VISIBLE_DEVICES=0 OUT="$WORK/gpu0"; eval "${GPU0_ENV:-}"
 if [ -n "${GPU0_SCRIPT:-}" ]; then timeout "$PHASE1_TIMEOUT" bash "$GPU0_SCRIPT"; else tp1_benches; fi \
   > "$WORK/gpu0/console.log" 2>&1)
wait $GPU1
say "phase 1 done"
for gpu in gpu0 gpu1; do echo "--- $gpu"; tail -25 "$WORK/$gpu/console.log"; done

say "phase 2: TP=2 benches ($TP2_SHAPES)"
for shape in $TP2_SHAPES; do
  TPS=2 OUT="$WORK/tp" BENCH_TIMEOUT=$(left 10 150) bash scripts/gpu/tp.sh "bench$shape" > "$WORK/tp/phase2_$shape.log" 2>&1
  grep -E "exit code|throughput|Error|WARNING" "$WORK/tp/phase2_$shape.log" | tail -4
done

say summary
{ cat "$WORK/tp/gpu.txt" 2>/dev/null | head -4
  for shape in $TP2_SHAPES; do tail -6 "$WORK/tp/phase2_$shape.log"; done; echo
  cat "$WORK"/gpu*/ladder/table.md "$WORK"/gpu*/*summary*.txt 2>/dev/null; } | tee "$FINAL/summary.txt"
cp "$WORK"/gpu*/ladder/ladder.png "$WORK"/gpu*/ladder/table.md "$FINAL/" 2>/dev/null
tar czf "$FINAL/results.tgz" -C "$WORK" . && say "done"
