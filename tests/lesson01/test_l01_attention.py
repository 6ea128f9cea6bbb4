"""Lesson 1: ``causal_attention`` against transformers' ``eager_attention_forward``.

transformers works on [batch, heads, seq, head_dim] with an additive mask; ours on
[tokens, heads, head_dim] with the causal mask built inside. Several query heads
share one key/value head (grouped-query attention, GQA).
"""

from types import SimpleNamespace

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import eager_attention_forward

from aios.layers.attention import causal_attention


def hf_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Full causal attention (q_len == kv_len) by transformers, in our [tokens, heads, dim] layout."""
    n = q.shape[0]
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    mask = torch.full((n, n), float("-inf"), dtype=q.dtype).triu(1)[None, None]
    to_hf = lambda t: t.transpose(0, 1)[None]  # noqa: E731
    out, _ = eager_attention_forward(module, to_hf(q), to_hf(k), to_hf(v), mask, scaling=scale)
    return out[0]  # eager_attention_forward already returns [batch, seq, heads, dim]


def random_qkv(tokens: int, q_heads: int, kv_heads: int, head_dim: int, seed: int, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(tokens, q_heads, head_dim, generator=gen)
    k = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    v = torch.randn(tokens, kv_heads, head_dim, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize(
    "tokens,q_heads,kv_heads,head_dim",
    [(1, 2, 1, 16), (7, 4, 2, 16), (12, 8, 2, 32), (5, 4, 4, 16), (9, 6, 1, 8)],
)
@pytest.mark.hint(5)
def test_causal_attention_matches_hf_eager(tokens, q_heads, kv_heads, head_dim):
    """causal_attention with GQA matches eager_attention_forward + causal mask in float32."""
    q, k, v = random_qkv(tokens, q_heads, kv_heads, head_dim, seed=tokens + q_heads)
    scale = head_dim**-0.5
    out = causal_attention(q, k, v, scale)
    assert out.shape == q.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, hf_causal_attention(q, k, v, scale), atol=1e-5, rtol=1e-5)


@pytest.mark.hint(6)
@pytest.mark.parametrize("q_len,kv_len", [(1, 6), (3, 10), (4, 4)])
def test_causal_attention_queries_are_the_last_positions(q_len, kv_len):
    """With q_len < kv_len the queries are the last q_len positions: equal to the last rows of the full result."""
    q_full, k, v = random_qkv(kv_len, 4, 2, 16, seed=q_len * 100 + kv_len)
    scale = 16**-0.5
    out = causal_attention(q_full[-q_len:], k, v, scale)
    assert out.shape == (q_len, 4, 16)
    torch.testing.assert_close(out, hf_causal_attention(q_full, k, v, scale)[-q_len:], atol=1e-5, rtol=1e-5)


@pytest.mark.hint(7)
def test_causal_attention_bf16_close_to_float32_reference():
    """On bfloat16 inputs the output is bfloat16 and within bf16 rounding of the float32 reference."""
    q, k, v = random_qkv(10, 8, 2, 64, seed=5, dtype=torch.bfloat16)
    scale = 64**-0.5
    out = causal_attention(q, k, v, scale)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    reference = hf_causal_attention(q.float(), k.float(), v.float(), scale)
    torch.testing.assert_close(out.float(), reference, atol=3e-2, rtol=3e-2)
