"""Lesson 1 in bfloat16: each function computes in float32 and casts where the README says.

A cast in the wrong place still looks "close" under a loose bf16 tolerance, yet it changes
the model's numbers everywhere (the engine is later compared with transformers token by
token). So these tests compare with the float32 computation rounded once to bfloat16: a
correct implementation matches it on (almost) every element; an extra bf16 rounding inside
the computation moves many elements by a bf16 step or more.
"""

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from aios.layers.attention import causal_attention
from aios.layers.layernorm import rms_norm
from aios.layers.rotary_embedding import apply_rotary, rope_cos_sin

#: Share of elements allowed to differ from the once-rounded float32 result by one bf16 step:
#: room for a float32 formula of another order (``x / sqrt`` for ``x * rsqrt``) whose last bit
#: differs and lands on the other side of a bf16 rounding boundary.
MAX_OFF_BY_ONE = 0.01


def assert_rounded_once(out: torch.Tensor, expected32: torch.Tensor, what: str) -> None:
    """``out`` (bf16) equals ``expected32`` rounded to bf16, but for a few elements one bf16 step away."""
    assert out.dtype == torch.bfloat16, f"{what} returned {out.dtype}, expected torch.bfloat16"
    expected = expected32.bfloat16()
    step = torch.nextafter(expected, torch.full_like(expected, float("inf"))).float() - expected.float()
    diff = (out.float() - expected.float()).abs()
    off = diff > 0
    assert (diff <= step.abs() * 1.01).all() and off.float().mean() <= MAX_OFF_BY_ONE, (
        f"{what}: {off.float().mean():.1%} of the bf16 results differ from the float32 computation "
        f"rounded once (largest difference {diff.max().item():.3g}): a bf16 rounding happens inside "
        f"the computation, or a cast sits in the wrong place")


@pytest.mark.hint(2)
def test_rms_norm_bf16_casts_back_before_the_weight():
    """bf16 rms_norm: normalise in float32, cast to bf16, then multiply by the weight (Qwen3RMSNorm's order)."""
    gen = torch.Generator().manual_seed(11)
    x = (torch.randn(16, 256, generator=gen) * 2).bfloat16()
    weight = (1 + 0.3 * torch.randn(256, generator=gen)).bfloat16()
    out = rms_norm(x, weight, 1e-6)
    norm = Qwen3RMSNorm(256, eps=1e-6).bfloat16()
    with torch.no_grad():
        norm.weight.copy_(weight)
        expected = norm(x)
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
    assert torch.equal(expected, weight * normed)  # transformers' order, spelled out
    assert_rounded_once(out, (weight * normed).float(), "rms_norm")


@pytest.mark.hint(4)
def test_apply_rotary_bf16_rotates_in_float32():
    """bf16 apply_rotary: rotate a float32 copy with the float32 tables, round the result once."""
    gen = torch.Generator().manual_seed(12)
    x = (torch.randn(24, 4, 64, generator=gen) * 3).bfloat16()
    positions = torch.randint(0, 4096, (24,), generator=gen)
    cos, sin = rope_cos_sin(64, 4096, 1_000_000.0)
    out = apply_rotary(x, cos[positions], sin[positions])
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[positions, None], sin[positions, None]
    assert_rounded_once(out, torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1), "apply_rotary")


@pytest.mark.hint(7)
def test_causal_attention_bf16_scores_and_softmax_in_float32():
    """bf16 causal_attention with large logits: scores and softmax in float32, output within bf16 rounding."""
    gen = torch.Generator().manual_seed(13)
    q = (torch.randn(12, 8, 64, generator=gen) * 5).bfloat16()
    k = (torch.randn(40, 2, 64, generator=gen) * 5).bfloat16()
    v = torch.randn(40, 2, 64, generator=gen).bfloat16()
    scale = 64**-0.5
    out = causal_attention(q, k, v, scale)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    k32, v32 = (t.float().repeat_interleave(4, dim=1) for t in (k, v))
    scores = torch.einsum("qhd,khd->hqk", q.float(), k32) * scale
    allowed = torch.ones(12, 40, dtype=torch.bool).tril(diagonal=28)
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    expected = torch.einsum("hqk,khd->qhd", probs, v32)
    # Casting the float32 probabilities to bf16 before multiplying by v (transformers' eager
    # attention does) costs at most a bf16 step; bf16 logits move the weights by several percent.
    torch.testing.assert_close(out.float(), expected.bfloat16().float(), atol=1e-2, rtol=2**-7)
