#!/usr/bin/env bash
# Lesson 15 on one GPU: `aios serve` with the 0.6b shape (random weights, --load-format dummy), then
# `aios bench-serve` against it at several concurrency levels. Results under $OUT (default /tmp/aios_out):
#   bench_c<N>.json / .log   one bench-serve run per concurrency N (summary + every request)
#   summary.txt              the table of all runs;  metrics.txt  GET /metrics after the runs
#   server.log, health.json, gpu.txt
#
#   bash scripts/gpu/serve.sh
#   PRESET=tiny CONCURRENCY="1 4" INPUT_LEN=32 OUTPUT_LEN=32 bash scripts/gpu/serve.sh   # a CPU dry run
#   SERVE_MODEL=/path/to/Qwen3-0.6B bash scripts/gpu/serve.sh   # a real checkpoint, its own weights and tokenizer
#
# Runs solutions/ (the reference engine). Needs fastapi and uvicorn (prometheus-client and httpx are
# in the GPU image): when fastapi is missing and .whl/ holds wheels, they are installed into /tmp/site.
set -u -o pipefail
source "$(dirname "$0")/common.sh"
PRESET=${PRESET:-0.6b}
CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
INPUT_LEN=${INPUT_LEN:-256}
OUTPUT_LEN=${OUTPUT_LEN:-256}
PORT=${PORT:-8765}

section environment
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
use_carried_wheels || exit 1
python3 -c "import torch, fastapi, uvicorn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'fastapi', fastapi.__version__, 'uvicorn', uvicorn.__version__)" \
  | tee -a "$OUT/gpu.txt"

if [ -n "${SERVE_MODEL:-}" ]; then
  MODEL=$SERVE_MODEL NAME=$(basename "$SERVE_MODEL") LOAD_FORMAT=safetensors
  section "checkpoint $MODEL (its own weights and tokenizer)"
else
  MODEL=/tmp/aios_serve_$PRESET NAME=qwen3-$PRESET LOAD_FORMAT=dummy
  section "checkpoint ($PRESET shape; the server uses random weights and reads only config.json and the tokenizer)"
  [ -f "$MODEL/config.json" ] || python3 -m aios make-model "$PRESET" "$MODEL" --force || exit 1
fi

section "aios serve on 127.0.0.1:$PORT"
python3 -m aios serve --model "$MODEL" --load-format "$LOAD_FORMAT" --port "$PORT" --served-model-name "$NAME" \
  --log-level warning > "$OUT/server.log" 2>&1 &
SERVER=$!
stop_server() { kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; }
trap stop_server EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 1 600); do
  python3 -c "import httpx, sys; sys.exit(httpx.get('$BASE/health', timeout=2).status_code != 200)" 2>/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || { echo "the server exited:"; cat "$OUT/server.log"; exit 1; }
  sleep 0.5
done
python3 -c "import httpx; print(httpx.get('$BASE/health', timeout=5).text)" | tee "$OUT/health.json"
head -5 "$OUT/server.log"

: > "$OUT/summary.txt"
for C in $CONCURRENCY; do
  N=$(( C * 4 )); [ "$N" -lt 16 ] && N=16; [ "$N" -gt 1024 ] && N=1024
  section "bench-serve: concurrency $C, $N requests, $INPUT_LEN prompt tokens, $OUTPUT_LEN output tokens"
  timeout 300 python3 -m aios bench-serve --base-url "$BASE" --model "$NAME" --tokenizer "$MODEL" \
    --num-prompts "$N" --max-concurrency "$C" --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" \
    --duration 240 --request-timeout 240 --no-progress --result-json "$OUT/bench_c$C.json" 2>&1 | tee "$OUT/bench_c$C.log"
  { echo "## concurrency $C ($N requests, in $INPUT_LEN / out $OUTPUT_LEN)"; grep -v "^wrote" "$OUT/bench_c$C.log"; echo; } \
    >> "$OUT/summary.txt"
done

section "GET /metrics"
python3 -c "import httpx; print(httpx.get('$BASE/metrics', timeout=10).text)" > "$OUT/metrics.txt"
grep -E "^aios_(requests_finished_total|generation_tokens_total|engine_errors|time_to_first_token_seconds_(sum|count))" \
  "$OUT/metrics.txt"
section done
