"""Lesson 4 mutants: the growing KV cache and generation with a prefill then one token per step."""

from grader.mutants import Mutant

CACHE = "aios/engine/kv_cache.py"
GENERATE = "aios/generate.py"
APPEND = """\
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k])
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v])
        return causal_attention(q, self.keys[layer_idx], self.values[layer_idx], scale)
"""
STEP = """\
        input_ids = torch.tensor([next_token], device=device)
        positions = positions[-1:] + 1
"""

MUTANTS = [
    Mutant(4, "attends-to-the-new-tokens-only", CACHE,
           find=APPEND,
           replace=APPEND.replace("causal_attention(q, self.keys[layer_idx], self.values[layer_idx], scale)",
                                  "causal_attention(q, k, v, scale)"),
           bug="the cache stores K/V but attention uses only this step's k and v"),
    Mutant(4, "cache-overwritten-not-appended", CACHE,
           find=APPEND,
           replace=APPEND.replace("torch.cat([self.keys[layer_idx], k])", "k")
           .replace("torch.cat([self.values[layer_idx], v])", "v"),
           bug="each step replaces the layer's cached K/V instead of appending to them"),
    Mutant(4, "values-appended-from-keys", CACHE,
           find=APPEND,
           replace=APPEND.replace("torch.cat([self.values[layer_idx], v])", "torch.cat([self.values[layer_idx], k])"),
           bug="copy-paste: the new keys are appended to the value cache"),
    Mutant(4, "decode-position-not-advanced", GENERATE,
           find=STEP,
           replace=STEP.replace("positions = positions[-1:] + 1", "positions = positions[-1:]"),
           bug="the decode step reuses the previous token's position instead of the next one"),
    Mutant(4, "decode-position-counts-generated-only", GENERATE,
           find=STEP,
           replace=STEP.replace("positions = positions[-1:] + 1",
                                "positions = torch.tensor([len(generated)], device=device)"),
           bug="a decode step's position is the number of generated tokens, forgetting the prompt's length"),
    Mutant(4, "whole-sequence-fed-every-step", GENERATE,
           find=STEP,
           replace=("        input_ids = torch.tensor(list(prompt_ids) + generated, device=device)\n"
                    "        positions = torch.arange(len(input_ids), device=device)\n"),
           bug="every step feeds the whole sequence again, so the cache holds each token several times"),
    Mutant(4, "logits-of-the-first-row", GENERATE,
           find="        next_token = int(model.compute_logits(hidden[-1:]).argmax(dim=-1))\n        generated.append(next_token)\n"
                "        if next_token == eos_token_id:\n            break\n        input_ids",
           replace="        next_token = int(model.compute_logits(hidden[:1]).argmax(dim=-1))\n        generated.append(next_token)\n"
                   "        if next_token == eos_token_id:\n            break\n        input_ids",
           bug="the prefill's next token comes from the first prompt position instead of the last"),
    Mutant(4, "eos-not-returned", GENERATE,
           find="        generated.append(next_token)\n        if next_token == eos_token_id:\n            break\n        input_ids",
           replace="        if next_token == eos_token_id:\n            break\n        generated.append(next_token)\n        input_ids",
           bug="the eos check comes before the append: the eos id is never returned"),
    Mutant(4, "one-forward-too-many", GENERATE,
           find="    for _ in range(max_new_tokens):\n        with using_context(Context(kv_cache=kv_cache, positions=positions)):\n",
           replace="    for _ in range(max_new_tokens + 1):\n        if len(generated) == max_new_tokens:\n"
                   "            with using_context(Context(kv_cache=kv_cache, positions=positions)):\n"
                   "                model(input_ids, positions)\n            break\n"
                   "        with using_context(Context(kv_cache=kv_cache, positions=positions)):\n",
           bug="the last token is fed through the model once more after the final step (a wasted forward)"),
]
