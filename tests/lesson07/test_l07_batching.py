"""Lesson 7: ragged batches packed with cu_seqlens, the Context, and batched paged attention."""

import pytest
import torch

from aios.engine.kv_cache import StaticKVCache
from aios.generate import generate_batch, generate_with_cache
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import paged_attention, store_kvcache
from aios.utils.context import Context


@pytest.mark.hint(2)
def test_prepare_prefill_packs_a_ragged_batch(runner, make_seq, context_lists):
    """prepare_prefill: flat input ids and positions, cu_seqlens_q, context_lens, slots and padded block tables."""
    a = make_seq([11, 12, 13], block_table=[5])
    b = make_seq([21, 22, 23, 24, 25, 26], block_table=[2, 9])
    input_ids, positions, context = runner.prepare_prefill([a, b])
    assert input_ids.tolist() == [11, 12, 13, 21, 22, 23, 24, 25, 26]
    assert positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5]
    assert context_lists(context) == {
        "positions": [0, 1, 2, 0, 1, 2, 3, 4, 5],
        "cu_seqlens_q": [0, 3, 9],
        "context_lens": [3, 6],
        "slot_mapping": [20, 21, 22, 8, 9, 10, 11, 36, 37],
        "block_tables": [[5, -1], [2, 9]],
    }
    assert context.is_prefill and context.max_seqlen_q == 6 and context.max_seqlen_k == 6
    assert context.kv_cache is runner.kv_cache


@pytest.mark.hint(3)
def test_prepare_decode_feeds_each_newest_token(runner, make_seq, context_lists):
    """prepare_decode: one token per sequence at position len - 1, its slot, and the batch's block tables."""
    a = make_seq([1, 2, 3, 4, 50], block_table=[5, 1])
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 80], block_table=[2, 9])
    c = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 90], block_table=[0, 3, 7])
    input_ids, positions, context = runner.prepare_decode([a, b, c])
    assert input_ids.tolist() == [50, 80, 90]
    assert context_lists(context) == {
        "positions": [4, 7, 8],
        "cu_seqlens_q": [0, 1, 2, 3],
        "context_lens": [5, 8, 9],
        "slot_mapping": [4, 39, 28],
        "block_tables": [[5, 1, -1], [2, 9, -1], [0, 3, 7]],
    }
    assert positions.tolist() == [4, 7, 8]
    assert not context.is_prefill and context.max_seqlen_q == 1 and context.max_seqlen_k == 9


def paged_setup(lengths, block_size=4, seed=0):
    """Random K/V of several sequences stored in one paged cache; returns cache, per-sequence K/V, block tables."""
    g = torch.Generator().manual_seed(seed)
    k_cache, v_cache = torch.zeros(16, block_size, 2, 8), torch.zeros(16, block_size, 2, 8)
    free = torch.randperm(16, generator=g).tolist()
    seqs = []
    for length in lengths:
        table = [free.pop() for _ in range(-(-length // block_size))]
        k, v = torch.randn(length, 2, 8, generator=g), torch.randn(length, 2, 8, generator=g)
        slots = [table[p // block_size] * block_size + p % block_size for p in range(length)]
        store_kvcache(k, v, k_cache, v_cache, torch.tensor(slots))
        seqs.append((k, v, table))
    width = max(len(t) for _, _, t in seqs)
    block_tables = torch.tensor([t + [-1] * (width - len(t)) for _, _, t in seqs], dtype=torch.int32)
    return k_cache, v_cache, seqs, block_tables


@pytest.mark.hint(4)
def test_paged_attention_prefill_equals_each_sequence_alone():
    """paged_attention over a packed prefill batch equals causal attention of each sequence on its own."""
    lengths = [3, 9, 1, 6]
    k_cache, v_cache, seqs, block_tables = paged_setup(lengths)
    q = torch.randn(sum(lengths), 4, 8, generator=torch.Generator().manual_seed(1))
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    context = Context(cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
                      context_lens=torch.tensor(lengths, dtype=torch.int32), block_tables=block_tables,
                      max_seqlen_q=max(lengths), max_seqlen_k=max(lengths))
    out = paged_attention(q, k_cache, v_cache, context, 0.3)
    for i, (k, v, _) in enumerate(seqs):
        torch.testing.assert_close(out[cu[i] : cu[i + 1]], causal_attention(q[cu[i] : cu[i + 1]], k, v, 0.3),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.hint(4)
def test_paged_attention_decode_equals_each_sequence_alone():
    """paged_attention with one query per sequence attends over each sequence's whole cached context."""
    lengths = [5, 12, 4]
    k_cache, v_cache, seqs, block_tables = paged_setup(lengths, seed=2)
    q = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(3))
    context = Context(is_prefill=False, cu_seqlens_q=torch.arange(4, dtype=torch.int32),
                      context_lens=torch.tensor(lengths, dtype=torch.int32), block_tables=block_tables,
                      max_seqlen_q=1, max_seqlen_k=12)
    out = paged_attention(q, k_cache, v_cache, context, 0.3)
    for i, (k, v, _) in enumerate(seqs):
        torch.testing.assert_close(out[i : i + 1], causal_attention(q[i : i + 1], k, v, 0.3), rtol=1e-5, atol=1e-5)


def run_steps(runner, block_manager, seqs, decode_steps):
    """Prefill ``seqs`` together, then decode them together; returns the logits of every step."""
    for seq in seqs:
        block_manager.allocate(seq)
    steps = [runner.run_model(*runner.prepare_prefill(seqs))]
    for _ in range(decode_steps):
        for seq, logits in zip(seqs, steps[-1]):
            seq.append_token(int(logits.argmax()))
            block_manager.may_append(seq)
        steps.append(runner.run_model(*runner.prepare_decode(seqs)))
    for seq in seqs:
        block_manager.deallocate(seq)
    return steps


@pytest.mark.hint(1)
def test_batch_logits_equal_each_sequence_alone(runner, block_manager, make_seq, random_prompt):
    """Prefill and decode logits of a ragged batch equal those of each sequence run by itself."""
    prompts = [random_prompt(n, seed=n) for n in (1, 5, 13, 30)]
    batched = run_steps(runner, block_manager, [make_seq(p) for p in prompts], decode_steps=4)
    for i, prompt in enumerate(prompts):
        alone = run_steps(runner, block_manager, [make_seq(prompt)], decode_steps=4)
        for step, (together, single) in enumerate(zip(batched, alone)):
            torch.testing.assert_close(together[i], single[0], rtol=1e-4, atol=1e-4,
                                       msg=lambda m: f"sequence {i}, step {step}: {m}")
    assert block_manager.num_free_blocks == block_manager.num_blocks


@pytest.mark.hint(1)
def test_static_batch_generates_what_each_prompt_generates_alone(runner, block_manager, random_prompt):
    """generate_batch (prefill together, decode together) gives each prompt its single-sequence tokens."""
    prompts = [random_prompt(n, seed=100 + n) for n in (3, 17, 8, 1, 25)]
    counts = [6, 2, 9, 4, 7]
    got = generate_batch(runner, block_manager, prompts, counts)
    for prompt, count, tokens in zip(prompts, counts, got):
        assert tokens == generate_with_cache(runner.model, prompt, count, StaticKVCache.for_model(runner.model, 64))
    assert block_manager.num_free_blocks == block_manager.num_blocks
