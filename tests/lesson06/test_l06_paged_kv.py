"""Lesson 6: writing K/V into paged storage and reading one sequence back."""

import pytest
import torch

from aios.engine.block_manager import slot_mapping
from aios.engine.kv_cache import PagedSequenceKVCache, StaticKVCache
from aios.generate import generate_with_cache
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import gather_kv, store_kvcache

NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM = 8, 4, 2, 8


def empty_cache():
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    return torch.zeros(shape), torch.zeros(shape)


def random_kv(tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g), torch.randn(tokens, KV_HEADS, HEAD_DIM, generator=g)


@pytest.mark.hint(5)
def test_store_then_gather_round_trip():
    """gather_kv reads back, in order, the K/V that store_kvcache wrote through a scattered block table."""
    k_cache, v_cache = empty_cache()
    block_table = [5, 1, 6]
    k, v = random_kv(10)
    slots = torch.tensor(slot_mapping(block_table, list(range(10)), BLOCK_SIZE))
    store_kvcache(k, v, k_cache, v_cache, slots)
    keys, values = gather_kv(k_cache, v_cache, torch.tensor(block_table, dtype=torch.int32), 10)
    torch.testing.assert_close(keys, k)
    torch.testing.assert_close(values, v)


@pytest.mark.hint(4)
def test_store_writes_exactly_the_mapped_slots():
    """store_kvcache writes token i to flat slot slot_mapping[i] and skips slots of -1."""
    k_cache, v_cache = empty_cache()
    k, v = random_kv(3, seed=1)
    store_kvcache(k, v, k_cache, v_cache, torch.tensor([13, -1, 2]))
    flat_k, flat_v = k_cache.view(-1, KV_HEADS, HEAD_DIM), v_cache.view(-1, KV_HEADS, HEAD_DIM)
    torch.testing.assert_close(flat_k[13], k[0])
    torch.testing.assert_close(flat_v[2], v[2])
    written = (flat_k != 0).any(dim=(1, 2)).nonzero().flatten().tolist()
    assert written == [2, 13], "only the two mapped slots may change"


@pytest.mark.hint(5)
def test_attention_over_paged_kv_equals_contiguous():
    """Causal attention over gather_kv's K/V equals attention over the contiguous K/V."""
    k_cache, v_cache = empty_cache()
    block_table = [3, 7, 0]
    k, v = random_kv(11, seed=2)
    q = torch.randn(11, 4, HEAD_DIM, generator=torch.Generator().manual_seed(3))
    store_kvcache(k, v, k_cache, v_cache, torch.tensor(slot_mapping(block_table, list(range(11)), BLOCK_SIZE)))
    keys, values = gather_kv(k_cache, v_cache, torch.tensor(block_table, dtype=torch.int32), 11)
    torch.testing.assert_close(causal_attention(q[-3:], keys, values, 0.35), causal_attention(q, k, v, 0.35)[-3:],
                               rtol=1e-5, atol=1e-5)


def test_paged_generation_equals_the_static_cache(fused_model, random_prompt):
    """Generating through paged blocks gives lesson 5's tokens, and release() returns every block."""
    prompt = random_prompt(21, seed=4)
    expected = generate_with_cache(fused_model, prompt, 14, StaticKVCache.for_model(fused_model, 64))
    paged = PagedSequenceKVCache.for_model(fused_model, num_blocks=16, block_size=4)
    assert generate_with_cache(fused_model, prompt, 14, paged) == expected
    assert len(paged.block_table) == -(-(21 + 13) // 4), "one block per 4 cached tokens, no more"
    paged.release()
    assert paged.block_manager.num_free_blocks == 16
