"""Lesson 20: the per-expert loop, the sort into expert blocks and the grouped Triton matmul (interpreter on the CPU)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l20_helpers import expert_weights, naive_moe, routing

from aios.layers.fused_moe import align_tokens_to_blocks, fused_moe, moe_loop

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.hint(3)
@pytest.mark.parametrize("tokens,unused", [(1, 0), (6, 0), (9, 5)])
def test_moe_loop_equals_the_definition(tokens, unused):
    """moe_loop == sum_j w[t, j] * down(silu(gate(x)) * up(x)) of expert ids[t, j], including unchosen experts."""
    w13, w2 = expert_weights(8, 24, 12, seed=tokens)
    x = torch.randn(tokens, 24, generator=torch.Generator().manual_seed(3))
    weights, ids = routing(tokens, 8, 2, seed=tokens, unused=unused)
    out = moe_loop(x, w13, w2, weights, ids)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), naive_moe(x, w13, w2, weights, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.hint(4)
def test_align_sorts_pairs_by_expert_in_padded_blocks():
    """Pairs t*k+j sorted by expert, each expert's run padded with the sentinel T*k to whole blocks; -1 ends."""
    ids = torch.tensor([[3, 1], [1, 0], [3, 1]])  # pairs: 0->3, 1->1, 2->1, 3->0, 4->3, 5->1
    sorted_ids, block_expert = align_tokens_to_blocks(ids, num_experts=5, block_m=4)
    sentinel = 6
    assert sorted_ids.tolist()[:12] == [3, sentinel, sentinel, sentinel, 1, 2, 5, sentinel, 0, 4, sentinel, sentinel]
    assert block_expert.tolist()[:3] == [0, 1, 3]
    assert all(e == -1 for e in block_expert.tolist()[3:])
    assert all(p == sentinel for p in sorted_ids.tolist()[12:])
    assert sorted_ids.numel() == block_expert.numel() * 4 >= 6 + 5 * 3


@pytest.mark.hint(4)
@SETTINGS
@given(tokens=st.integers(0, 20), top_k=st.integers(1, 3), block_m=st.sampled_from([1, 2, 4, 16]),
       seed=st.integers(0, 10_000))
def test_align_places_every_pair_once_in_a_block_of_its_expert(tokens, top_k, block_m, seed):
    """Property: each pair appears exactly once, in a block whose expert is its expert; the rest is padding."""
    weights, ids = routing(tokens, 6, top_k, seed=seed, unused=2)
    sorted_ids, block_expert = align_tokens_to_blocks(ids, 6, block_m)
    num_pairs = tokens * top_k
    assert sorted_ids.numel() == block_expert.numel() * block_m
    real = sorted_ids[sorted_ids < num_pairs]
    assert sorted(real.tolist()) == list(range(num_pairs))
    assert ((sorted_ids >= 0) & (sorted_ids <= num_pairs)).all()
    flat = ids.reshape(-1)
    for position, pair in enumerate(sorted_ids.tolist()):
        if pair < num_pairs:
            assert block_expert[position // block_m] == flat[pair]
    used = block_expert[block_expert >= 0]
    assert (used[1:] >= used[:-1]).all(), "blocks are in expert order, one expert's blocks together"


@pytest.mark.hint(5)
@pytest.mark.hint(6)
@SETTINGS
@given(tokens=st.sampled_from([1, 2, 5, 13, 33]), top_k=st.integers(1, 4), unused=st.integers(0, 4),
       block_m=st.sampled_from([None, 16]), seed=st.integers(0, 10_000))
def test_fused_moe_equals_the_per_expert_loop(tokens, top_k, unused, block_m, seed):
    """Property: fused_moe == moe_loop (fp32), for single tokens, experts with no token, every k."""
    w13, w2 = expert_weights(8, 32, 24, seed=seed)
    x = torch.randn(tokens, 32, generator=torch.Generator().manual_seed(seed))
    weights, ids = routing(tokens, 8, top_k, seed=seed, unused=unused)
    expected = moe_loop(x, w13, w2, weights, ids)
    out = fused_moe(*(t.to(DEVICE) for t in (x, w13, w2, weights, ids)), block_m=block_m)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.hint(6)
def test_fused_moe_with_routing_ties_and_every_token_on_one_expert():
    """Equal router logits (ties) and a batch that all goes to one expert: fused == loop == definition."""
    from aios.layers.fused_moe import route_tokens

    w13, w2 = expert_weights(4, 16, 16, seed=5)
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(5))
    weights, ids = route_tokens(torch.zeros(20, 4), 2, True)  # all ties: some valid choice of 2 distinct experts
    assert (ids[:, 0] != ids[:, 1]).all()
    torch.testing.assert_close(weights, torch.full((20, 2), 0.5))
    for w, i in [(weights, ids), (torch.ones(20, 1), torch.full((20, 1), 2))]:
        expected = naive_moe(x, w13, w2, w, i).float()
        torch.testing.assert_close(moe_loop(x, w13, w2, w, i), expected, rtol=1e-5, atol=1e-5)
        out = fused_moe(x.to(DEVICE), w13.to(DEVICE), w2.to(DEVICE), w.to(DEVICE), i.to(DEVICE)).cpu()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
