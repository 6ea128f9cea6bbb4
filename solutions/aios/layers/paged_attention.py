"""Attention over a paged KV cache, written in plain PyTorch (lessons 6 and 7).

Cache layout, one tensor for K and one for V per layer:
    [num_blocks, block_size, kv_heads, head_dim]
Viewed flat, [num_blocks * block_size, kv_heads, head_dim], a token's "slot" is its row.
"""

import importlib

import torch

from aios.layers.attention import causal_attention


def store_kvcache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write each token's K and V into its cache slot, in place.

    key, value: [tokens, kv_heads, head_dim]; slot_mapping: [tokens] (slot -1: padding, not written).
    """
    # BEGIN SOLUTION lesson6
    # Hint: view the cache flat, [num_blocks * block_size, kv_heads, head_dim], then index rows by slot.
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = key[keep]
    v_cache.view(-1, *v_cache.shape[2:])[slots] = value[keep]
    # END SOLUTION


def gather_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor, context_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one sequence's first ``context_len`` keys and values back out of its blocks.

    block_table: [blocks] block ids (trailing -1 padding allowed). Returns k, v: [context_len, kv_heads, head_dim].
    """
    # BEGIN SOLUTION lesson6
    num_blocks = (context_len + k_cache.shape[1] - 1) // k_cache.shape[1]
    ids = block_table[:num_blocks].long()
    k = k_cache[ids].flatten(0, 1)[:context_len]
    v = v_cache[ids].flatten(0, 1)[:context_len]
    return k, v
    # END SOLUTION


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, context, scale: float
) -> torch.Tensor:
    """Attention for a packed batch of sequences whose K/V live in the paged cache.

    q: [tokens, q_heads, head_dim], sequence i's queries are rows
    cu_seqlens_q[i]:cu_seqlens_q[i+1] and are the last positions of its
    context_lens[i] cached tokens. Works for prefill (many queries per sequence)
    and decode (one each). Returns [tokens, q_heads, head_dim].
    """
    # BEGIN SOLUTION lesson7
    # Hint: loop over sequences: slice its queries with cu_seqlens_q, gather its K/V, reuse causal_attention.
    out = torch.empty_like(q)
    starts = context.cu_seqlens_q.tolist()
    lengths = context.context_lens.tolist()
    for i, context_len in enumerate(lengths):
        start, end = starts[i], starts[i + 1]
        k, v = gather_kv(k_cache, v_cache, context.block_tables[i], context_len)
        out[start:end] = causal_attention(q[start:end], k, v, scale)
    return out
    # END SOLUTION


class PagedKVCache:
    """The engine's KV cache: per-layer paged K and V tensors, shared by every sequence.

    ``attend`` stores this step's K/V at ``context.slot_mapping`` and attends with the
    configured backend: "torch" (this file) or "triton" (lesson 9's kernels).
    With ``dtype=torch.float8_e4m3fn`` it is lesson 18's FP8 cache: ``kv_scales`` = (k_scales, v_scales),
    one float per layer (default 1.0), and ``aios.layers.fp8_kv_cache.attend_fp8`` stores and attends.
    """

    def __init__(self, num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype, device, backend="torch",
                 kv_scales=None):
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.backend = backend
        # Lesson 9's kernels, imported only when asked for (the torch path needs no Triton).
        self.kernels = importlib.import_module("aios.layers.triton_attention") if backend == "triton" else None
        # Lesson 18: an FP8 cache quantizes on store with a scale per layer, and its own attend.
        self.fp8 = importlib.import_module("aios.layers.fp8_kv_cache") if dtype == torch.float8_e4m3fn else None
        self.k_scales, self.v_scales = kv_scales or ([1.0] * num_layers, [1.0] * num_layers)

    @property
    def num_blocks(self) -> int:
        return self.k_cache.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes the K and V tensors take (half as many per token for an FP8 cache as for bfloat16)."""
        return self.k_cache.nbytes + self.v_cache.nbytes

    def attend(self, layer_idx: int, q, k, v, context, scale: float) -> torch.Tensor:
        if self.fp8 is not None:
            return self.fp8.attend_fp8(self, layer_idx, q, k, v, context, scale)
        k_cache, v_cache = self.k_cache[layer_idx], self.v_cache[layer_idx]
        if self.backend == "triton":
            self.kernels.store_kvcache(k, v, k_cache, v_cache, context.slot_mapping)
            if context.is_prefill:
                return self.kernels.prefill_attention(q, k_cache, v_cache, context, scale)
            return self.kernels.decode_attention(q, k_cache, v_cache, context, scale)
        store_kvcache(k, v, k_cache, v_cache, context.slot_mapping)
        return paged_attention(q, k_cache, v_cache, context, scale)
