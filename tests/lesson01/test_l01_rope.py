"""Lesson 1: ``rope_cos_sin`` and ``apply_rotary`` against transformers' Qwen3 RoPE.

Layouts differ: transformers keeps q/k as [batch, heads, seq, head_dim] and a cos/sin
of the full head_dim (two copies of the same half); ours keeps [tokens, heads, head_dim]
and a half-width table [positions, head_dim // 2].
"""

import pytest
import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from aios.layers.rotary_embedding import RotaryEmbedding, apply_rotary, rope_cos_sin


def hf_cos_sin(head_dim: int, base: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' cos/sin for ``positions``: each [tokens, head_dim], float32."""
    config = Qwen3Config(
        hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=4, head_dim=head_dim,
        max_position_embeddings=int(positions.max()) + 1, rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    cos, sin = Qwen3RotaryEmbedding(config)(torch.zeros(1), positions[None])
    return cos[0], sin[0]


def hf_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb on our layout: x [tokens, heads, dim]; cos, sin [tokens, dim]."""
    x_hf = x.transpose(0, 1)[None]  # [1, heads, tokens, dim]
    rotated, _ = apply_rotary_pos_emb(x_hf, x_hf, cos[None], sin[None], unsqueeze_dim=1)
    return rotated[0].transpose(0, 1)


def exact_angles(head_dim: int, base: float, max_positions: int) -> torch.Tensor:
    """The angle table p * base ** (-2i / head_dim) in float64: the exact values float32 approximates."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)


def assert_as_accurate_as_float32_allows(table: torch.Tensor, exact: torch.Tensor, angles: torch.Tensor) -> None:
    """|table - exact| <= 8 u |angle| + 1e-6, with u = 2**-24 float32's unit roundoff.

    Every correct float32 formula (``base ** (-arange / d)``, transformers' ``1 / base ** (arange / d)``,
    ``exp(-log(base) * arange / d)``) rounds the frequency, the power and the product: each rounding
    moves an angle of 400 radians by ~1e-5, so no fixed 1e-5 tolerance is fair to all of them.
    A wrong frequency, position or layout is off by far more.
    """
    error = (table.double() - exact).abs()
    bound = 8 * 2.0**-24 * angles + 1e-6
    worst = (error / bound).argmax()
    p, i = divmod(int(worst), table.shape[1])
    assert (error <= bound).all(), (
        f"at position {p}, frequency {i}: {table[p, i].item():.7f}, exact {exact[p, i].item():.7f} "
        f"(angle {angles[p, i].item():.3f} rad; float32 allows {bound[p, i].item():.1e})")


@pytest.mark.hint(3)
@pytest.mark.parametrize("head_dim,base", [(16, 1_000_000.0), (64, 10_000.0), (128, 1_000_000.0)])
def test_rope_table_matches_hf(head_dim, base):
    """rope_cos_sin gives half-width float32 tables of transformers' cos/sin, as exact as float32 allows."""
    cos, sin = rope_cos_sin(head_dim, 512, base)
    assert cos.shape == sin.shape == (512, head_dim // 2)
    assert cos.dtype == sin.dtype == torch.float32
    ref_cos, ref_sin = hf_cos_sin(head_dim, base, torch.arange(512))
    assert torch.equal(ref_cos[:, : head_dim // 2], ref_cos[:, head_dim // 2 :])  # transformers: two copies
    angles = exact_angles(head_dim, base, 512)
    assert_as_accurate_as_float32_allows(cos, angles.cos(), angles)
    assert_as_accurate_as_float32_allows(sin, angles.sin(), angles)
    assert_as_accurate_as_float32_allows(ref_cos[:, : head_dim // 2], angles.cos(), angles)  # the bound is fair


def full_width(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Our half-width tables in transformers' full-width form (two copies of each half)."""
    return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)


@pytest.mark.hint(4)
@pytest.mark.parametrize("tokens,heads,head_dim", [(1, 1, 16), (5, 4, 16), (9, 2, 64)])
def test_apply_rotary_matches_hf(tokens, heads, head_dim):
    """apply_rotary on [tokens, heads, head_dim] equals apply_rotary_pos_emb on the HF layout (same tables)."""
    gen = torch.Generator().manual_seed(tokens * heads)
    x = torch.randn(tokens, heads, head_dim, generator=gen)
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    cos, sin = rope_cos_sin(head_dim, 300, 1_000_000.0)
    ours = apply_rotary(x, cos[positions], sin[positions])
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, hf_rotate(x, *full_width(cos[positions], sin[positions])), atol=1e-6, rtol=1e-6)


@pytest.mark.hint(4)
def test_rotary_module_rotates_q_and_k_with_different_head_counts():
    """RotaryEmbedding rotates q (8 heads) and k (2 heads) by their positions like transformers."""
    gen = torch.Generator().manual_seed(3)
    rope = RotaryEmbedding(32, 64, 1_000_000.0)
    q = torch.randn(6, 8, 32, generator=gen)
    k = torch.randn(6, 2, 32, generator=gen)
    positions = torch.tensor([0, 1, 2, 10, 11, 63])
    q_rot, k_rot = rope(positions, q, k)
    cos, sin = rope_cos_sin(32, 64, 1_000_000.0)
    ref_cos, ref_sin = full_width(cos[positions], sin[positions])
    torch.testing.assert_close(q_rot, hf_rotate(q, ref_cos, ref_sin), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_rot, hf_rotate(k, ref_cos, ref_sin), atol=1e-5, rtol=1e-5)
