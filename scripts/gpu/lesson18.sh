#!/usr/bin/env bash
# Lesson 18 (quantization) on one GPU, in one call:
#   1. its tests (visible + hidden) on the GPU, reference engine, benchmark excluded
#      (the Triton INT8/INT4 kernels at Qwen3-8B shapes, each method generating on the GPU), and the
#      decode GEMV kernels' and FP8 W8A8's tests (tests/infra/test_quant_gemv.py, test_fp8_w8a8.py);
#   2. the GPU benchmark: batch-1 decode of the Qwen3-8B shape, INT8 and INT4 against bf16 (the
#      engine's QuantizedLinear sends decode steps to quant_gemv's GEMV kernels, each shape tuned on
#      its first call; the choices are in the benchmark JSON's extra_info);
#      FP8 W8A8 on the throughput workload (8B shape; fp8bench runs it alone): each FP8 matmul shape's
#      first call chooses between the Triton kernel ("dot") and cuBLAS's block-scaled FP8 matmul
#      (aios/layers/fp8_scaled_mm.py); the choices and timings are printed and in the JSON;
#   3. the FP8 KV cache (kvfp8): its GPU tests, then the headline workload on the Qwen3-0.6B shape
#      with kv_cache_dtype="fp8" against "auto" (target x1.3), twice: with the caches sized from free
#      memory (the workload fits either), and memory-bound (the same KV bytes for both, a quarter of
#      what the workload needs at bf16; the e4m3 cache gets twice the blocks); each step under its own timeout;
#   4. the matmul sweep (sweep; scripts/gpu/quant_sweep.py): bf16, the tl.dot kernels and every GEMV
#      setting at M = 1 and 4 on the 8B shapes, the tl.dot kernels at M = 256, FP8 W8A8.
#
#   bash scripts/gpu/lesson18.sh [all|tests|bench|fp8bench|kvfp8|kvbench|sweep]   # kvbench: kvfp8's benchmark alone   # results and logs under $OUT (default /tmp/aios_out)
#   (each step stays under 10 minutes; 'all' runs them one after the other)
#
# Files written to $OUT: gpu.txt, lesson18_tests.log, lesson18_benchmark.json (pytest-benchmark;
# the figures in extra_info), lesson18_bench.log, lesson18_fp8_cublas_tests.log, lesson18_fp8_bench.log,
# lesson18_fp8_benchmark.json (fp8bench), lesson18_kvfp8_tests.log, lesson18_kvfp8_bench.log,
# lesson18_kvfp8_benchmark.json, quant_sweep.json, quant_sweep.log.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
record_environment triton transformers

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "tests of lesson 18 on the GPU (benchmark excluded)"
  timeout 540 python3 -m pytest tests/lesson18 grader/hidden/lesson18 tests/infra/test_quant_gemv.py \
    tests/infra/test_fp8_w8a8.py tests/infra/test_fp8_scaled_mm.py -m "not benchmark_gpu" -q -rs -p no:cacheprovider \
    > "$OUT/lesson18_tests.log" 2>&1
  status=$?
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson18_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  section "lesson 18 GPU benchmark (batch-1 decode, Qwen3-8B shape)"
  timeout 500 python3 -m pytest tests/lesson18/test_l18_benchmark.py -m benchmark_gpu -k "not fp8_kv" -q -rs -s \
    -p no:cacheprovider --benchmark-json "$OUT/lesson18_benchmark.json" > "$OUT/lesson18_bench.log" 2>&1
  bench_status=$?
  [ $status = 0 ] && status=$bench_status
  grep -v "^$" "$OUT/lesson18_bench.log" | grep -v "FP8 W8A8 matmul" | tail -20
  grep "FP8 W8A8 matmul" "$OUT/lesson18_bench.log"
