#!/usr/bin/env bash
# The advanced track (lessons 17, 19, 20 and 21) on the 2-GPU machine, in calls of under 10 minutes:
#
#   bash scripts/gpu/x2_advanced.sh tests   # phase A, side by side: lesson 21's suites (gloo + NCCL on both
#                                           # GPUs) | GPU 0: lesson 17's then lesson 20's suites | GPU 1:
#                                           # lesson 19's suites; phase B: lesson 21's two torchrun "nodes"
#                                           # serving PP=2, then `aios bench` on the 14B shape at PP=2 and TP=2
#   bash scripts/gpu/x2_advanced.sh bench   # phase A: `aios bench` (64 requests) on the 14B shape (with a
#                                           # decode profile) and the 32B shape at PP=2 and TP=2; phase B,
#                                           # side by side: GPU 0: lesson 17's benchmark | GPU 1: lesson
#                                           # 20's kernel benchmark, then lesson 19's benchmark
#
#   bash scripts/gpu/x2_advanced.sh pp      # lesson 21's NCCL tests, then PP=2 alone on the 14B and 32B shapes
#   bash scripts/gpu/x2_advanced.sh profile15   # issue 15's measurements: GPU 0 lesson 17's benchmark, aios bench sync
#                                           # and async with decode profiles | GPU 1 --compare-hf 32, TP=1 14B profiled;
#                                           # then TP=2 on the 14B shape with a decode profile
#   bash scripts/gpu/x2_advanced.sh final15     # GPU 0: lesson 17's sync test, ladder 16 vs 17 | GPU 1: the dense
#                                           # GEMV's tests, batch-1 with it off and on, the headline
#   bash scripts/gpu/x2_advanced.sh check15     # GPU 0: lesson 18's batch-1 benchmark | GPU 1: lessons 12, 13, 17 suites
#   bash scripts/gpu/x2_advanced.sh check18     # GPU 0: lesson 18's GPU tests | GPU 1: lesson 16's suites
#   bash scripts/gpu/x2_advanced.sh quant2      # GPU 0: lesson 18's fp8bench | GPU 1: kvbench, then lesson 16's
#                                           # mixed-step profile (scripts/gpu/mixed_step_profile.py)
#   bash scripts/gpu/x2_advanced.sh quant   # GPU 0: lesson 18's batch-1 benchmark, the FP8 KV cache headline |
#                                           # GPU 1: lesson 19's benchmark (short sweep), lesson 18's GPU tests
#
# Every step's timeout is cut to what is left of DEADLINE seconds (default 570). Each script writes
# under $OUT/<name>/ (its own gpu.txt, logs, JSON); $OUT/summary.txt collects the tails.
set -u -o pipefail
cd "$(dirname "$0")/../.."
PART=${1:-tests}
FINAL=${OUT:-/tmp/aios_out}
DEADLINE=${DEADLINE:-570}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$FINAL"
# left [RESERVE [CAP]]: seconds to DEADLINE minus RESERVE, at most CAP, at least 10.
left() { local t=$(( DEADLINE - SECONDS - ${1:-0} )); [ "$t" -gt "${2:-100000}" ] && t=${2}; echo $(( t > 10 ? t : 10 )); }
say() { echo "=== $* (t=${SECONDS}s)" | tee -a "$FINAL/summary.txt"; }

# kill_tree SIGNAL PID: send SIGNAL to PID and every process below it.
kill_tree() {
  local child
  for child in $(pgrep -P "$2"); do kill_tree "$1" "$child"; done
  kill -"$1" "$2" 2> /dev/null
}

# step NAME TIMEOUT [ENV=VALUE...] -- COMMAND...: run COMMAND with OUT=$FINAL/NAME, its log in NAME.log.
step() {
  local name=$1 limit=$2; shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  mkdir -p "$FINAL/$name"
  # At the limit the whole process tree is killed (not just the direct child): a nested `timeout` runs in
  # its own process group, and a spawned rank must not outlive the step and hold a GPU while the next one measures.
  env OUT="$FINAL/$name" "${envs[@]}" "$@" > "$FINAL/$name.log" 2>&1 &
  local pid=$!
  # The watchdog writes nowhere: a sleep left holding the call's stdout would keep the device call open.
  ( sleep "$limit"; kill_tree TERM "$pid"; sleep 10; kill_tree KILL "$pid" ) > /dev/null 2>&1 < /dev/null &
  local watchdog=$!
  wait "$pid"
  local rc=$?
  kill_tree KILL "$watchdog"
  pkill -KILL -g "$pid" 2> /dev/null
  { echo "--- $name: exit code $rc"; grep -vE "^\s*$" "$FINAL/$name.log" | tail -12; } >> "$FINAL/summary.txt"
  return $rc
}

