"""Lesson 9 (hidden): the Triton kernels on inputs the visible tests do not try."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.layers import triton_attention
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import paged_attention, store_kvcache
from aios.utils.context import Context

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def paged_batch(context_lens, query_lens, q_heads, kv_heads, head_dim, block_size, seed, dtype=torch.float32):
    """Random K/V for each sequence in shuffled cache blocks (spare blocks hold noise), plus the queries."""
    gen = torch.Generator().manual_seed(seed)
    needed = [(n + block_size - 1) // block_size for n in context_lens]
    num_blocks = sum(needed) + 2
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(n)] for n in needed]
    width = max(needed) + 1  # one spare column of padding for everyone
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    context = Context(
        is_prefill=True,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=DEVICE),
        block_tables=torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEVICE),
        max_seqlen_q=max(query_lens),
        max_seqlen_k=max(context_lens),
    )
    q = torch.randn(cu[-1], q_heads, head_dim, generator=gen)
    return q.to(DEVICE, dtype), k_cache.to(DEVICE, dtype), v_cache.to(DEVICE, dtype), context


def reference(q, k_cache, v_cache, context, scale):
    return paged_attention(q.float(), k_cache.float(), v_cache.float(), context, scale)


@pytest.mark.hint(1)
def test_store_kvcache_reads_strided_views():
    """store_kvcache handles K and V that are column slices of one wider [tokens, q+k+v] tensor (fused QKV)."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(5, (4 + 2 + 2) * 8, generator=gen).to(DEVICE)
    key = qkv[:, 32:48].view(5, 2, 8)
    value = qkv[:, 48:64].view(5, 2, 8)
    assert not key.is_contiguous()
    slots = torch.tensor([9, 1, -1, 4, 15], device=DEVICE)
    caches = [torch.zeros(4, 4, 2, 8, device=DEVICE) for _ in range(4)]
    triton_attention.store_kvcache(key, value, caches[0], caches[1], slots)
    store_kvcache(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.hint(1)
def test_store_kvcache_rows_that_are_not_a_power_of_two():
    """store_kvcache works when a row (kv_heads * head_dim = 3 * 8 = 24 values) is not a power of two."""
    gen = torch.Generator().manual_seed(5)
    key, value = torch.randn(4, 3, 8, generator=gen).to(DEVICE), torch.randn(4, 3, 8, generator=gen).to(DEVICE)
    slots = torch.tensor([6, -1, 0, 3], device=DEVICE)
    caches = [torch.zeros(2, 4, 3, 8, device=DEVICE) for _ in range(4)]
    triton_attention.store_kvcache(key, value, caches[0], caches[1], slots)
    store_kvcache(key, value, caches[2], caches[3], slots)
    assert torch.equal(caches[0], caches[2]) and torch.equal(caches[1], caches[3])


@pytest.mark.hint(3)
def test_prefill_single_sequence_equals_causal_attention():
    """One fresh prompt through the paged cache gives lesson 1's causal_attention on the same q, k, v."""
    q, k_cache, v_cache, context = paged_batch([45], [45], 6, 3, 16, block_size=8, seed=1)
    ids = context.block_tables[0, :6].long()
    k = k_cache[ids].flatten(0, 1)[:45]
    v = v_cache[ids].flatten(0, 1)[:45]
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, 0.3)
    torch.testing.assert_close(out, causal_attention(q, k, v, 0.3), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(3)
def test_prefill_when_every_score_is_very_negative():
    """Rows whose scores are all far below 0 still get their softmax: the running max must start at -inf, not 0."""
    q, k_cache, v_cache, context = paged_batch([9, 20], [9, 20], 4, 2, 16, 4, seed=14)
    k_cache, q = k_cache.abs(), -30 * q.abs()  # every q . k is strongly negative
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, 1.0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference(q, k_cache, v_cache, context, 1.0), atol=1e-4, rtol=1e-4)


@pytest.mark.hint(2)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim,block_size", [
    (4, 4, 16, 1),  # plain multi-head attention, one token per block
    (8, 2, 24, 16),  # head_dim that is not a power of two
    (6, 1, 32, 5),  # every query head shares one KV head; odd block size
])
def test_prefill_shapes(q_heads, kv_heads, head_dim, block_size):
    """prefill_attention matches paged_attention for MHA, head_dim 24, one KV head and odd block sizes."""
    q, k_cache, v_cache, context = paged_batch([19, 66, 8], [19, 2, 8], q_heads, kv_heads, head_dim, block_size,
                                               seed=q_heads + head_dim)
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, head_dim**-0.5)
    torch.testing.assert_close(out, reference(q, k_cache, v_cache, context, head_dim**-0.5), atol=1e-5, rtol=1e-5)


def test_prefill_bfloat16():
    """In bfloat16 prefill_attention returns bfloat16 within bf16 rounding of the float32 reference."""
    q, k_cache, v_cache, context = paged_batch([30, 12], [30, 5], 4, 2, 16, 4, seed=8, dtype=torch.bfloat16)
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, 0.25)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(q, k_cache, v_cache, context, 0.25), atol=2e-2, rtol=2e-2)


@pytest.mark.hint(5)
@pytest.mark.parametrize("num_splits", [2, 5])
def test_decode_more_splits_than_keys(num_splits):
    """Splits that hold no keys of a short sequence must not disturb the merge (their weight is zero)."""
    q, k_cache, v_cache, context = paged_batch([3, 64, 65, 128], [1, 1, 1, 1], 4, 2, 16, 16, seed=num_splits)
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, 0.25, num_splits=num_splits)
    torch.testing.assert_close(out, reference(q, k_cache, v_cache, context, 0.25), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(5)
def test_decode_merge_of_sharp_attention_stays_finite():
    """With scores in the hundreds (a very peaked softmax) the split merge must not overflow: shift by the largest lse."""
    q, k_cache, v_cache, context = paged_batch([40, 100], [1, 1], 4, 2, 16, 4, seed=13)
    q = q * 60  # scores of several hundred: exp2 of an unshifted lse overflows float32
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, 1.0, num_splits=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference(q, k_cache, v_cache, context, 1.0), atol=1e-4, rtol=1e-4)


@pytest.mark.hint(4)
def test_decode_reads_only_tensors_not_host_lengths():
    """decode_attention bounds its reads by context_lens on the device: a larger max_seqlen_k changes nothing."""
    q, k_cache, v_cache, context = paged_batch([10, 33], [1, 1], 4, 2, 16, 4, seed=12)
    expected = reference(q, k_cache, v_cache, context, 0.25)
    context.max_seqlen_k = 1000  # what CUDA graphs pass: an upper bound
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, 0.25)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.hint(3)
@settings(max_examples=8, deadline=None)
@given(
    lens=st.lists(st.integers(1, 90), min_size=1, max_size=3),
    group=st.sampled_from([1, 2, 4]),
    block_size=st.sampled_from([2, 4, 16]),
    num_splits=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_decode_random_batches(lens, group, block_size, num_splits, seed):
    """For random context lengths, GQA groups, block sizes and split counts, decode equals paged_attention."""
    q, k_cache, v_cache, context = paged_batch(lens, [1] * len(lens), 2 * group, 2, 16, block_size, seed)
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, 0.25, num_splits=num_splits)
    torch.testing.assert_close(out, reference(q, k_cache, v_cache, context, 0.25), atol=1e-5, rtol=1e-5)
