"""Single-sequence greedy generation loops: without a cache (lesson 3) and with one (lesson 4).

These are the small drivers of the early lessons; the engine of lesson 8 replaces
them with a scheduler that serves many sequences at once.
"""

import torch

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
