"""Lesson 5 demo: a KV cache allocated once, and RMSNorm fused with the residual add.

    python exercises/lesson05/run_lesson5.py               # with your aios/
    python exercises/lesson05/run_lesson5.py --reference   # with solutions/aios/
    python exercises/lesson05/run_lesson5.py --model DIR --max-new-tokens 64

Shows: lesson 4's growing cache and lesson 5's static cache give the same tokens; how many
times each one allocates and how many bytes the growing one copies; and that the fused
model's logits equal the unfused model's.
"""

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--prompt", default="List three facts about the moon.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


class StorageWatch:
    """Passes attend() through to a cache and counts how often layer 0's keys move to a new tensor."""

    def __init__(self, cache, keys_of):
        self.cache, self.keys_of, self.last, self.moves = cache, keys_of, None, 0

    def attend(self, layer_idx, q, k, v, context, scale):
        out = self.cache.attend(layer_idx, q, k, v, context, scale)
        if layer_idx == 0:
            where = self.keys_of(self.cache, 0).data_ptr()
            self.moves += self.last is not None and where != self.last
            self.last = where
        return out


def run(model_dir: Path, prompt: str, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from aios.engine.kv_cache import GrowingKVCache, StaticKVCache
    from aios.generate import generate_with_cache
    from aios.utils.loader import load_qwen3

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    unfused = load_qwen3(model_dir, dtype=torch.float32)
    fused = load_qwen3(model_dir, dtype=torch.float32, fuse_residual_norm=True)
    config = unfused.config
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text)["input_ids"]
    n, m = len(ids), max_new_tokens
    print(f"model: {model_dir.name}; prompt {n} tokens, {m} new tokens\n")

    growing = StorageWatch(GrowingKVCache(config.num_hidden_layers), lambda c, i: c.keys[i])
    start = time.perf_counter()
    lesson4 = generate_with_cache(unfused, ids, m, growing)
    growing_s = time.perf_counter() - start
    static = StorageWatch(StaticKVCache.for_model(fused, n + m), lambda c, i: c.k)
    start = time.perf_counter()
    lesson5 = generate_with_cache(fused, ids, m, static)
    static_s = time.perf_counter() - start

    row_bytes = 2 * config.num_key_value_heads * config.head_dim * 4  # K and V, float32
    copied = sum(length for length in range(n, n + m - 1)) * row_bytes * config.num_hidden_layers
    print(f"growing cache (lesson 4): {m / growing_s:7.1f} tok/s; layer 0's keys moved to a new tensor "
          f"{growing.moves} times; ~{copied / 2**20:.1f} MiB copied by torch.cat")
    print(f"static cache  (lesson 5): {m / static_s:7.1f} tok/s; layer 0's keys moved {static.moves} times; "
          f"{static.cache.k.numel() * 2 * 4 / 2**20:.2f} MiB allocated once, nothing copied")
    print(f"same tokens: {lesson4 == lesson5}")
    print(f"  {tokenizer.decode(lesson5)!r}\n")

    with torch.inference_mode():
        tokens, positions = torch.tensor(ids), torch.arange(n)
        diff = (fused.compute_logits(fused(tokens, positions)) - unfused.compute_logits(unfused(tokens, positions)))
    print(f"fused residual norm: largest |logit difference| to the unfused model = {diff.abs().max():.2e}")


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    try:
        run(args.model or trained_model(), args.prompt, args.max_new_tokens)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
