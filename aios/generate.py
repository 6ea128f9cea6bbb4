"""Greedy generation loops of the early lessons: one sequence without a cache (lesson 3),
one sequence with a cache (lessons 4-6), and one static batch (lesson 7).

These are the small drivers of the early lessons; the engine of lesson 8 replaces
them with a scheduler that serves many sequences at once.
"""

import torch

from aios.engine.sequence import Sequence
from aios.sampling_params import SamplingParams
from aios.utils.context import Context, using_context


@torch.inference_mode()
def generate_no_cache(model, prompt_ids: list[int], max_new_tokens: int, eos_token_id: int | None = None) -> list[int]:
    """Greedy generation that re-runs the whole sequence for every new token.

    Each step costs a full forward over prompt + generated tokens: O(n^2) work
    in total, the baseline that lesson 4's KV cache removes.
    Returns only the generated token ids (stopping after ``eos_token_id`` if given).
    """
    # Hint: positions are simply 0 .. len(tokens) - 1; only the last row of logits matters.
    raise NotImplementedError("Lesson 3: implement generate_no_cache in aios/generate.py — see exercises/lesson03/README.md, 'What to implement'")


@torch.inference_mode()
def generate_with_cache(
    model, prompt_ids: list[int], max_new_tokens: int, kv_cache, eos_token_id: int | None = None
) -> list[int]:
    """Greedy generation with a KV cache: one prefill over the prompt, then one token per step.

    ``kv_cache`` is any object with ``attend(layer_idx, q, k, v, context, scale)``
    (GrowingKVCache of lesson 4, StaticKVCache of lesson 5). The decode step feeds
    the model exactly one token, at its absolute position.
    """
    # Hint: the prefill step's positions are 0..n-1; a decode step's position is the number of tokens before it.
    raise NotImplementedError("Lesson 4: implement generate_with_cache in aios/generate.py — see exercises/lesson04/README.md, 'What to implement'")


@torch.inference_mode()
def generate_batch(
    runner, block_manager, prompts: list[list[int]], max_new_tokens: int | list[int], eos_token_id: int | None = None
) -> list[list[int]]:
    """Greedy generation for a whole batch at once: lesson 7's static batching.

    ``runner`` is a ModelRunner (it owns the model and the paged KV cache), ``block_manager``
    hands out that cache's blocks. One prefill step packs every prompt into one flat batch;
    each decode step feeds the newest token of every unfinished sequence. Nobody joins a
    batch once it has started: filling the places of finished sequences is lesson 8's job.
    ``max_new_tokens`` is one count for all prompts or one per prompt.
    Returns each prompt's generated ids, in prompt order; every block is given back at the end.
    """
    counts = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    seqs = [
        Sequence(prompt, SamplingParams(temperature=0.0, max_tokens=count), block_manager.block_size)
        for prompt, count in zip(prompts, counts)
    ]
    try:
        for seq in seqs:
            block_manager.allocate(seq)
        running, is_prefill = list(seqs), True
        while running:
            if not is_prefill:
                for seq in running:
                    block_manager.may_append(seq)
            for seq, token_id in zip(running, runner.run(running, is_prefill)):
                seq.append_token(token_id)
            is_prefill = False
            running = [seq for seq in running if not _batch_seq_done(seq, eos_token_id)]
    finally:
        for seq in seqs:
            block_manager.deallocate(seq)
    return [seq.completion_token_ids for seq in seqs]


def _batch_seq_done(seq, eos_token_id: int | None) -> bool:
    return seq.num_completion_tokens >= seq.sampling_params.max_tokens or seq.last_token == eos_token_id
