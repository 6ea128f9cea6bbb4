"""Lesson 18 on a GPU: the kernels at Qwen3-8B shapes in bfloat16, and the quantized engines end to end.

Skipped without CUDA (the CPU runs the same kernels under Triton's interpreter in
tests/lesson18/test_l18_kernels.py, on small shapes).
"""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz

pytestmark = pytest.mark.gpu

# (in_features, out_features) of Qwen3-8B's qkv_proj, o_proj, gate_up_proj and down_proj.
QWEN3_8B_LINEARS = [(4096, 6144), (4096, 4096), (4096, 24576), (12288, 4096)]


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 7, 256])
@pytest.mark.parametrize("in_features,out_features", QWEN3_8B_LINEARS[:2] + QWEN3_8B_LINEARS[3:])
def test_int4_kernel_at_qwen3_8b_shapes(tokens, in_features, out_features):
    """int4_matmul in bf16 equals the float32 x @ dequantized(W).T within bf16 rounding."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(out_features, in_features, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, in_features, device="cuda", generator=gen).to(torch.bfloat16)
    qweight, qzeros, scales = qz.quantize_int4(w, 128)
    out = quant_kernels.int4_matmul(x, qweight, qzeros, scales, 128)
    expected = x.float() @ qz.dequantize_int4(qweight, qzeros, scales, 128).T
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.hint(6)
@pytest.mark.parametrize("tokens", [1, 256])
def test_int8_kernel_at_a_qwen3_8b_shape(tokens):
    """int8_matmul in bf16 equals the float32 x @ dequantized(W).T within bf16 rounding (down_proj's shape)."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(4096, 12288, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, 12288, device="cuda", generator=gen).to(torch.bfloat16)
    qweight, scale = qz.quantize_int8(w)
    out = quant_kernels.int8_matmul(x, qweight, scale)
    expected = x.float() @ qz.dequantize_int8(qweight, scale).T
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("tokens", [1, 7, 256])
@pytest.mark.parametrize("in_features,out_features", QWEN3_8B_LINEARS)
def test_fp8_w8a8_kernel_at_qwen3_8b_shapes(tokens, in_features, out_features):
    """fp8_block_matmul in bf16 equals the float32 product of the per-token quantized x and the dequantized W."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    gen = torch.Generator(device="cuda").manual_seed(2)
    w = torch.randn(out_features, in_features, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, in_features, device="cuda", generator=gen).to(torch.bfloat16)
    weight, scale_inv = qz.quantize_fp8_block(w)
    out = quant_kernels.fp8_block_matmul(x, weight, scale_inv)
    xq, x_scale = quant_kernels.quantize_fp8_rows(x)
    x_seen = xq.float() * x_scale.repeat_interleave(128, dim=1)[:, :in_features]
    expected = x_seen @ qz.dequantize_fp8_block(weight, scale_inv).T
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_quantized_engine_generates_on_the_gpu(method):
    """LLM(quantization=method) on the trained model, with CUDA graphs and Triton attention, generates text."""
    from l18_quality import TRAINED

    from aios.llm import LLM
    from aios.sampling_params import SamplingParams

    if method == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    llm = LLM(TRAINED, quantization=method, dtype="bfloat16", max_num_seqs=8, max_model_len=256,
              async_scheduling=False)  # lesson 18 needs lessons <= 15 only, not lesson 17's loop
    try:
        outputs = llm.generate(["Once upon a time", "You will"], SamplingParams(temperature=0.0, max_tokens=16),
                               use_tqdm=False)
        assert all(len(out["token_ids"]) > 0 for out in outputs)
    finally:
        llm.shutdown()
