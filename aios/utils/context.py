"""The Context: per-step attention metadata, set by the runner and read by every attention layer.

The model's forward signature stays ``model(input_ids, positions)`` whatever the
cache does; the cache and its bookkeeping travel beside it in one module-level
Context. With no cache set (the default), attention is plain causal
self-attention over the tokens passed in (lesson 3).
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Context:
    """What attention needs to know about the current step besides q, k and v.

    kv_cache:      the cache strategy (None: no cache, attend over the input only).
    positions:     [tokens] absolute position of every input token.
    is_prefill:    True when the step processes prompts, False for one-token decode steps.
    cu_seqlens_q:  [num_seqs + 1] where each sequence's new tokens start in the flat batch.
    context_lens:  [num_seqs] tokens each sequence attends over (cached + new).
    slot_mapping:  [tokens] flat cache slot each new token's K/V is written to (-1: skip).
    block_tables:  [num_seqs, max_blocks] cache block ids of each sequence (-1 padded).
    max_seqlen_q, max_seqlen_k: the largest new-token count and context length in the batch.
    """

    kv_cache: object | None = None
    positions: torch.Tensor | None = None
    is_prefill: bool = True
    cu_seqlens_q: torch.Tensor | None = None
    context_lens: torch.Tensor | None = None
    slot_mapping: torch.Tensor | None = None
    block_tables: torch.Tensor | None = None
    max_seqlen_q: int = 0
    max_seqlen_k: int = 0


_CONTEXT = Context()


def get_context() -> Context:
    """The context of the step now running."""
    return _CONTEXT


def set_context(context: Context) -> None:
    global _CONTEXT
    _CONTEXT = context


def reset_context() -> None:
    set_context(Context())


@contextmanager
def using_context(context: Context):
    """Set ``context`` for the duration of a ``with`` block, then restore the empty one."""
    set_context(context)
    try:
        yield context
    finally:
        reset_context()
