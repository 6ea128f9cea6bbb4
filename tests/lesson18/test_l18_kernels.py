"""Lesson 18: the Triton matmuls that dequantize inside the product, against x @ dequantized(W).T.

On the CPU the kernels run in Triton's interpreter, so the shapes stay small; decode
(M = 1) and prefill (M > 16, the other tile configuration) shapes are both tried.
tests/lesson18/test_l18_gpu.py runs real shapes in bfloat16 on a GPU.
"""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def weight_and_input(out_features, in_features, tokens, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    x = torch.randn(tokens, in_features, generator=gen).to(dtype)
    return w, x


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 5, 33])
def test_int8_matmul_equals_dequantized_matmul(tokens):
    """int8_matmul(x, q, scale) == x @ dequantize_int8(q, scale).T (fp32, decode and prefill shapes, K not a tile multiple)."""
    w, x = weight_and_input(48, 200, tokens, seed=tokens)
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x.to(DEVICE), qweight.to(DEVICE), scale.to(DEVICE))
    assert out.shape == (tokens, 48) and out.dtype == torch.float32
    expected = x @ qz.dequantize_int8(qweight, scale).T
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens,group_size", [(1, 128), (3, 32), (40, 64)])
def test_int4_matmul_equals_dequantized_matmul(tokens, group_size):
    """int4_matmul(x, qweight, qzeros, scales) == x @ dequantize_int4(...).T for decode and prefill shapes."""
    w, x = weight_and_input(72, 256, tokens, seed=tokens)
    qweight, qzeros, scales = qz.quantize_int4(w, group_size)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE),
                                    group_size)
    assert out.shape == (tokens, 72) and out.dtype == torch.float32
    expected = x @ qz.dequantize_int4(qweight, qzeros, scales, group_size).T
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(6)
def test_int4_matmul_in_half_precision_keeps_the_input_dtype():
    """In float16 the kernel returns float16 within half-precision rounding of the float32 reference."""
    w, x = weight_and_input(64, 128, 4, seed=9, dtype=torch.float16)
    qweight, qzeros, scales = qz.quantize_int4(w, 64)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 64)
    assert out.dtype == torch.float16
    expected = x.float() @ qz.dequantize_int4(qweight, qzeros, scales, 64).T
    torch.testing.assert_close(out.float().cpu(), expected, rtol=2e-2, atol=2e-3)


@pytest.mark.hint(6)
@pytest.mark.parametrize("split_k", [2, 3])
def test_split_k_partial_sums_add_up(split_k):
    """With the K loop cut into split_k slices (program axis 2), both kernels still give x @ dequantized(W).T."""
    w, x = weight_and_input(40, 192, 1, seed=split_k)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 32,
                                    split_k=split_k)
    torch.testing.assert_close(out.cpu(), x @ qz.dequantize_int4(qweight, qzeros, scales, 32).T, rtol=1e-4, atol=1e-4)
    q8, scale = qz.quantize_int8(w)
    out8 = quant_kernels.int8_matmul(x.to(DEVICE), q8.to(DEVICE), scale.to(DEVICE), split_k=split_k)
    torch.testing.assert_close(out8.cpu(), x @ qz.dequantize_int8(q8, scale).T, rtol=1e-4, atol=1e-4)