if [ "$PART" = tests ]; then
  say "phase A: suites side by side"
  A=$(left 240 300)
  step l21_tests "$A" -- bash scripts/gpu/lesson21.sh tests &
  ( step l17_tests "$A" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson17.sh tests
    step l20_tests "$(left 240 300)" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson20.sh tests ) &
  step l19_tests "$A" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/lesson19.sh tests &
  wait
  say "phase B: torchrun serving, then PP=2 and TP=2 on the 14B shape"
  step l21_torchrun "$(left 150 150)" -- bash scripts/gpu/lesson21.sh torchrun
  step l21_bench14b "$(left 0 320)" BENCH_TIMEOUT="$(( $(left 0 320) / 2 ))" -- bash scripts/gpu/lesson21.sh bench14b
elif [ "$PART" = bench ]; then
  say "phase A: PP=2 and TP=2 on the 14B shape (64 requests, with a decode profile) and the 32B shape (64 requests)"
  step l21_bench14b "$(left 330 150)" BENCH_TIMEOUT=72 BENCH_FLAGS="--num-requests 64 --profile" -- bash scripts/gpu/lesson21.sh bench14b
  step l21_bench32b "$(left 300 130)" BENCH_TIMEOUT=64 BENCH_FLAGS="--num-requests 64" -- bash scripts/gpu/lesson21.sh bench32b
  say "phase B: single-GPU benchmarks side by side"
  B=$(left 5)
  step l17_bench "$B" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson17.sh bench &
  ( step l20_bench "$(( B / 2 ))" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/lesson20.sh bench
    step l19_bench "$(left 5)" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/lesson19.sh bench ) &
  wait
elif [ "$PART" = pp ]; then
  say "lesson 21's NCCL tests, then PP=2 on the 14B (64 requests, with a decode profile) and 32B shapes"
  step l21_gpu_tests "$(left 190 110)" AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" PYTHONSAFEPATH=1 \
    HF_HUB_OFFLINE=1 -- python3 -m pytest tests/lesson21/test_l21_gpu.py -m "not benchmark_gpu" \
    -q -rs -p no:cacheprovider
  step l21_pp14b "$(left 40 160)" LAYOUTS=pp2 BENCH_TIMEOUT=120 BENCH_FLAGS="--num-requests 64 --profile" \
    -- bash scripts/gpu/lesson21.sh bench14b
  step l21_pp32b "$(left 5 150)" LAYOUTS=pp2 BENCH_TIMEOUT=100 BENCH_FLAGS="--num-requests 64" \
    -- bash scripts/gpu/lesson21.sh bench32b
elif [ "$PART" = profile15 ]; then
  say "phase A, side by side: GPU 0 lesson 17's benchmark test, aios bench sync/async with decode profiles | GPU 1 aios bench --compare-hf 32, then TP=1 on the 14B shape with a decode profile"
  A=$(left 200 340)
  step l17_bench "$A" CUDA_VISIBLE_DEVICES=0 LADDER=0 BENCH_FLAGS=--profile -- bash scripts/gpu/lesson17.sh bench &
  ( step compare_hf 200 CUDA_VISIBLE_DEVICES=1 -- bash -c 'source scripts/gpu/common.sh; M=/tmp/aios_q06;
      [ -f $M/config.json ] || python3 -m aios make-model 0.6b $M --force > /dev/null;
      python3 -m aios bench --model $M --compare-hf 32 --no-progress --json "$OUT/bench_compare_hf.json"'
    step tp1_14b "$(left 210 150)" CUDA_VISIBLE_DEVICES=1 TPS=1 BENCH_TIMEOUT=140 BENCH_FLAGS=--profile \
      -- bash scripts/gpu/tp.sh bench14b ) &
  wait
  say "phase B: TP=2 on the 14B shape with a decode profile"
  step tp2_14b "$(left 5 200)" TPS=2 BENCH_TIMEOUT="$(left 15 190)" BENCH_FLAGS=--profile -- bash scripts/gpu/tp.sh bench14b
