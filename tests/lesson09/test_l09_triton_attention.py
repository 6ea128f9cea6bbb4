"""Lesson 9: the Triton kernels against the plain-PyTorch paged attention of lessons 6-7.

On the CPU the kernels run in Triton's interpreter (see conftest.py), so the shapes stay
small; tests/lesson09/test_l09_gpu.py checks real shapes on a GPU.
"""

import pytest
import torch

from aios.layers import triton_attention
from aios.layers.paged_attention import PagedKVCache, paged_attention, store_kvcache
from aios.utils.context import Context

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def paged_batch(context_lens, query_lens, q_heads=4, kv_heads=2, head_dim=16, block_size=4,
                dtype=torch.float32, seed=0):
    """A random paged cache holding every sequence's context in shuffled blocks, plus queries.

    Sequence i has context_lens[i] cached tokens; its query_lens[i] queries are the last ones.
    Returns (q, k_cache, v_cache, context).
    """
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [(n + block_size - 1) // block_size for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen).to(dtype)
    v_cache = torch.randn(shape, generator=gen).to(dtype)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(n)] for n in blocks_per_seq]
    width = max(blocks_per_seq)
    block_tables = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
    cu_seqlens_q = [0]
    for n in query_lens:
        cu_seqlens_q.append(cu_seqlens_q[-1] + n)
    q = torch.randn(cu_seqlens_q[-1], q_heads, head_dim, generator=gen).to(dtype)
    context = Context(
        is_prefill=any(n > 1 for n in query_lens),
        cu_seqlens_q=torch.tensor(cu_seqlens_q, dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=DEVICE),
        block_tables=block_tables.to(DEVICE),
        max_seqlen_q=max(query_lens),
        max_seqlen_k=max(context_lens),
    )
    return q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), context


def torch_reference(q, k_cache, v_cache, context, scale):
    """Lesson 7's paged_attention in float32."""
    return paged_attention(q.float(), k_cache.float(), v_cache.float(), context, scale)


@pytest.mark.hint(1)
def test_store_kvcache_matches_torch_store():
    """store_kvcache writes every token's K and V rows into the same slots as lesson 6's store_kvcache."""
    gen = torch.Generator().manual_seed(1)
    key = torch.randn(7, 2, 16, generator=gen).to(DEVICE)
    value = torch.randn(7, 2, 16, generator=gen).to(DEVICE)
    slots = torch.tensor([5, 0, 31, 12, 13, 2, 20], device=DEVICE)
    k_cache, v_cache = torch.zeros(8, 4, 2, 16, device=DEVICE), torch.zeros(8, 4, 2, 16, device=DEVICE)
    k_expected, v_expected = k_cache.clone(), v_cache.clone()
    triton_attention.store_kvcache(key, value, k_cache, v_cache, slots)
    store_kvcache(key, value, k_expected, v_expected, slots)
    assert torch.equal(k_cache, k_expected) and torch.equal(v_cache, v_expected)


