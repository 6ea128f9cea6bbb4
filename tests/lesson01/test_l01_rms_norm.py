"""Lesson 1: ``rms_norm`` against transformers' ``Qwen3RMSNorm``."""

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

from aios.layers.layernorm import RMSNorm, rms_norm


def hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen3RMSNorm with the given weight."""
    norm = Qwen3RMSNorm(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        return norm(x)


@pytest.mark.hint(2)
@pytest.mark.parametrize("shape", [(1, 64), (7, 64), (3, 5, 128), (2, 16)])
def test_rms_norm_matches_hf_fp32(shape):
    """rms_norm in float32 matches Qwen3RMSNorm to 1e-6 for several shapes."""
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 3
    weight = torch.randn(shape[-1], generator=gen)
    out = rms_norm(x, weight, 1e-6)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, hf_rms_norm(x, weight, 1e-6), atol=1e-6, rtol=1e-6)


@pytest.mark.hint(2)
def test_rms_norm_bf16_matches_hf():
    """rms_norm on bfloat16 input returns bfloat16 and matches Qwen3RMSNorm (bf16 tolerance)."""
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(6, 256, generator=gen) * 2).bfloat16()
    weight = (1 + 0.1 * torch.randn(256, generator=gen)).bfloat16()
    out = rms_norm(x, weight, 1e-6)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, hf_rms_norm(x, weight, 1e-6), atol=1e-2, rtol=1.6e-2)


@pytest.mark.hint(2)
def test_rms_norm_module_uses_its_weight_and_eps():
    """The RMSNorm module (weight, eps) gives the same result as Qwen3RMSNorm."""
    gen = torch.Generator().manual_seed(2)
    norm = RMSNorm(32, eps=1e-2)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32, generator=gen))
    x = torch.randn(4, 32, generator=gen) * 0.05  # small values: eps matters
    with torch.no_grad():
        out = norm(x)
    torch.testing.assert_close(out, hf_rms_norm(x, norm.weight.detach(), 1e-2), atol=1e-6, rtol=1e-6)
