"""Lesson 20 hidden tests: routing, the sort into blocks and the grouped matmul on other shapes and edge cases."""

import pytest
import torch
from l20_helpers import expert_weights, naive_moe, routing

from aios.layers.fused_moe import align_tokens_to_blocks, fused_moe, moe_loop, route_tokens

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.hint(1)
def test_route_tokens_with_many_experts_keeps_plain_probabilities():
    """128 experts, k = 8, no renormalisation: the weights are the softmax over all 128, not over the chosen 8."""
    logits = torch.randn(6, 128, generator=torch.Generator().manual_seed(11))
    weights, ids = route_tokens(logits, 8, False)
    probs = torch.softmax(logits.double(), -1)
    torch.testing.assert_close(weights.double(), probs.gather(1, ids.long()), rtol=1e-5, atol=1e-7)
    assert (weights.sum(-1) < 0.5).all()
    assert (weights[:, :-1] >= weights[:, 1:]).all(), "top-k weights come largest first"


@pytest.mark.hint(1)
def test_route_tokens_k_equal_to_e_with_renormalisation_is_the_softmax():
    """k = E with norm_topk_prob: every expert chosen, weights == the full softmax (sorted)."""
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(12))
    weights, ids = route_tokens(logits, 6, True)
    expected, expected_ids = torch.softmax(logits.double(), -1).sort(dim=-1, descending=True)
    assert torch.equal(ids.long(), expected_ids)
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.hint(4)
def test_align_with_block_of_one_has_no_padding():
    """block_m = 1: every block is one pair; the used blocks list each pair's expert in expert order."""
    ids = torch.tensor([[2, 0], [0, 1], [2, 1], [0, 2]])
    sorted_ids, block_expert = align_tokens_to_blocks(ids, 4, 1)
    used = block_expert[block_expert >= 0]
    assert used.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sorted_ids[: used.numel()].tolist() == [1, 2, 6, 3, 5, 0, 4, 7]
    assert (sorted_ids[used.numel():] == 8).all()


@pytest.mark.hint(4)
def test_align_gives_an_expert_with_exactly_one_full_block_no_extra_block():
    """A run that fills its blocks exactly gets no empty padded block; the next expert starts right after."""
    ids = torch.tensor([[0], [0], [0], [0], [1]])
    sorted_ids, block_expert = align_tokens_to_blocks(ids, 3, 4)
    assert block_expert.tolist()[:2] == [0, 1] and (block_expert[2:] == -1).all()
    assert sorted_ids.tolist()[:8] == [0, 1, 2, 3, 4, 5, 5, 5]


@pytest.mark.hint(5)
@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens,experts,top_k,hidden,intermediate", [
    (70, 8, 2, 100, 70),   # more pairs than 16 per expert: the large tile; K and N not multiples of the tiles
    (3, 16, 4, 40, 20),    # most experts empty
    (9, 1, 1, 48, 32),     # a single expert
    (1, 6, 6, 24, 16),     # one token that uses every expert
])
def test_fused_moe_matches_the_definition_on_odd_shapes(tokens, experts, top_k, hidden, intermediate):
    """fused_moe == the per-token definition for shapes that are not tile multiples, one expert, all experts."""
    w13, w2 = expert_weights(experts, hidden, intermediate, seed=tokens + experts)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(21))
    weights, ids = routing(tokens, experts, top_k, seed=tokens)
    expected = naive_moe(x, w13, w2, weights, ids).float()
    out = fused_moe(*(t.to(DEVICE) for t in (x, w13, w2, weights, ids))).cpu()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(3)
def test_moe_loop_weights_every_slot_of_a_token():
    """A token sent twice with weights 0.25 / 0.75 to two experts gets 0.25 * e1(x) + 0.75 * e2(x)."""
    w13, w2 = expert_weights(3, 16, 8, seed=4)
    x = torch.randn(2, 16, generator=torch.Generator().manual_seed(4))
    weights = torch.tensor([[0.25, 0.75], [0.75, 0.25]])
    ids = torch.tensor([[2, 0], [0, 2]])
    expected = naive_moe(x, w13, w2, weights, ids).float()
    torch.testing.assert_close(moe_loop(x, w13, w2, weights, ids), expected, rtol=1e-5, atol=1e-5)
    only_first = naive_moe(x, w13, w2, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), ids).float()
    assert not torch.allclose(moe_loop(x, w13, w2, weights, ids), only_first, atol=1e-3)


@pytest.mark.hint(5)
def test_fused_moe_with_a_decode_batch_and_block_of_16():
    """Decode-sized batches (1-4 tokens, k = 8 of 32 experts) with 16-row blocks: fused == loop."""
    w13, w2 = expert_weights(32, 64, 48, seed=8)
    for tokens in (1, 2, 4):
        x = torch.randn(tokens, 64, generator=torch.Generator().manual_seed(tokens))
        weights, ids = routing(tokens, 32, 8, seed=tokens)
        expected = moe_loop(x, w13, w2, weights, ids)
        out = fused_moe(*(t.to(DEVICE) for t in (x, w13, w2, weights, ids)), block_m=16).cpu()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
