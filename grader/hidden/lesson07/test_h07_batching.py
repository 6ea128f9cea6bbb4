"""Lesson 7, hidden: batch metadata at the edges, and batched logits against transformers."""

import pytest
import torch

from aios.generate import generate_batch, generate_no_cache
from aios.layers.attention import causal_attention
from aios.layers.paged_attention import paged_attention
from aios.utils.context import Context


@pytest.mark.hint(2)
def test_prefill_skips_tokens_already_cached(runner, make_seq, context_lists):
    """With num_cached_tokens set (a cached prefix), prepare_prefill feeds and maps only the remaining tokens."""
    a = make_seq(list(range(100, 110)), block_table=[3, 8, 1])
    a.num_cached_tokens = 8
    b = make_seq([7, 8, 9], block_table=[4])
    input_ids, positions, context = runner.prepare_prefill([a, b])
    assert input_ids.tolist() == [108, 109, 7, 8, 9]
    assert context_lists(context) == {
        "positions": [8, 9, 0, 1, 2],
        "cu_seqlens_q": [0, 2, 5],
        "context_lens": [10, 3],
        "slot_mapping": [4, 5, 16, 17, 18],
        "block_tables": [[3, 8, 1], [4, -1, -1]],
    }
    assert context.max_seqlen_q == 3 and context.max_seqlen_k == 10


@pytest.mark.hint(1)
def test_one_token_prompts_and_block_boundaries(runner, make_seq, context_lists):
    """One-token prompts, and decode steps whose newest token starts a new block, get the right slots."""
    singles = [make_seq([5], block_table=[6]), make_seq([9], block_table=[0])]
    _, _, context = runner.prepare_prefill(singles)
    assert context_lists(context)["slot_mapping"] == [24, 0]
    assert context.cu_seqlens_q.tolist() == [0, 1, 2] and context.max_seqlen_q == 1
    at_boundary = [make_seq([1] * 5, block_table=[2, 7]), make_seq([1] * 4, block_table=[3])]
    _, positions, context = runner.prepare_decode(at_boundary)
    assert positions.tolist() == [4, 3]
    assert context_lists(context)["slot_mapping"] == [28, 15]
    assert context_lists(context)["block_tables"] == [[2, 7], [3, -1]]


@pytest.mark.hint(1)
def test_metadata_is_integer_on_the_runner_device(runner, make_seq):
    """Every Context tensor the runner builds is an integer tensor on the runner's device."""
    seqs = [make_seq([1, 2, 3], block_table=[0]), make_seq([4, 5], block_table=[1])]
    for prepare in (runner.prepare_prefill, runner.prepare_decode):
        input_ids, positions, context = prepare(seqs)
        for tensor in (input_ids, positions, context.cu_seqlens_q, context.context_lens, context.slot_mapping,
                       context.block_tables):
            assert not tensor.is_floating_point() and tensor.device == runner.device


@pytest.mark.hint(4)
def test_paged_attention_with_a_cached_prefix_and_gqa():
    """paged_attention: each sequence's queries are the last positions of its context (prefix already cached)."""
    g = torch.Generator().manual_seed(9)
    k_cache, v_cache = torch.randn(10, 2, 1, 4, generator=g), torch.randn(10, 2, 1, 4, generator=g)
    tables = torch.tensor([[7, 2, 5], [9, -1, -1]], dtype=torch.int32)
    context_lens, new = [6, 2], [2, 2]
    q = torch.randn(4, 3, 4, generator=g)
    context = Context(cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32),
                      context_lens=torch.tensor(context_lens, dtype=torch.int32), block_tables=tables,
                      max_seqlen_q=2, max_seqlen_k=6)
    out = paged_attention(q, k_cache, v_cache, context, 0.5)
    k0, v0 = torch.cat([k_cache[7], k_cache[2], k_cache[5]]), torch.cat([v_cache[7], v_cache[2], v_cache[5]])
    torch.testing.assert_close(out[:2], causal_attention(q[:2], k0, v0, 0.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[2:], causal_attention(q[2:], k_cache[9], v_cache[9], 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.hint(2)
def test_batched_prefill_logits_match_transformers(tiny_model_dir, runner, block_manager, make_seq, random_prompt):
    """The last-token logits of a packed prefill batch match transformers run on each prompt alone."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = [random_prompt(n, seed=200 + n) for n in (2, 19, 7)]
    seqs = [make_seq(p) for p in prompts]
    for seq in seqs:
        block_manager.allocate(seq)
    logits = runner.run_model(*runner.prepare_prefill(seqs))
    for seq in seqs:
        block_manager.deallocate(seq)
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            expected = hf(torch.tensor([prompt]), use_cache=False).logits[0, -1].float()
            torch.testing.assert_close(logits[i], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(1)
def test_static_batch_with_eos_and_mixed_lengths(runner, block_manager, random_prompt):
    """generate_batch stops each sequence at its own max_new_tokens or EOS while the others go on."""
    prompts = [random_prompt(n, seed=300 + n) for n in (4, 11, 6)]
    alone = [generate_no_cache(runner.model, p, 10) for p in prompts]
    eos = alone[1][2]
    got = generate_batch(runner, block_manager, prompts, [10, 10, 3], eos_token_id=eos)
    expected = []
    for tokens, limit in zip(alone, [10, 10, 3]):
        tokens = tokens[:limit]
        expected.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    assert got == expected
    assert block_manager.num_free_blocks == block_manager.num_blocks
