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


@pytest.mark.parametrize("head_dim,base", [(16, 1_000_000.0), (64, 10_000.0), (128, 1_000_000.0)])
def test_rope_table_matches_hf(head_dim, base):
    """rope_cos_sin gives half-width float32 tables equal to transformers' cos/sin."""
    cos, sin = rope_cos_sin(head_dim, 512, base)
    assert cos.shape == sin.shape == (512, head_dim // 2)
    assert cos.dtype == sin.dtype == torch.float32
    ref_cos, ref_sin = hf_cos_sin(head_dim, base, torch.arange(512))
    torch.testing.assert_close(torch.cat((cos, cos), dim=-1), ref_cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat((sin, sin), dim=-1), ref_sin, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tokens,heads,head_dim", [(1, 1, 16), (5, 4, 16), (9, 2, 64)])
def test_apply_rotary_matches_hf(tokens, heads, head_dim):
    """apply_rotary on [tokens, heads, head_dim] equals apply_rotary_pos_emb on the HF layout."""
    gen = torch.Generator().manual_seed(tokens * heads)
    x = torch.randn(tokens, heads, head_dim, generator=gen)
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    cos, sin = rope_cos_sin(head_dim, 300, 1_000_000.0)
    ours = apply_rotary(x, cos[positions], sin[positions])
    ref_cos, ref_sin = hf_cos_sin(head_dim, 1_000_000.0, positions)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, hf_rotate(x, ref_cos, ref_sin), atol=1e-5, rtol=1e-5)


def test_rotary_module_rotates_q_and_k_with_different_head_counts():
    """RotaryEmbedding rotates q (8 heads) and k (2 heads) by their positions like transformers."""
    gen = torch.Generator().manual_seed(3)
    rope = RotaryEmbedding(32, 64, 1_000_000.0)
    q = torch.randn(6, 8, 32, generator=gen)
    k = torch.randn(6, 2, 32, generator=gen)
    positions = torch.tensor([0, 1, 2, 10, 11, 63])
    q_rot, k_rot = rope(positions, q, k)
    ref_cos, ref_sin = hf_cos_sin(32, 1_000_000.0, positions)
    torch.testing.assert_close(q_rot, hf_rotate(q, ref_cos, ref_sin), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_rot, hf_rotate(k, ref_cos, ref_sin), atol=1e-5, rtol=1e-5)
