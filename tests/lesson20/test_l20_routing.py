"""Lesson 20: the router (softmax over every expert, top-k, optional renormalisation) and which layers are sparse."""

import pytest
import torch

from aios.layers.fused_moe import route_tokens
from aios.models.qwen3_moe import is_moe_layer


def reference_routing(logits, top_k, renormalize):
    probs = torch.softmax(logits.double(), dim=-1)
    weights, ids = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights, ids


@pytest.mark.hint(1)
@pytest.mark.parametrize("renormalize", [True, False])
def test_route_tokens_softmax_over_all_experts_then_top_k(renormalize):
    """route_tokens: softmax over all E experts (float32), the k largest in descending order, renormalised if asked."""
    logits = torch.randn(7, 8, generator=torch.Generator().manual_seed(1)) * 2
    weights, ids = route_tokens(logits, 3, renormalize)
    expected_weights, expected_ids = reference_routing(logits, 3, renormalize)
    assert weights.shape == ids.shape == (7, 3) and weights.dtype == torch.float32
    assert torch.equal(ids.long(), expected_ids)
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-5, atol=1e-6)
    sums = weights.sum(-1)
    if renormalize:
        torch.testing.assert_close(sums, torch.ones(7), rtol=1e-5, atol=1e-6)
    else:
        assert (sums < 1).all(), "without norm_topk_prob the k weights are the plain softmax probabilities"


@pytest.mark.hint(1)
def test_route_tokens_in_bfloat16_computes_the_softmax_in_float32():
    """bf16 router logits still give float32 weights from a float32 softmax (as transformers does)."""
    logits = (torch.randn(5, 16, generator=torch.Generator().manual_seed(2)) * 3).bfloat16()
    weights, ids = route_tokens(logits, 4, False)
    expected_weights, expected_ids = reference_routing(logits.float(), 4, False)
    assert weights.dtype == torch.float32
    assert torch.equal(ids.long(), expected_ids)
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-5, atol=1e-6)


def transformers_sparse_layers(num_layers, **fields):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeDecoderLayer, Qwen3MoeSparseMoeBlock

    config = Qwen3MoeConfig(hidden_size=8, intermediate_size=8, moe_intermediate_size=4, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=4, num_experts=4, num_experts_per_tok=2,
                            num_hidden_layers=num_layers, **fields)
    with torch.device("meta"):
        return [isinstance(Qwen3MoeDecoderLayer(config, i).mlp, Qwen3MoeSparseMoeBlock) for i in range(num_layers)]


@pytest.mark.hint(2)
@pytest.mark.parametrize("fields", [{}, {"mlp_only_layers": [0, 3]}, {"decoder_sparse_step": 2},
                                    {"decoder_sparse_step": 3, "mlp_only_layers": [2]}])
def test_is_moe_layer_follows_transformers(fields):
    """is_moe_layer honours mlp_only_layers and decoder_sparse_step exactly like transformers' decoder layer."""
    from types import SimpleNamespace

    config = SimpleNamespace(num_experts=4, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=6)
    for key, value in fields.items():
        setattr(config, key, value)
    ours = [bool(is_moe_layer(config, i)) for i in range(6)]
    assert ours == transformers_sparse_layers(6, **fields)