fi
if [ "$MODE" = fp8bench ]; then
  section "FP8 W8A8, throughput workload, Qwen3-8B shape: cuBLAS block-scaled path vs Triton, chosen per shape"
  timeout 200 python3 -m pytest tests/infra/test_fp8_scaled_mm.py -q -rs -s -p no:cacheprovider \
    > "$OUT/lesson18_fp8_cublas_tests.log" 2>&1
  fp8_status=$?
  [ $status = 0 ] && status=$fp8_status
  grep -E "M=[0-9]+ N=|tuning:|passed|failed|^FAILED|^ERROR|^E  " "$OUT/lesson18_fp8_cublas_tests.log" | tail -25
  timeout 380 python3 -m pytest tests/lesson18/test_l18_benchmark.py -m benchmark_gpu -k fp8_w8a8 -q -rs -s \
    -p no:cacheprovider --benchmark-json "$OUT/lesson18_fp8_benchmark.json" > "$OUT/lesson18_fp8_bench.log" 2>&1
  fp8_status=$?
  [ $status = 0 ] && status=$fp8_status
  grep -v "^$" "$OUT/lesson18_fp8_bench.log" | grep -v "FP8 W8A8 matmul" | tail -8
  grep "FP8 W8A8 matmul" "$OUT/lesson18_fp8_bench.log"
fi
if [ "$MODE" = all ] || [ "$MODE" = kvfp8 ] || [ "$MODE" = kvbench ]; then
 if [ "$MODE" != kvbench ]; then
  section "FP8 KV cache: GPU tests (store kernel, attention kernels, engine with graphs and prefix caching)"
  # the two timeouts add up to under the device tool's 10 minutes per call
  timeout 200 python3 -m pytest tests/lesson18/test_l18_kv_cache.py tests/lesson18/test_l18_gpu.py -k "fp8_kv or fp8_store \
    or fp8_cache or kv_cache" -q -rs -p no:cacheprovider > "$OUT/lesson18_kvfp8_tests.log" 2>&1
  kv_status=$?
  [ $status = 0 ] && status=$kv_status
  grep -E "passed|failed|^FAILED|^ERROR" "$OUT/lesson18_kvfp8_tests.log" | tail -20
 fi
  section "FP8 KV cache: headline workload, Qwen3-0.6B shape, kv_cache_dtype fp8 vs auto (target x1.3)"
  # kvbench alone gets 540 s (four 0.6B engines: free-memory and memory-bound, fp8 and auto); kvfp8 keeps 360 + 200
  KV_TIMEOUT=360; [ "$MODE" = kvbench ] && KV_TIMEOUT=540
  timeout $KV_TIMEOUT python3 -m pytest tests/lesson18/test_l18_benchmark.py -m benchmark_gpu -k fp8_kv -q -rs -s \
    -p no:cacheprovider --benchmark-json "$OUT/lesson18_kvfp8_benchmark.json" > "$OUT/lesson18_kvfp8_bench.log" 2>&1
  kv_status=$?
  [ $status = 0 ] && status=$kv_status
  grep -v "^$" "$OUT/lesson18_kvfp8_bench.log" | grep -v "FP8 KV cache, memory-bound" | tail -20
  grep "FP8 KV cache, memory-bound" "$OUT/lesson18_kvfp8_bench.log"
fi
if [ "$MODE" = all ] || [ "$MODE" = sweep ]; then
  section "lesson 18 matmul sweep (GEMV against bf16 and the tl.dot kernels, Qwen3-8B shapes)"
  timeout 500 python3 scripts/gpu/quant_sweep.py --json "$OUT/quant_sweep.json" > "$OUT/quant_sweep.log" 2>&1
  sweep_status=$?
  [ $sweep_status != 0 ] && echo "quant_sweep.py exited with $sweep_status (124: timed out; the JSON keeps what it measured)"
  grep -E "^M=|bf16|dispatch|tuning|->|took" "$OUT/quant_sweep.log" | head -80
fi
section done
exit $status
