"""Lesson 3 demo: our own Qwen3 module, loaded straight from safetensors, against transformers.

    python exercises/lesson03/run_lesson3.py               # with your aios/
    python exercises/lesson03/run_lesson3.py --reference   # with solutions/aios/
    python exercises/lesson03/run_lesson3.py --model DIR --max-new-tokens 64

Shows: the largest logit difference to transformers (loaded with your lesson 2 code,
``aios.hf_baseline``), identical greedy tokens, and how the cost of each step grows with
the sequence when nothing is cached (lesson 4's motivation).
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
    parser.add_argument("--prompt", default="Write a haiku about GPUs.")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def run(model_dir: Path, prompt: str, max_new_tokens: int) -> None:
    import torch

    from aios.generate import generate_no_cache
    from aios.hf_baseline import chat_prompt, load_hf_model
    from aios.utils.loader import load_qwen3

    start = time.perf_counter()
    ours = load_qwen3(model_dir, dtype=torch.float32)
    print(f"load_qwen3: {time.perf_counter() - start:.2f} s, "
          f"{sum(p.numel() for p in ours.parameters()):,} parameters, no transformers model code")
    hf, tokenizer = load_hf_model(model_dir)  # lesson 2's code: the transformers model to compare with

    ids = tokenizer(chat_prompt(tokenizer, [{"role": "user", "content": prompt}]))["input_ids"]
    with torch.no_grad():
        our_logits = ours.compute_logits(ours(torch.tensor(ids), torch.arange(len(ids))))
        hf_logits = hf(torch.tensor([ids]), use_cache=False).logits[0]
    print(f"\nLogits on a {len(ids)}-token prompt: largest |ours - transformers| = "
          f"{(our_logits - hf_logits).abs().max():.2e} (values up to {hf_logits.abs().max():.1f})")

    start = time.perf_counter()
    generated = generate_no_cache(ours, ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    seconds = time.perf_counter() - start
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    print(f"\ngenerate_no_cache: {len(generated)} tokens at {len(generated) / seconds:.1f} tok/s")
    print(f"  {tokenizer.decode(generated)!r}")
    print(f"  same tokens as transformers' generate: {expected[0, len(ids):].tolist() == generated}")

    print("\nWithout a cache every step re-reads the whole sequence:")
    for length in (64, 128, 256, 512):
        seq = torch.randint(0, len(tokenizer), (length,))
        timings = []
        with torch.no_grad():
            for _ in range(4):  # the first run warms up; keep the fastest of the rest
                start = time.perf_counter()
                ours(seq, torch.arange(length))
                timings.append(time.perf_counter() - start)
        print(f"  one step at length {length:>4}: {1000 * min(timings[1:]):7.1f} ms")


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
