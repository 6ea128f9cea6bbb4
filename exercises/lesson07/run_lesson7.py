"""Lesson 7 demo: several sequences in one forward pass, packed without padding.

    python exercises/lesson07/run_lesson7.py               # with your aios/
    python exercises/lesson07/run_lesson7.py --reference   # with solutions/aios/
    python exercises/lesson07/run_lesson7.py --model DIR --max-new-tokens 32

Shows: the Context of a small prefill batch; a static batch generates each prompt's
tokens exactly as running it alone does; and tokens per second as the batch grows.
"""

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


PROMPTS = ["Name a color.", "Write two sentences about the sea and the wind.", "Hi!",
           "Explain what a compiler does, step by step, for a beginner."]


def show_context(runner, block_manager, tokenizer) -> None:
    from aios.engine.sequence import Sequence
    from aios.sampling_params import SamplingParams

    seqs = [Sequence(tokenizer.encode(p), SamplingParams(temperature=0.0), runner.block_size) for p in PROMPTS[:3]]
    for seq in seqs:
        block_manager.allocate(seq)
    input_ids, positions, context = runner.prepare_prefill(seqs)
    print(f"A prefill batch of {len(seqs)} prompts ({[len(s) for s in seqs]} tokens), block size {runner.block_size}:")
    print(f"  input_ids     {len(input_ids)} tokens in one flat run")
    print(f"  positions     {positions.tolist()}")
    print(f"  cu_seqlens_q  {context.cu_seqlens_q.tolist()}")
    print(f"  context_lens  {context.context_lens.tolist()}")
    print(f"  slot_mapping  {context.slot_mapping.tolist()}")
    print(f"  block_tables  {context.block_tables.tolist()}\n")
    for seq in seqs:
        block_manager.deallocate(seq)


def run(model_dir: Path, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from aios.config import Config, features_up_to
    from aios.engine.block_manager import BlockManager
    from aios.engine.kv_cache import StaticKVCache
    from aios.engine.model_runner import ModelRunner
    from aios.generate import generate_batch, generate_with_cache

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Config(str(model_dir), device="cpu", dtype="float32", num_kvcache_blocks=1024, kvcache_block_size=8,
                    **features_up_to(7))
    runner = ModelRunner(config)
    block_manager = BlockManager(config.num_kvcache_blocks, config.kvcache_block_size)
    show_context(runner, block_manager, tokenizer)

    from aios.hf_baseline import chat_prompt  # lesson 2: the chat template around each question

    prompts = [tokenizer.encode(chat_prompt(tokenizer, [{"role": "user", "content": p}]), add_special_tokens=False)
               for p in PROMPTS]
    batch = generate_batch(runner, block_manager, prompts, max_new_tokens)
    model = runner.model
    alone = [generate_with_cache(model, p, max_new_tokens, StaticKVCache.for_model(model, len(p) + max_new_tokens))
             for p in prompts]
    print(f"generate_batch over {len(prompts)} prompts gives each one's tokens run alone: {batch == alone}")
    for prompt, tokens in zip(PROMPTS, batch):
        print(f"  {prompt[:40]!r:44} -> {tokenizer.decode(tokens, skip_special_tokens=True)[:48]!r}")

    print("\nThroughput of one static batch (prompts of 16-48 tokens):")
    rng = random.Random(0)
    vocab = len(tokenizer)
    with torch.inference_mode():
        for size in (1, 4, 16, 32):
            batch_prompts = [[rng.randrange(vocab) for _ in range(rng.randint(16, 48))] for _ in range(size)]
            start = time.perf_counter()
            outputs = generate_batch(runner, block_manager, batch_prompts, max_new_tokens)
            seconds = time.perf_counter() - start
            tokens = sum(len(o) for o in outputs)
            print(f"  batch of {size:>2}: {tokens:>4} tokens in {seconds:5.2f} s = {tokens / seconds:7.1f} tok/s")
    print("(On a GPU the gain is far larger: a step costs about the same for 1 or 32 sequences.)")


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    try:
        run(args.model or trained_model(), args.max_new_tokens)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
