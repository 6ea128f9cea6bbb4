"""Hidden lesson 1 tests: ``causal_attention`` over many shapes, GQA groupings and q_len <= kv_len."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

from aios.layers.attention import causal_attention


def hf_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """transformers' eager attention with the causal mask for queries at the last q_len of kv_len positions."""
    q_len, kv_len = q.shape[0], k.shape[0]
    offset = kv_len - q_len
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=offset)
    mask = torch.zeros(q_len, kv_len).masked_fill(~allowed, float("-inf"))[None, None]
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    to_hf = lambda t: t.transpose(0, 1)[None]  # noqa: E731
    out, _ = eager_attention_forward(module, to_hf(q), to_hf(k), to_hf(v), mask, scaling=scale)
    return out[0]


@settings(max_examples=30, deadline=None)
@given(
    kv_len=st.integers(1, 24),
    q_frac=st.floats(0.0, 1.0),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 4),
    head_dim=st.sampled_from([4, 16, 32]),
    seed=st.integers(0, 2**16),
)
@pytest.mark.hint(5)
def test_causal_attention_any_gqa_shape_matches_hf(kv_len, q_frac, kv_heads, group, head_dim, seed):
    """For any kv_len, q_len <= kv_len and q_heads = group * kv_heads, the result matches transformers."""
    q_len = max(1, round(q_frac * kv_len))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(q_len, kv_heads * group, head_dim, generator=gen)
    k = torch.randn(kv_len, kv_heads, head_dim, generator=gen)
    v = torch.randn(kv_len, kv_heads, head_dim, generator=gen)
    out = causal_attention(q, k, v, head_dim**-0.5)
    assert out.shape == q.shape
    torch.testing.assert_close(out, hf_attention(q, k, v, head_dim**-0.5), atol=2e-5, rtol=2e-5)


@pytest.mark.hint(6)
def test_first_position_sees_only_itself():
    """Query 0 of a full sequence attends to key 0 alone, so its output is v[0] of its KV head."""
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(5, 6, 8, generator=gen)
    k = torch.randn(5, 2, 8, generator=gen)
    v = torch.randn(5, 2, 8, generator=gen)
    out = causal_attention(q, k, v, 8**-0.5)
    expected = v[0].repeat_interleave(3, dim=0)  # q heads 0-2 share kv head 0, heads 3-5 kv head 1
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.hint(6)
def test_single_query_attends_to_every_key():
    """A single decode query (q_len = 1) sees all kv_len keys: softmax over the whole row."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 16, generator=gen)
    k = torch.randn(9, 1, 16, generator=gen)
    v = torch.randn(9, 1, 16, generator=gen)
    out = causal_attention(q, k, v, 0.25)
    scores = torch.einsum("hd,kd->hk", q[0], k[:, 0]) * 0.25
    expected = scores.softmax(-1) @ v[:, 0]
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)


def test_scale_argument_is_used():
    """The scale argument multiplies the scores (Qwen3 passes head_dim ** -0.5, but any value must work)."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(6, 4, 16, generator=gen)
    k = torch.randn(6, 2, 16, generator=gen)
    v = torch.randn(6, 2, 16, generator=gen)
    for scale in (0.05, 1.0):
        torch.testing.assert_close(causal_attention(q, k, v, scale), hf_attention(q, k, v, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(7)
def test_causal_attention_bf16_decode_rows():
    """bfloat16 q_len < kv_len: bf16 out, within bf16 rounding of the float32 reference."""
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(3, 16, 64, generator=gen).bfloat16()
    k = torch.randn(20, 8, 64, generator=gen).bfloat16()
    v = torch.randn(20, 8, 64, generator=gen).bfloat16()
    out = causal_attention(q, k, v, 64**-0.5)
    assert out.dtype == torch.bfloat16
    reference = hf_attention(q.float(), k.float(), v.float(), 64**-0.5)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
