"""Hidden lesson 1 tests: ``rms_norm`` in more shapes, dtypes and numeric corners."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from aios.layers.layernorm import rms_norm


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    norm = Qwen3RMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@settings(max_examples=25, deadline=None)
@given(
    leading=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    hidden=st.sampled_from([1, 8, 48, 128]),
    eps=st.sampled_from([1e-6, 1e-5, 1e-2]),
    scale=st.sampled_from([1e-3, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.hint(2)
def test_rms_norm_any_shape_matches_hf(leading, hidden, eps, scale, seed):
    """rms_norm normalises over the last axis only, for any leading shape, eps and input scale."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*leading, hidden, generator=gen) * scale
    weight = torch.randn(hidden, generator=gen)
    out = rms_norm(x, weight, eps)
    assert out.shape == x.shape
    torch.testing.assert_close(out, hf_rms_norm(x, weight, eps), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(2)
def test_rms_norm_statistics_in_float32_for_half_inputs():
    """float16 inputs near 300 must not overflow: square and average in float32, then cast back."""
    gen = torch.Generator().manual_seed(4)
    x = (300 + torch.randn(3, 64, generator=gen)).half()  # 300**2 > float16's largest value (65504)
    weight = torch.ones(64, dtype=torch.float16)
    out = rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all() and out.abs().min() > 0.5
    torch.testing.assert_close(out, hf_rms_norm(x, weight, 1e-6), atol=1e-3, rtol=1e-3)


@pytest.mark.hint(2)
def test_rms_norm_eps_inside_the_square_root():
    """eps is added to the mean square before the square root: an all-zero row stays zero, a tiny row shrinks."""
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1e-3, -1e-3, 1e-3, -1e-3]])
    weight = torch.ones(4)
    out = rms_norm(x, weight, 1e-2)
    expected = x / torch.sqrt(torch.tensor(1e-6 + 1e-2))
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=1e-5)


@pytest.mark.hint(2)
def test_rms_norm_bf16_3d_matches_hf():
    """On 3-D bfloat16 activations rms_norm keeps the dtype and matches Qwen3RMSNorm within bf16 rounding."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 5, 96, generator=gen).bfloat16()
    weight = torch.randn(96, generator=gen).bfloat16()
    out = rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, hf_rms_norm(x, weight, 1e-6), atol=1e-2, rtol=1.6e-2)
