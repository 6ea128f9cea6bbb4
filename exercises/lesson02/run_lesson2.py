"""Lesson 2 demo: chat with Qwen3 through transformers, greedy decoding written by hand.

    python exercises/lesson02/run_lesson2.py               # with your aios/
    python exercises/lesson02/run_lesson2.py --reference   # with solutions/aios/
    python exercises/lesson02/run_lesson2.py --model DIR --max-new-tokens 64 --prompt "..."

The test checkpoints have random weights: expect fluent-looking nonsense, not answers.
With a real Qwen3 directory (--model) the same code gives real replies.
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
    parser.add_argument("--prompt", default="Explain what a KV cache is in one sentence.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def run(model_dir: Path, prompt: str, max_new_tokens: int) -> None:
    import torch

    from aios.hf_baseline import chat_prompt, hf_greedy_generate, load_hf_model

    start = time.perf_counter()
    model, tokenizer = load_hf_model(model_dir)
    print(f"Loaded {model_dir} with transformers in {time.perf_counter() - start:.1f} s "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")

    text = chat_prompt(tokenizer, [{"role": "user", "content": prompt}])
    ids = tokenizer(text)["input_ids"]
    print(f"\nChat prompt ({len(ids)} tokens):\n{text!r}")

    start = time.perf_counter()
    generated = hf_greedy_generate(model, ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    seconds = time.perf_counter() - start
    print(f"\nReply ({len(generated)} tokens, {len(generated) / seconds:.1f} tok/s, no KV cache):")
    print(repr(tokenizer.decode(generated)))

    expected = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    same = expected[0, len(ids):].tolist() == generated
    print(f"\nSame tokens as model.generate(do_sample=False): {same}")


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
