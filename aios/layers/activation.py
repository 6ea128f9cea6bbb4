"""The gated activation of Qwen3's MLP."""

import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's gate: silu(gate) * up. gate, up: [..., intermediate]."""
    raise NotImplementedError("Lesson 1: implement silu_and_mul in aios/layers/activation.py — see exercises/lesson01/README.md, 'What to implement'")


class SiluAndMul(nn.Module):
    """Takes the fused [gate | up] projection, [..., 2 * intermediate], and applies silu(gate) * up."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return silu_and_mul(gate, up)
