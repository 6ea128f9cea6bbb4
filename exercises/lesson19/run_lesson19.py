"""Lesson 19 demo: speculative decoding with n-gram lookup and a draft model, step by step and in numbers.

    python exercises/lesson19/run_lesson19.py               # with your aios/
    python exercises/lesson19/run_lesson19.py --reference   # with solutions/aios/
    python exercises/lesson19/run_lesson19.py --model DIR --k 6

Shows: one speculative step of one request (what was proposed, what the target kept, what it added);
the acceptance of n-gram lookup on a prompt that repeats itself and on one that does not; a draft
model identical to the target accepting every proposal; and that the tokens equal plain decoding's,
with how many engine steps each needed.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--max-tokens", type=int, default=48)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def engine(model_dir: Path, speculative_config=None):
    """An engine with lessons <= 16 (prefill-first, PyTorch attention on a CPU) and maybe speculation."""
    import torch

    from aios import LLM
    from aios.config import features_up_to

    settings = {**features_up_to(16), "enable_chunked_prefill": False, "max_num_seqs": 4, "max_model_len": 512,
                "speculative_config": speculative_config}
    if not torch.cuda.is_available():
        settings["attention_backend"] = "torch"
    return LLM(str(model_dir), **settings)


def run(llm, prompt: str, max_tokens: int) -> tuple[list[int], int]:
    """Greedy tokens of ``prompt`` and the number of engine steps they took."""
    from aios import SamplingParams

    seq = llm.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    steps = 0
    while not llm.is_finished():
        llm.step()
        steps += 1
    return seq.completion_token_ids, steps


def show_one_step(llm, prompt: str) -> None:
    """Prefill, then one speculative step with its proposal and verdict printed."""
    from aios import SamplingParams

    decoder = llm.speculator
    seq = llm.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    llm.step()  # the prefill: the first token
    for _ in range(8):
        before = len(seq)
        proposed = decoder.stats.num_draft_tokens
        llm.step()
        count = decoder.stats.num_draft_tokens - proposed
        if count:
            new = seq.token_ids[before:]
            print(f"  proposed {count} tokens; the step added {len(new)}: "
                  f"{llm.tokenizer.decode(new)!r} ({len(new) - 1} accepted + 1 from the target)")
            break
    while not llm.is_finished():
        llm.step()


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    model_dir = args.model or trained_model()
    repetitive = ("The cat sat on the mat. The dog sat on the log. The cat sat on the mat. "
                  "The dog sat on the log. The cat sat on the")
    plain_text = "Once upon a time"
    ngram = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_max": 4, "prompt_lookup_min": 1}
    draft = {"model": str(model_dir), "num_speculative_tokens": args.k}

    print(f"model: {model_dir}  k = {args.k}\n")
    plain = engine(model_dir)
    print("1. one speculative step (n-gram lookup, repetitive prompt)")
    show_one_step(engine(model_dir, ngram), repetitive)

    print("\n2. the same tokens, fewer steps")
    for name, config in (("n-gram lookup", ngram), ("draft = target", draft)):
        for label, prompt in (("repetitive", repetitive), ("plain text", plain_text)):
            expected, plain_steps = run(plain, prompt, args.max_tokens)
            llm = engine(model_dir, config)
            tokens, steps = run(llm, prompt, args.max_tokens)
            stats = llm.speculative_stats()
            print(f"  {name:<15} {label:<11} same tokens: {tokens == expected}   steps {steps:>3} "
                  f"(plain {plain_steps:>3})   acceptance {stats['acceptance_rate']:.2f}   "
                  f"mean accepted length {stats['mean_accepted_length']:.2f}")
    print(f"\n  continuation: {plain.tokenizer.decode(expected)!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
