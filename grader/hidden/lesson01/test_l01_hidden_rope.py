"""Hidden lesson 1 tests: RoPE tables at real Qwen3 sizes and the properties that make RoPE work."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding, apply_rotary_pos_emb

from aios.layers.rotary_embedding import apply_rotary, rope_cos_sin


def hf_cos_sin(head_dim: int, base: float, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    config = Qwen3Config(
        hidden_size=4 * head_dim, num_attention_heads=4, num_key_value_heads=4, head_dim=head_dim,
        max_position_embeddings=int(positions.max()) + 1, rope_parameters={"rope_type": "default", "rope_theta": base},
    )
    cos, sin = Qwen3RotaryEmbedding(config)(torch.zeros(1), positions[None])
    return cos[0], sin[0]


@pytest.mark.hint(3)
def test_rope_table_covers_qwen3_context_length():
    """rope_cos_sin(128, 40960, 1e6) matches transformers at far positions (Qwen3's full context)."""
    cos, sin = rope_cos_sin(128, 40960, 1_000_000.0)
    assert cos.shape == (40960, 64)
    positions = torch.tensor([0, 1, 2, 777, 4096, 32767, 40959])
    ref_cos, ref_sin = hf_cos_sin(128, 1_000_000.0, positions)
    # Angles reach ~4e4 radians here; float32 rounding of the frequencies alone moves them by ~1e-3.
    torch.testing.assert_close(cos[positions], ref_cos[:, :64], atol=1e-2, rtol=0)
    torch.testing.assert_close(sin[positions], ref_sin[:, :64], atol=1e-2, rtol=0)


@pytest.mark.hint(3)
def test_rope_first_column_is_the_position_in_radians():
    """The first frequency is 1 (angle = position) and the last is the slowest: base ** (-(d-2)/d)."""
    cos, sin = rope_cos_sin(8, 16, 10_000.0)
    positions = torch.arange(16, dtype=torch.float32)
    torch.testing.assert_close(cos[:, 0], positions.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[:, 0], positions.sin(), atol=1e-6, rtol=0)
    slowest = 10_000.0 ** (-6 / 8)
    torch.testing.assert_close(sin[:, 3], (positions * slowest).sin(), atol=1e-6, rtol=0)


@pytest.mark.hint(4)
def test_apply_rotary_pairs_first_half_with_second_half():
    """Rotate-half layout: dimension i pairs with i + head_dim/2 (not with its neighbour i + 1)."""
    head_dim = 8
    cos, sin = rope_cos_sin(head_dim, 8, 10_000.0)
    x = torch.zeros(1, 1, head_dim)
    x[0, 0, 0] = 1.0
    out = apply_rotary(x, cos[5:6], sin[5:6])[0, 0]
    expected = torch.zeros(head_dim)
    expected[0], expected[head_dim // 2] = math.cos(5.0), math.sin(5.0)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.hint(4)
def test_apply_rotary_position_zero_is_identity_and_keeps_dtype():
    """At position 0 nothing rotates; bfloat16 in gives bfloat16 out."""
    x = torch.randn(3, 2, 32, generator=torch.Generator().manual_seed(0)).bfloat16()
    cos, sin = rope_cos_sin(32, 4, 1_000_000.0)
    out = apply_rotary(x, cos[[0, 0, 0]], sin[[0, 0, 0]])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x, atol=0, rtol=0)


@pytest.mark.hint(4)
def test_apply_rotary_bf16_close_to_hf_float32():
    """apply_rotary on bfloat16 q matches transformers' float32 rotation within bf16 rounding."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, 64, generator=gen).bfloat16()
    positions = torch.tensor([0, 3, 9, 100, 511, 512, 1000])
    cos, sin = rope_cos_sin(64, 1024, 1_000_000.0)
    out = apply_rotary(x, cos[positions], sin[positions])
    ref_cos, ref_sin = hf_cos_sin(64, 1_000_000.0, positions)
    x_hf = x.float().transpose(0, 1)[None]
    ref, _ = apply_rotary_pos_emb(x_hf, x_hf, ref_cos[None], ref_sin[None])
    torch.testing.assert_close(out.float(), ref[0].transpose(0, 1), atol=3e-2, rtol=2e-2)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 500),
    head_dim=st.sampled_from([8, 16, 64]), seed=st.integers(0, 2**16),
)
@pytest.mark.hint(4)
def test_rotated_dot_product_depends_only_on_distance(m, n, shift, head_dim, seed):
    """<rot(q, m), rot(k, n)> is unchanged when both positions move by the same shift; norms are kept."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, head_dim, generator=gen)
    cos, sin = rope_cos_sin(head_dim, 1001, 10_000.0)

    def rot(x, p):
        return apply_rotary(x, cos[p : p + 1], sin[p : p + 1])[0, 0]

    before = torch.dot(rot(q, m), rot(k, n))
    after = torch.dot(rot(q, m + shift), rot(k, n + shift))
    torch.testing.assert_close(after, before, atol=1e-3 * head_dim, rtol=1e-3)
    torch.testing.assert_close(rot(q, m).norm(), q.norm(), atol=1e-4, rtol=1e-4)
