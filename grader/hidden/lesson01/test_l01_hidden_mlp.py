"""Hidden lesson 1 tests: ``silu_and_mul`` in other shapes, dtypes and at extreme values."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config
from transformers.activations import ACT2FN
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from aios.layers.activation import silu_and_mul


@settings(max_examples=20, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    width=st.sampled_from([1, 3, 64]),
    seed=st.integers(0, 2**16),
)
def test_silu_and_mul_any_shape_matches_hf_activation(shape, width, seed):
    """silu_and_mul works on any leading shape and equals transformers' "silu"(gate) * up."""
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(*shape, width, generator=gen) * 5
    up = torch.randn(*shape, width, generator=gen)
    out = silu_and_mul(gate, up)
    assert out.shape == gate.shape
    torch.testing.assert_close(out, ACT2FN["silu"](gate) * up, atol=1e-6, rtol=1e-6)


def test_silu_and_mul_extremes():
    """Very negative gates close the gate (0), very positive ones pass up through (gate * up)."""
    gate = torch.tensor([-100.0, -20.0, 0.0, 20.0, 100.0])
    up = torch.full((5,), 2.0)
    out = silu_and_mul(gate, up)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 0.0, 40.0, 200.0]), atol=1e-6, rtol=1e-6)


def test_silu_and_mul_bf16_mlp_close_to_float32():
    """A bfloat16 MLP built on silu_and_mul stays bf16 and within bf16 rounding of Qwen3MLP in float32."""
    torch.manual_seed(11)
    mlp = Qwen3MLP(Qwen3Config(hidden_size=128, intermediate_size=384, hidden_act="silu")).eval()
    x = torch.randn(6, 128, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        reference = mlp(x)
        mlp_bf16 = mlp.to(torch.bfloat16)
        xb = x.bfloat16()
        act = silu_and_mul(mlp_bf16.gate_proj(xb), mlp_bf16.up_proj(xb))
        assert act.dtype == torch.bfloat16
        out = mlp_bf16.down_proj(act)
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