elif [ "$PART" = final15 ]; then
  say "side by side: GPU 0 lesson 17's no-sync test of sampled steps, then the ladder's stages 16 and 17 | GPU 1 the dense GEMV's GPU tests, then batch-1 with it off and on and the headline"
  ( step l17_sync "$(left 380 150)" CUDA_VISIBLE_DEVICES=0 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" \
      PYTHONSAFEPATH=1 -- python3 -m pytest tests/lesson17/test_l17_gpu_sync.py -q -rs -p no:cacheprovider
    step ladder17 "$(left 5)" CUDA_VISIBLE_DEVICES=0 -- bash -c 'source scripts/gpu/common.sh; M=/tmp/aios_q06;
      [ -f $M/config.json ] || python3 -m aios make-model 0.6b $M --force > /dev/null;
      python3 -m aios.bench.ladder --ladder --model $M --stages 16,17 --out "$OUT/ladder17"' ) &
  ( step gemv_tests "$(left 330 200)" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/dense_gemv.sh tests
    step gemv_bench "$(left 5)" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/dense_gemv.sh bench ) &
  wait
elif [ "$PART" = check15 ]; then
  say "side by side: GPU 0 lesson 18's batch-1 benchmark (INT8/INT4 against bf16, now with the dense GEMV) | GPU 1 the GPU suites of lessons 12, 13 and 17 (sampler, graphs, overlap)"
  step l18_batch1 "$(left 5)" CUDA_VISIBLE_DEVICES=0 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" PYTHONSAFEPATH=1 \
    -- python3 -m pytest tests/lesson18/test_l18_benchmark.py -m benchmark_gpu -k batch1 -q -rs -s -p no:cacheprovider &
  step suites_12_13_17 "$(left 5)" CUDA_VISIBLE_DEVICES=1 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" \
    PYTHONSAFEPATH=1 -- python3 -m pytest tests/lesson12 grader/hidden/lesson12 tests/lesson13 grader/hidden/lesson13 \
    tests/lesson17 grader/hidden/lesson17 -m "not benchmark_gpu" -q -rs -p no:cacheprovider -x &
  wait
elif [ "$PART" = check18 ]; then
  say "side by side: GPU 0 lesson 18's GPU tests (FP8 on cuBLAS, GEMV, FP8 KV) | GPU 1 lesson 16's suites on the GPU"
  step l18_gpu "$(left 5)" CUDA_VISIBLE_DEVICES=0 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" PYTHONSAFEPATH=1 \
    -- python3 -m pytest tests/lesson18 grader/hidden/lesson18 -m "gpu and not benchmark_gpu" -q -rs -p no:cacheprovider &
  step l16_suites "$(left 5)" CUDA_VISIBLE_DEVICES=1 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" PYTHONSAFEPATH=1 \
    -- python3 -m pytest tests/lesson16 grader/hidden/lesson16 -m "not benchmark_gpu" -q -rs -p no:cacheprovider &
  wait
elif [ "$PART" = quant2 ]; then
  say "side by side: GPU 0 lesson 18's fp8bench (cuBLAS FP8 tests, W8A8 throughput) | GPU 1 kvbench (free and memory-bound FP8 KV), then lesson 16's mixed-step profile"
  step l18_fp8bench "$(left 5)" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson18.sh fp8bench &
  ( step l18_kvbench "$(left 110)" CUDA_VISIBLE_DEVICES=1 -- bash scripts/gpu/lesson18.sh kvbench
    step mixed_step "$(left 5)" CUDA_VISIBLE_DEVICES=1 -- bash -c 'source scripts/gpu/common.sh; M=/tmp/aios_q06;
      [ -f $M/config.json ] || python3 -m aios make-model 0.6b $M --force > /dev/null;
      python3 scripts/gpu/mixed_step_profile.py --model $M --json "$OUT/mixed_step.json"' ) &
  wait
elif [ "$PART" = quant ]; then
  say "side by side: GPU 0 lesson 18's batch-1 benchmark, then the FP8 KV cache headline | GPU 1 lesson 19's benchmark (short sweep), then lesson 18's GPU tests"
  ( step l18_bench "$(left 60 210)" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson18.sh bench
    step l18_kvbench "$(left 5)" CUDA_VISIBLE_DEVICES=0 -- bash scripts/gpu/lesson18.sh kvbench ) &
  ( step l19_bench "$(left 90 170)" CUDA_VISIBLE_DEVICES=1 AIOS_SPEC_BATCHES=1,4 AIOS_SPEC_SIGMAS=0,0.02 \
      -- bash scripts/gpu/lesson19.sh bench
    step l18_gpu_tests "$(left 5)" CUDA_VISIBLE_DEVICES=1 AIOS_IMPL=reference PYTHONPATH="$PWD/solutions" \
      PYTHONSAFEPATH=1 -- python3 -m pytest tests/lesson18/test_l18_gpu.py tests/lesson18/test_l18_kv_cache.py \
      tests/infra/test_quant_gemv.py -m "not benchmark_gpu" -q -rs -p no:cacheprovider ) &
  wait
fi
say done
tar -C "$FINAL" -czf /tmp/x2_results.tgz . && mv /tmp/x2_results.tgz "$FINAL/results.tgz"
cat "$FINAL/summary.txt" | tail -120
