"""Attention: plain causal attention (lesson 1) and the layer that routes to a KV cache.

Shapes use the flat "tokens" layout of the whole engine: q is [tokens, q_heads, head_dim],
k and v are [tokens, kv_heads, head_dim]; several query heads share one KV head (GQA).
"""

import torch
from torch import nn

from aios.utils.context import get_context


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal grouped-query attention for one sequence.

    q: [q_len, q_heads, head_dim] — the *last* q_len positions of the sequence.
    k, v: [kv_len, kv_heads, head_dim] with kv_len >= q_len and q_heads % kv_heads == 0.
    Query i sits at position kv_len - q_len + i and sees keys 0 ..= that position.
    Returns [q_len, q_heads, head_dim] in q's dtype; softmax is computed in float32.
    """
    # Hint: repeat each KV head q_heads // kv_heads times, then it is ordinary attention.
    # Hint: the mask is a lower-triangular band shifted right by kv_len - q_len.
    raise NotImplementedError("Lesson 1: implement causal_attention in aios/layers/attention.py — see exercises/lesson01/README.md, 'What to implement'")


class Attention(nn.Module):
    """The attention step of one decoder layer, after projections and RoPE.

    With no KV cache in the current Context it attends over the tokens passed in
    (lesson 3: one sequence, recomputed every step). With a cache it hands q, k, v
    to the cache, which stores the new K/V and attends over everything cached.
    """

    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        context = get_context()
        if context.kv_cache is None:
            return causal_attention(q, k, v, self.scale)
        return context.kv_cache.attend(self.layer_idx, q, k, v, context, self.scale)
