#!/usr/bin/env bash
# Train the shipped tiny model (assets/aios-tiny-lm) on one GPU, about a minute a run:
#   bash scripts/gpu/train_tiny.sh
# runs `python -m aios train-tiny --size lm` for each step count of $TRAIN_TINY_STEPS
# (default: 400 600 900; each its own warm-up + cosine schedule) and prints greedy samples of
# each. Back in $OUT: the shared tokenizer.json, sSTEPS/model.safetensors and
# sSTEPS/training.json per run, train_tiny.log. The shipped one is the 600-step run (see
# docs/trained-model.md); its folder is the run's output as train-tiny writes it.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
set -o pipefail
record_environment transformers tokenizers > "$OUT/train_tiny.log"
for steps in ${TRAIN_TINY_STEPS:-400 600 900}; do
  section "train-tiny --steps $steps"
  timeout "${TRAIN_TINY_TIMEOUT:-170}" python3 -m aios train-tiny --size lm --device cuda --steps "$steps" \
    --out "/tmp/train_tiny/s$steps" --no-progress 2>&1 | grep -v "^step [1-9]00:" | tee -a "$OUT/train_tiny.log"
  mkdir -p "$OUT/s$steps" && cp /tmp/train_tiny/s$steps/{model.safetensors,training.json} "$OUT/s$steps/"
  cp "/tmp/train_tiny/s$steps/tokenizer.json" "$OUT/"
  python3 - "/tmp/train_tiny/s$steps" <<'PY' 2>&1 | grep -v "Loading weights" | tee -a "$OUT/train_tiny.log"
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
print("held-out curve:", [(h["step"], h["held_out_loss"]) for h in json.load(open(f"{path}/training.json"))["history"]])
tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
chats = ["Write a haiku about GPUs.", "Tell me something about work.", "Hello!"]
prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
           for c in chats] + ["Once upon a time", "The secret of life is"]
for p in prompts:
    ids = tok(p, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, do_sample=False)
    print(repr(p[-40:]), "->", repr(tok.decode(out[0, ids.shape[1]:])))
PY
done
