#!/usr/bin/env bash
# Lesson 21 (pipeline parallelism) on a box with 2 GPUs, in one call of under 10 minutes:
#   tests     the lesson 21 suites (visible + hidden, gloo on the CPU) and tests/lesson21/test_l21_gpu.py's
#             NCCL checks: PP=2 over 2 GPUs gives 1 GPU's fp32 logits and greedy tokens (small model, and
#             tiny-moe with the Triton fused-MoE kernel);
#   torchrun  two `torchrun --nnodes 2` launches on this machine (one GPU each, c10d rendezvous on
#             loopback) serving `aios serve --pipeline-parallel-size 2`: one completion, then SIGINT;
#   bench     `python -m aios bench` (headline workload, random weights) on the Qwen3-14B and Qwen3-32B
#             shapes at PP=2 and at TP=2, one JSON each, and a summary table.
#
#   bash scripts/gpu/lesson21.sh [all|tests|torchrun|bench|bench14b|bench32b]   # results under $OUT
#   BENCH_FLAGS="--num-requests 64 --profile" bash scripts/gpu/lesson21.sh bench14b   # a shorter workload, a profile
#   LAYOUTS=pp2 bash scripts/gpu/lesson21.sh bench32b                                   # one layout only
#
# Files written to $OUT: gpu.txt, lesson21_tests.log, lesson21_torchrun_node{0,1}.log,
# lesson21_completion.json, bench_{14b,32b}_{pp2,tp2}.{json,log}, lesson21_summary.md.
# What must show: tests "passed" with no failure (the GPU test not skipped); torchrun: a completion JSON
# and both launches ending after SIGINT; bench: four JSONs and the PP/TP ratios in lesson21_summary.md.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
MODE=${1:-all}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
record_environment transformers
use_carried_wheels || echo "no server packages: the torchrun serving step will fail"
GPUS=$(python3 -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 2 ]; then echo "lesson21.sh needs 2 GPUs, torch sees $GPUS"; exit 1; fi
status=0

if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  section "lesson 21 tests (gloo on the CPU, NCCL on 2 GPUs; throughput benchmark excluded)"
  timeout 420 python3 -m pytest tests/lesson21 grader/hidden/lesson21 -m "not benchmark_gpu" -q -rs \
    -p no:cacheprovider -o console_output_style=classic > "$OUT/lesson21_tests.log" 2>&1
  status=$?
  echo "exit code $status"; grep -E "passed|failed|^FAILED|^ERROR|SKIPPED" "$OUT/lesson21_tests.log" | tail -20
fi

if [ "$MODE" = all ] || [ "$MODE" = torchrun ]; then
  section "two torchrun 'nodes' on this machine (one GPU each) serving PP=2"
  MODEL=/tmp/aios_small
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model small "$MODEL" --force > /dev/null
  PORT=$((29000 + RANDOM % 1000)); HTTP=$((18000 + RANDOM % 1000))
  PIDS=()
  for node in 0 1; do
    CUDA_VISIBLE_DEVICES=$node timeout 240 torchrun --nnodes 2 --nproc-per-node 1 --node-rank $node \
      --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:$PORT --rdzv-id "aios-l21-$PORT" --max-restarts 0 \
      -m aios serve --model "$MODEL" --pipeline-parallel-size 2 --max-model-len 512 --port $HTTP \
      > "$OUT/lesson21_torchrun_node$node.log" 2>&1 &
    PIDS+=($!)
  done
  for _ in $(seq 1 120); do curl -sf "localhost:$HTTP/v1/models" > /dev/null && break; sleep 1; done
  curl -s "localhost:$HTTP/v1/completions" -H 'content-type: application/json' \
    -d '{"model": "aios_small", "prompt": "Pipeline stages", "max_tokens": 16, "temperature": 0}' \
    | tee "$OUT/lesson21_completion.json"; echo
  grep -q '"completion_tokens":16' "$OUT/lesson21_completion.json" || { echo "no completion"; status=1; }
  kill -INT "${PIDS[@]}" 2> /dev/null
  for pid in "${PIDS[@]}"; do wait "$pid"; echo "launch $pid exit code $?"; done
  grep -hE "serving|Error|error" "$OUT"/lesson21_torchrun_node*.log | tail -6
fi

# A config-only checkpoint of a real shape: one layer of weights written, the real layer count in config.json.
shape_checkpoint() {
  local preset=$1 dir=/tmp/aios_shape_$1
  if [ ! -f "$dir/config.json" ]; then
    python3 -m aios make-model "$preset" "$dir" --force --set num_hidden_layers=1 > /dev/null 2>&1 || return 1
    python3 - "$dir" "$preset" <<'PY' || return 1
import json, sys
from aios.fixtures import PRESETS
path = f"{sys.argv[1]}/config.json"
config = json.load(open(path))
config["num_hidden_layers"] = PRESETS[sys.argv[2]]["num_hidden_layers"]
json.dump(config, open(path, "w"), indent=2)
PY
  fi
  echo "$dir"
}

bench_shape() {
  local preset=$1 model
  model=$(shape_checkpoint "$preset") || { echo "could not write the $preset checkpoint"; return 1; }
  for layout in "pp2:--pipeline-parallel-size 2" "tp2:--tensor-parallel-size 2"; do
    local name=${layout%%:*} flags=${layout#*:}
    [[ " ${LAYOUTS:-pp2 tp2} " == *" $name "* ]] || continue
    section "python -m aios bench, Qwen3-$preset shape, ${name^^}"
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-200}" python3 -m aios bench --model "$model" $flags ${BENCH_FLAGS:-} --no-progress \
      --json "$OUT/bench_${preset}_${name}.json" > "$OUT/bench_${preset}_${name}.log" 2>&1
    echo "exit code $?"; grep -E "engine ready|throughput|decode profile|Error|error" "$OUT/bench_${preset}_${name}.log" | tail -4
  done
}

case "$MODE" in
  all|bench) bench_shape 14b; bench_shape 32b ;;
  bench14b) bench_shape 14b ;;
  bench32b) bench_shape 32b ;;
esac

if ls "$OUT"/bench_*_pp2.json > /dev/null 2>&1; then
  python3 - "$OUT" <<'PY' | tee "$OUT/lesson21_summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print("| shape | PP=2 tok/s | TP=2 tok/s | PP/TP |\n|---|---:|---:|---:|")
for preset in ("14b", "32b"):
    runs = {}
    for name in ("pp2", "tp2"):
        path = out / f"bench_{preset}_{name}.json"
        runs[name] = json.loads(path.read_text())["output_tokens_per_second"] if path.is_file() else None
    pp, tp = runs["pp2"], runs["tp2"]
    ratio = f"x{pp / tp:.2f}" if pp and tp else "-"
    print(f"| Qwen3-{preset} | {pp or '-'} | {tp or '-'} | {ratio} |")
PY
fi
section done
exit $status
