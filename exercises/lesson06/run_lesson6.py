"""Lesson 6 demo: the KV cache in fixed-size blocks, handed out by an allocator.

    python exercises/lesson06/run_lesson6.py               # with your aios/
    python exercises/lesson06/run_lesson6.py --reference   # with solutions/aios/
    python exercises/lesson06/run_lesson6.py --model DIR --block-size 16

Shows: generation through pages gives lesson 5's tokens; the block table the sequence
ends with; and how many sequences of mixed lengths fit in the same KV memory when each
reserves max_len rows (lesson 5) and when each takes blocks as it grows (lesson 6).
"""

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="import solutions/aios instead of your aios/")
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the trained model, assets/aios-tiny-lm)")
    parser.add_argument("--prompt", default="Describe a busy train station at dawn.")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--block-size", type=int, default=16)
    return parser.parse_args()


def select_tree(reference: bool) -> None:
    """Put the chosen ``aios`` first on sys.path, before anything imports it."""
    sys.path.insert(0, str(REPO / "solutions" if reference else REPO))


def generation_through_pages(model, tokenizer, prompt: str, max_new_tokens: int, block_size: int) -> None:
    from aios.engine.kv_cache import PagedSequenceKVCache, StaticKVCache
    from aios.engine.sequence import Sequence
    from aios.generate import generate_with_cache

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text)["input_ids"]
    static = generate_with_cache(model, ids, max_new_tokens, StaticKVCache.for_model(model, len(ids) + max_new_tokens))
    pool = 12
    paged = PagedSequenceKVCache.for_model(model, num_blocks=pool, block_size=block_size)
    # Other sequences come and go first, so that the free blocks are scattered over the pool.
    others = [Sequence([0] * (2 * block_size), block_size=block_size) for _ in range(6)]
    for other in others:
        paged.block_manager.allocate(other)
    for other in others[1::2]:
        paged.block_manager.deallocate(other)
    tokens = generate_with_cache(model, ids, max_new_tokens, paged)
    print(f"prompt {len(ids)} tokens + {max_new_tokens} new, block size {block_size}, a pool of {pool} blocks "
          f"where 3 other sequences hold {[o.block_table for o in others[0::2]]}")
    print(f"  block table {paged.block_table} covers {len(paged)} cached tokens "
          f"({len(paged.block_table) * block_size - len(paged)} slots unused in the last block)")
    print(f"  same tokens as lesson 5's static cache: {tokens == static}")
    print(f"  {tokenizer.decode(tokens)!r}")
    free = paged.block_manager.num_free_blocks
    paged.release()
    for other in others[0::2]:
        paged.block_manager.deallocate(other)
    print(f"  free blocks: {free} while generating, {paged.block_manager.num_free_blocks} of {pool} after release()\n")


def capacity(max_len: int, block_size: int, bytes_per_token: int) -> None:
    """How many requests of realistic lengths fit in room for 16 full-length sequences."""
    from aios.engine.block_manager import BlockManager, OutOfBlocksError
    from aios.engine.sequence import Sequence

    rng = random.Random(0)
    lengths = [min(max_len, rng.randint(20, 400) + rng.randint(10, 300)) for _ in range(1000)]
    budget_tokens = 16 * max_len
    static_fit = budget_tokens // max_len
    manager = BlockManager(budget_tokens // block_size, block_size)
    paged_fit = 0
    for length in lengths:
        try:
            manager.allocate(Sequence([0] * length, block_size=block_size))
        except OutOfBlocksError:
            break
        paged_fit += 1
    used = lengths[:paged_fit]
    waste = manager.num_blocks * block_size - manager.num_free_blocks * block_size - sum(used)
    print(f"KV memory for 16 x max_len = {budget_tokens:,} tokens ({budget_tokens * bytes_per_token / 2**20:.0f} MiB "
          f"for this model); requests of 30-700 tokens (mean {sum(lengths) / len(lengths):.0f}):")
    print(f"  static cache, max_len={max_len} reserved each:  {static_fit:>4} requests at once")
    print(f"  paged cache, blocks of {block_size}:               {paged_fit:>4} requests at once "
          f"({waste} slots unused in partly filled last blocks)")


def run(model_dir: Path, prompt: str, max_new_tokens: int, block_size: int) -> None:
    import torch
    from transformers import AutoTokenizer

    from aios.utils.loader import load_qwen3

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_qwen3(model_dir, dtype=torch.float32, fuse_residual_norm=True)
    generation_through_pages(model, tokenizer, prompt, max_new_tokens, block_size)
    config = model.config
    bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    capacity(config.max_position_embeddings, block_size, bytes_per_token)


def main() -> int:
    args = parse_args()
    select_tree(args.reference)
    from aios.fixtures import trained_model

    try:
        run(args.model or trained_model(), args.prompt, args.max_new_tokens, args.block_size)
    except NotImplementedError as error:
        print(f"\nNot implemented yet: {error}\n(run with --reference to see the finished version)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