@pytest.mark.hint(1)
def test_store_kvcache_skips_padding_slots():
    """A token whose slot is -1 is padding: the cache must stay exactly as it was."""
    key = torch.ones(4, 2, 8, device=DEVICE)
    value = 2 * torch.ones(4, 2, 8, device=DEVICE)
    slots = torch.tensor([-1, 3, -1, 6], device=DEVICE)
    k_cache = torch.full((4, 2, 2, 8), -5.0, device=DEVICE)
    v_cache = torch.full((4, 2, 2, 8), -5.0, device=DEVICE)
    triton_attention.store_kvcache(key, value, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(8, 2, 8), v_cache.view(8, 2, 8)
    written = torch.zeros(8, dtype=torch.bool)
    written[[3, 6]] = True
    assert (flat_k[written.to(DEVICE)] == 1).all() and (flat_v[written.to(DEVICE)] == 2).all()
    assert (flat_k[~written.to(DEVICE)] == -5).all() and (flat_v[~written.to(DEVICE)] == -5).all()


@pytest.mark.hint(3)
@pytest.mark.parametrize(
    "context_lens,query_lens",
    [
        ([9], [9]),  # one fresh prompt
        ([5, 23, 17], [5, 23, 17]),  # a packed batch of prompts
        ([20, 11], [6, 11]),  # the first sequence's 14 leading tokens were cached (prefix caching)
        ([70, 3], [70, 1]),  # longer than one key tile; a single-query sequence in the batch
    ],
)
def test_prefill_attention_matches_paged_attention(context_lens, query_lens):
    """prefill_attention equals lesson 7's paged_attention: causal, GQA, queries at the end of each context."""
    q, k_cache, v_cache, context = paged_batch(context_lens, query_lens, seed=sum(context_lens))
    scale = 16**-0.5
    out = triton_attention.prefill_attention(q, k_cache, v_cache, context, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, torch_reference(q, k_cache, v_cache, context, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(4)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention_matches_paged_attention(num_splits):
    """decode_attention (one query per sequence) equals paged_attention, with one split or several."""
    q, k_cache, v_cache, context = paged_batch([1, 9, 64, 130], [1, 1, 1, 1], seed=7)
    scale = 16**-0.5
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, scale, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, torch_reference(q, k_cache, v_cache, context, scale), atol=1e-5, rtol=1e-5)


def test_decode_attention_float16_within_rounding():
    """In float16 the kernels stay within half-precision rounding of the float32 reference."""
    q, k_cache, v_cache, context = paged_batch([12, 40], [1, 1], dtype=torch.float16, seed=3)
    out = triton_attention.decode_attention(q, k_cache, v_cache, context, 0.25, num_splits=2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch_reference(q, k_cache, v_cache, context, 0.25), atol=3e-3, rtol=3e-3)


@pytest.mark.hint(3)
def test_decode_attention_zero_length_context_gives_zeros():
    """A padded row (context length 0, as CUDA graphs use) reads nothing and returns zeros, never NaN."""
    q, k_cache, v_cache, context = paged_batch([6, 6], [1, 1], seed=4)
    expected = torch_reference(q, k_cache, v_cache, context, 0.25)
    context.context_lens[1] = 0
    for num_splits in (1, 2):
        out = triton_attention.decode_attention(q, k_cache, v_cache, context, 0.25, num_splits=num_splits)
        assert torch.isfinite(out).all()
        assert (out[1] == 0).all()
        torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)


def test_plan_decode_splits_covers_the_context():
    """plan_decode_splits cuts max_context_len into at most MAX_DECODE_SPLITS splits of whole key tiles."""
    for num_seqs, max_len, target in [(1, 4096, 528), (256, 4096, 528), (3, 100, 528), (1, 1, 528), (8, 2000, 1)]:
        num_splits, split_len = triton_attention.plan_decode_splits(num_seqs, 8, max_len, target)
        assert 1 <= num_splits <= triton_attention.MAX_DECODE_SPLITS
        assert split_len % triton_attention.DECODE_CONFIG["BLOCK_N"] == 0
        assert num_splits * split_len >= max_len > (num_splits - 1) * split_len
    few, _ = triton_attention.plan_decode_splits(256, 8, 4096, 528)
    many, _ = triton_attention.plan_decode_splits(1, 8, 4096, 528)
    assert few == 1 and many > few, "a batch that fills the GPU needs no split; a lone sequence needs many"


@pytest.mark.hint(1)
def test_paged_kv_cache_triton_backend_matches_torch_backend():
    """PagedKVCache(backend="triton").attend stores and attends exactly like the torch backend."""
    caches = {b: PagedKVCache(1, 6, 4, 2, 16, torch.float32, DEVICE, backend=b) for b in ("torch", "triton")}
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(7, 4, 16, generator=gen).to(DEVICE)
    k = torch.randn(7, 2, 16, generator=gen).to(DEVICE)
    v = torch.randn(7, 2, 16, generator=gen).to(DEVICE)
    context = Context(
        is_prefill=True,
        cu_seqlens_q=torch.tensor([0, 5, 7], dtype=torch.int32, device=DEVICE),
        context_lens=torch.tensor([5, 2], dtype=torch.int32, device=DEVICE),
        slot_mapping=torch.tensor([8, 9, 10, 11, 0, 20, 21], device=DEVICE),
        block_tables=torch.tensor([[2, 0], [5, -1]], dtype=torch.int32, device=DEVICE),
        max_seqlen_q=5,
        max_seqlen_k=5,
    )
    outs = {b: cache.attend(0, q, k, v, context, 0.25) for b, cache in caches.items()}
    torch.testing.assert_close(outs["triton"], outs["torch"], atol=1e-5, rtol=1e-5)
    assert torch.equal(caches["triton"].k_cache, caches["torch"].k_cache)
    assert torch.equal(caches["triton"].v_cache, caches["torch"].v_cache)
