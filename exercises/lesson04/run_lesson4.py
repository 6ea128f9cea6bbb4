"""Lesson 4 demo: the same greedy tokens with a KV cache, for a fraction of the work.

    python exercises/lesson04/run_lesson4.py               # with your aios/
    python exercises/lesson04/run_lesson4.py --reference   # with solutions/aios/
    python exercises/lesson04/run_lesson4.py --model DIR --max-new-tokens 64

Shows: generate_no_cache (lesson 3) and generate_with_cache agree token for token; the
tokens each loop pushes through the model; and how long one step takes at growing
lengths with and without the cache.
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
    parser.add_argument("--prompt", default="Explain in one paragraph why the sky is blue.")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


class CountingModel:
    """Forwards calls to the model and counts the tokens each forward is fed."""

    def __init__(self, model):
        self.model, self.config, self.fed = model, model.config, []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, positions):
        self.fed.append(len(input_ids))
        return self.model(input_ids, positions)

    def compute_logits(self, hidden):
        return self.model.compute_logits(hidden)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def decode_step_seconds(model, seq) -> float:
    """Prefill all but the last token of ``seq`` into a fresh cache, then time the decode step of the last."""
    import torch

    from aios.engine.kv_cache import GrowingKVCache
    from aios.utils.context import Context, using_context

    cache = GrowingKVCache(model.config.num_hidden_layers)
    prefix, last = torch.arange(len(seq) - 1), torch.tensor([len(seq) - 1])
    with using_context(Context(kv_cache=cache, positions=prefix)):
        model(seq[:-1], prefix)
    with using_context(Context(kv_cache=cache, positions=last)):
        return timed(lambda: model(seq[-1:], last))[1]


def run(model_dir: Path, prompt: str, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from aios.engine.kv_cache import GrowingKVCache
    from aios.generate import generate_no_cache, generate_with_cache
    from aios.utils.loader import load_qwen3

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_qwen3(model_dir, dtype=torch.float32)
    layers = model.config.num_hidden_layers
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text)["input_ids"]
    print(f"model: {model_dir.name}, {layers} layers; prompt: {len(ids)} tokens; {max_new_tokens} new tokens\n")

    slow, fast = CountingModel(model), CountingModel(model)
    plain, plain_s = timed(lambda: generate_no_cache(slow, ids, max_new_tokens))
    cached, cached_s = timed(lambda: generate_with_cache(fast, ids, max_new_tokens, GrowingKVCache(layers)))
    print(f"no cache (lesson 3):   {len(plain)} tokens in {plain_s:.2f} s = {len(plain) / plain_s:7.1f} tok/s, "
          f"{sum(slow.fed):>6} tokens fed to the model")
    print(f"KV cache (lesson 4):   {len(cached)} tokens in {cached_s:.2f} s = {len(cached) / cached_s:7.1f} tok/s, "
          f"{sum(fast.fed):>6} tokens fed ({fast.fed[0]} in the prefill, then {fast.fed[1:3]}...)")
    print(f"same tokens: {plain == cached}")
    print(f"  {tokenizer.decode(cached)!r}\n")

    print("One step at a given sequence length (ms):")
    print("  length   no cache   KV cache decode")
    vocab = len(tokenizer)
    with torch.inference_mode():
        for length in (64, 256, 1024):
            if length + 1 > model.config.max_position_embeddings:
                break
            seq = torch.randint(0, vocab, (length + 1,))
            full = min(timed(lambda: model(seq, torch.arange(length + 1)))[1] for _ in range(3))
            one = min(decode_step_seconds(model, seq) for _ in range(3))
            print(f"  {length:>6}   {1000 * full:8.1f}   {1000 * one:8.1f}")


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
