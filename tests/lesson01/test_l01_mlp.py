"""Lesson 1: ``silu_and_mul``, the gate of Qwen3's SwiGLU MLP, against transformers' ``Qwen3MLP``."""

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from aios.layers.activation import SiluAndMul, silu_and_mul


def hf_mlp(hidden: int, intermediate: int, seed: int) -> Qwen3MLP:
    torch.manual_seed(seed)
    config = Qwen3Config(hidden_size=hidden, intermediate_size=intermediate, hidden_act="silu")
    return Qwen3MLP(config).eval()


def test_silu_and_mul_formula():
    """silu_and_mul(gate, up) is gate * sigmoid(gate) * up, elementwise."""
    gen = torch.Generator().manual_seed(0)
    gate = torch.randn(5, 24, generator=gen) * 4
    up = torch.randn(5, 24, generator=gen)
    out = silu_and_mul(gate, up)
    assert out.shape == gate.shape
    torch.testing.assert_close(out, gate * torch.sigmoid(gate) * up, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("hidden,intermediate,tokens", [(64, 128, 1), (64, 128, 7), (96, 256, 4)])
def test_mlp_built_from_silu_and_mul_matches_hf(hidden, intermediate, tokens):
    """down(silu_and_mul(gate(x), up(x))) with Qwen3MLP's own weights equals Qwen3MLP(x)."""
    mlp = hf_mlp(hidden, intermediate, seed=tokens)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(tokens))
    with torch.no_grad():
        ours = mlp.down_proj(silu_and_mul(mlp.gate_proj(x), mlp.up_proj(x)))
        torch.testing.assert_close(ours, mlp(x), atol=1e-5, rtol=1e-5)


def test_silu_and_mul_module_splits_fused_gate_up():
    """SiluAndMul takes [..., 2 * intermediate] = [gate | up] and matches Qwen3MLP's activation."""
    mlp = hf_mlp(32, 48, seed=9)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        gate_up = torch.cat((mlp.gate_proj(x), mlp.up_proj(x)), dim=-1)
        ours = mlp.down_proj(SiluAndMul()(gate_up))
        torch.testing.assert_close(ours, mlp(x), atol=1e-5, rtol=1e-5)
