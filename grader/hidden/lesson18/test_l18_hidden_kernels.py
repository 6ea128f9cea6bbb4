"""Lesson 18 (hidden): the quantized matmul kernels on ragged shapes and strided inputs."""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def data(out_features, in_features, tokens, seed, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05 + offset
    x = torch.randn(tokens, in_features, generator=gen)
    return w, x


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 17])
def test_int8_matmul_ragged_n_and_k(tokens):
    """int8_matmul with N = 40 and K = 100 (neither a multiple of a tile) equals the dequantized matmul."""
    w, x = data(40, 100, tokens, seed=tokens)
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x.to(DEVICE), qweight.to(DEVICE), scale.to(DEVICE)).cpu()
    torch.testing.assert_close(out, x @ qz.dequantize_int8(qweight, scale).T, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(6)
def test_int8_matmul_scales_each_output_column():
    """Rows of W with scales 1000x apart come out right (the scale is per output column, applied once)."""
    w, x = data(64, 64, 3, seed=5)
    w[::2] *= 1000
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x.to(DEVICE), qweight.to(DEVICE), scale.to(DEVICE)).cpu()
    torch.testing.assert_close(out, x @ qz.dequantize_int8(qweight, scale).T, rtol=1e-4, atol=1e-3)


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 20])
def test_int4_matmul_ragged_n_several_groups(tokens):
    """int4_matmul with N = 40 (a partial column tile) and three groups of 32 with their own zero points."""
    w, x = data(40, 96, tokens, seed=10 + tokens, offset=0.03)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 32).cpu()
    torch.testing.assert_close(out, x @ qz.dequantize_int4(qweight, qzeros, scales, 32).T, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(6)
def test_int4_matmul_reads_a_strided_input():
    """x may be a column slice of a wider tensor (its row stride is not K): the result is still x @ W.T."""
    w, wide = data(64, 128, 5, seed=3)
    wide = torch.cat([wide, torch.randn(5, 64)], dim=1)
    x = wide[:, :128]
    assert not x.is_contiguous()
    qweight, qzeros, scales = qz.quantize_int4(w, 64)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 64).cpu()
    torch.testing.assert_close(out, x @ qz.dequantize_int4(qweight, qzeros, scales, 64).T, rtol=1e-4, atol=1e-4)


@pytest.mark.hint(6)
def test_int4_matmul_kernel_uses_awq_nibble_order():
    """A weight where only output column 1 is non-zero (stored in nibble 4) gives output only in column 1."""
    codes = torch.full((32, 8), 8, dtype=torch.int32)
    codes[:, 1] = 12
    qweight = qz.pack_int4_awq(codes)
    qzeros = qz.pack_int4_awq(torch.full((1, 8), 8, dtype=torch.int32))
    scales = torch.full((1, 8), 0.5, dtype=torch.float16)
    x = torch.ones(1, 32)
    out = quant_kernels.int4_matmul(x.to(DEVICE), qweight.to(DEVICE), qzeros.to(DEVICE), scales.to(DEVICE), 32).cpu()
    assert out.tolist() == [[0, 64, 0, 0, 0, 0, 0, 0]]


@pytest.mark.hint(6)
def test_split_k_with_a_ragged_last_slice_in_half_precision():
    """int8_matmul, K = 300 cut into 3 slices (the last one short), float16 in and out."""
    w, x = data(24, 300, 2, seed=8)
    x = x.half()
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x.to(DEVICE), qweight.to(DEVICE), scale.to(DEVICE), split_k=3).cpu()
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), x.float() @ qz.dequantize_int8(qweight, scale).T, rtol=2e-2, atol=2e-3)
