"""RMSNorm, plain (lesson 1) and fused with the residual add (lesson 5)."""

import torch
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension.

    x: [..., hidden]; weight: [hidden]. Returns a tensor shaped and typed like x.
    The statistics are computed in float32 whatever x's dtype, as Qwen3 does.
    """
    # Hint: upcast to float32, divide by sqrt(mean(x^2) + eps), cast back, then scale by weight.
    raise NotImplementedError("Lesson 1: implement rms_norm in aios/layers/layernorm.py — see exercises/lesson01/README.md, 'What to implement'")


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the residual stream, then normalise, in one pass.

    x, residual: [tokens, hidden]. Returns (normed, new_residual) where
    new_residual = x + residual and normed = rms_norm(new_residual).
    Fusing saves one full read and write of the hidden states per layer.
    """
    # Hint: the sum is the new residual stream; the next norm reads it straight away.
    raise NotImplementedError("Lesson 5: implement add_rms_norm in aios/layers/layernorm.py — see exercises/lesson05/README.md, 'What to implement'")


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel scale.

    ``forward(x)`` normalises; ``forward(x, residual)`` first adds the residual
    and returns ``(normed, x + residual)`` (the fused form of lesson 5).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return rms_norm(x, self.weight, self.eps)
        return add_rms_norm(x, residual, self.weight, self.eps)
