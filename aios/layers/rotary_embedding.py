"""Rotary position embedding (RoPE) with a precomputed cos/sin table."""

import torch
from torch import nn


def rope_cos_sin(head_dim: int, max_positions: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Precompute the rotation table.

    Returns (cos, sin), each [max_positions, head_dim // 2] in float32, where
    angle[p, i] = p * base ** (-2i / head_dim).
    """
    # Hint: inverse frequencies first, then an outer product with the positions.
    raise NotImplementedError("Lesson 1: implement rope_cos_sin in aios/layers/rotary_embedding.py — see exercises/lesson01/README.md, 'What to implement'")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x by its positions' angles, in Qwen3's "rotate half" layout.

    x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim // 2].
    The first half of each head pairs with the second half:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
    """
    # Hint: cos and sin need a heads axis to broadcast: cos.unsqueeze(1).
    raise NotImplementedError("Lesson 1: implement apply_rotary in aios/layers/rotary_embedding.py — see exercises/lesson01/README.md, 'What to implement'")


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin table and rotates queries and keys by position."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        cos, sin = rope_cos_sin(head_dim, max_positions, base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions: [tokens]; q: [tokens, q_heads, head_dim]; k: [tokens, kv_heads, head_dim]."""
        cos, sin = self.cos[positions], self.sin[positions]
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
