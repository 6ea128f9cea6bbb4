"""Lesson 18's FP8 W8A8 path (reference code, not an exercise): per-token activation quantization and the
block-scaled e4m3 matmul, against the plain-torch product. On the CPU the kernel runs in Triton's
interpreter; tests/lesson18/test_l18_gpu.py runs it at Qwen3-8B shapes on a GPU.
"""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def weight_and_input(out_features, in_features, tokens, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=gen) * 0.05, torch.randn(tokens, in_features, generator=gen)


def test_fp8_rows_quantize_per_token_and_per_block():
    """quantize_fp8_rows: one scale per [1, 128] slice of a row (max |x| / 448), zero rows stay zero, x ~= xq * scale."""
    x = torch.randn(3, 300, generator=torch.Generator().manual_seed(3)) * torch.tensor([[1.0], [50.0], [0.0]])
    xq, scale = quant_kernels.quantize_fp8_rows(x.to(DEVICE))
    xq, scale = xq.cpu(), scale.cpu()
    assert xq.dtype == torch.float8_e4m3fn and xq.shape == (3, 300) and scale.shape == (3, 3)
    for g in range(3):
        piece = x[:, g * 128:(g + 1) * 128]
        expected = torch.where(piece.abs().amax(1) > 0, piece.abs().amax(1) / 448, torch.ones(3))
        torch.testing.assert_close(scale[:, g], expected)
    back = xq.float() * scale.repeat_interleave(128, dim=1)[:, :300]
    torch.testing.assert_close(back, x, rtol=0.07, atol=1e-6)  # e4m3 keeps 3 mantissa bits
    assert back[2].abs().max() == 0


@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_fp8_block_matmul_is_w8a8(tokens):
    """fp8_block_matmul == (per-token quantized x) @ dequantize_fp8_block(W).T, K and N not block multiples."""
    w, x = weight_and_input(200, 300, tokens, seed=tokens)
    weight, scale_inv = qz.quantize_fp8_block(w)
    out = quant_kernels.fp8_block_matmul(x.to(DEVICE), weight.to(DEVICE), scale_inv.to(DEVICE)).cpu()
    assert out.shape == (tokens, 200) and out.dtype == torch.float32
    xq, x_scale = quant_kernels.quantize_fp8_rows(x.to(DEVICE))
    x_seen = xq.cpu().float() * x_scale.cpu().repeat_interleave(128, dim=1)[:, :300]
    torch.testing.assert_close(out, x_seen @ qz.dequantize_fp8_block(weight, scale_inv).T, rtol=1e-4, atol=1e-4)
    assert (out - x @ w.T).abs().max() < 0.1 * (x @ w.T).abs().max()  # and close to the float product


@pytest.mark.parametrize("tokens,split_k", [(1, 2), (3, 3), (5, 7)])
def test_fp8_block_matmul_split_k(tokens, split_k):
    """Decode shapes split the K blocks over programs (float32 partial sums added after): same result as one
    program per tile, K = 300 (three blocks, the last one short) cut into up to split_k runs of blocks."""
    w, x = weight_and_input(72, 300, tokens, seed=10 + tokens)
    weight, scale_inv = (t.to(DEVICE) for t in qz.quantize_fp8_block(w))
    whole = quant_kernels.fp8_block_matmul(x.to(DEVICE), weight, scale_inv, split_k=1).cpu()
    split = quant_kernels.fp8_block_matmul(x.to(DEVICE), weight, scale_inv, split_k=split_k).cpu()
    assert split.shape == (tokens, 72) and split.dtype == torch.float32
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
