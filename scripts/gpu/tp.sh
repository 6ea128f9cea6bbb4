#!/usr/bin/env bash
# Lesson 14 on a box with 2 GPUs: is TP=2 right, and how fast is it?
#
#   bash scripts/gpu/tp.sh [all|tests|gputest|bench|bench8b|bench14b]   # results and logs under $OUT (default /tmp/aios_out)
#   TPS=1 CUDA_VISIBLE_DEVICES=0 bash scripts/gpu/tp.sh bench               # only the TP=1 runs, on one GPU
#   BENCH_FLAGS="--profile" TPS=2 bash scripts/gpu/tp.sh bench14b           # extra `aios bench` flags
#
#   gputest   only tests/lesson14/test_l14_gpu.py (the NCCL check; the gloo tests run in CI)
#   tests     the lesson 14 suites (visible + hidden; reference engine): the CPU gloo tests and
#             tests/lesson14/test_l14_gpu.py, which checks that TP=2 over NCCL (Triton attention,
#             CUDA-graph decode) gives the logits and greedy tokens of TP=1 (fp32, small model).
#   bench*    `python -m aios bench` (the headline workload: 256 requests, prompts and outputs of
#             100-1024 tokens, engine defaults) on the Qwen3-8B and Qwen3-14B shapes, at TP=1 and
#             TP=2; one JSON per run under $OUT and a summary table at the end.
#
# NVLink multicast (NVLS) stays off: the lent machines do not support it reliably.
# The benchmark checkpoints hold config.json and the tokenizer of the real shapes but the weights
# of a single layer (fast to write): `aios bench` uses load_format="dummy" and never reads them.
# Each step has its own timeout so that a hang ends the step, not the whole call.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
TPS=${TPS:-"1 2"}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

section environment
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
nvidia-smi topo -m >> "$OUT/gpu.txt" 2>&1
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
python3 -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())" | tee -a "$OUT/gpu.txt"
NEED=1; case "$MODE $TPS" in *test*|*2*) NEED=2 ;; esac
if [ "$GPUS" -lt "$NEED" ]; then echo "tp.sh ($MODE, TP in $TPS) needs $NEED GPUs, torch sees $GPUS"; exit 1; fi

# A config-only checkpoint of a real shape: one layer of weights written, the real layer count in config.json.
shape_checkpoint() {
  local preset=$1 dir=/tmp/aios_shape_$1
  if [ ! -f "$dir/config.json" ]; then
    python3 -m aios make-model "$preset" "$dir" --force --set num_hidden_layers=1 > /dev/null 2>&1 || return 1
    python3 - "$dir" "$preset" <<'EOF' || return 1
import json, sys
from aios.fixtures import PRESETS
path = f"{sys.argv[1]}/config.json"
config = json.load(open(path))
config["num_hidden_layers"] = PRESETS[sys.argv[2]]["num_hidden_layers"]
json.dump(config, open(path, "w"), indent=2)
EOF
  fi
  echo "$dir"
}

bench_shape() {
  local preset=$1 model
  model=$(shape_checkpoint "$preset") || { echo "could not write the $preset checkpoint"; return 1; }
  for tp in $TPS; do
    section "python -m aios bench, Qwen3-$preset shape, TP=$tp"
    timeout "${BENCH_TIMEOUT:-280}" python3 -m aios bench --model "$model" --tensor-parallel-size "$tp" --no-progress ${BENCH_FLAGS:-} \
      --json "$OUT/bench_${preset}_tp${tp}.json" > "$OUT/bench_${preset}_tp${tp}.log" 2>&1
    echo "exit code $?"; grep -E "engine ready|throughput|Error|error" "$OUT/bench_${preset}_tp${tp}.log" | tail -4
    pgrep -f "from multiprocessing.spawn import spawn_main" > /dev/null && echo "WARNING: a tensor-parallel worker outlived its driver"
  done
}

if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "lesson 14 tests (gloo on the CPU, NCCL on 2 GPUs)"
  timeout 400 python3 -m pytest tests/lesson14 grader/hidden/lesson14 -q -rs -p no:cacheprovider \
    -o console_output_style=classic > "$OUT/tp_tests.log" 2>&1
  echo "exit code $?"; grep -E "passed|failed|^FAILED|^ERROR|SKIPPED" "$OUT/tp_tests.log" | tail -25
fi

if [ "$MODE" = gputest ]; then
  section "lesson 14 NCCL test (TP=2 == TP=1 on 2 GPUs)"
  timeout 300 python3 -m pytest tests/lesson14/test_l14_gpu.py -q -rs -p no:cacheprovider \
    -o console_output_style=classic > "$OUT/tp_gputest.log" 2>&1
  echo "exit code $?"; grep -E "passed|failed|^FAILED|^ERROR|SKIPPED" "$OUT/tp_gputest.log" | tail -25
fi

case "$MODE" in
  all|bench) bench_shape 8b; bench_shape 14b ;;
  bench8b) bench_shape 8b ;;
  bench14b) bench_shape 14b ;;
esac

if [ "$MODE" != tests ] && [ "$MODE" != gputest ]; then
  section summary
  python3 - "$OUT" <<'EOF'
import glob, json, os, sys
rows = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*_tp*.json"))):
    preset, tp = os.path.basename(path)[len("bench_"):-len(".json")].rsplit("_tp", 1)
    rows.setdefault(preset, {})[int(tp)] = json.load(open(path))["output_tokens_per_second"]
print(f"{'shape':>8} {'TP=1 tok/s':>12} {'TP=2 tok/s':>12} {'TP=2 / TP=1':>12}")
for preset, by_tp in rows.items():
    one, two = by_tp.get(1), by_tp.get(2)
    ratio = f"{two / one:.2f}x" if one and two else "-"
    print(f"{preset:>8} {one or '-':>12} {two or '-':>12} {ratio:>12}")
EOF
fi
section done
