"""Lesson 18: QuantizedLinear — filled piece by piece from a checkpoint, and equal to x @ dequantized(W).T.

A quantized layer takes the place of a lesson-10 fused layer: its ``weight_loader`` puts
each checkpoint piece (q_proj, k_proj, ...) in its own columns of the packed tensors, the
way lesson 10's put them in rows of the float matrix.
"""

import pytest
import torch

from aios.layers import quant_kernels
from aios.layers import quantization as qz
from aios.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

SPECS = {"int8": qz.QuantSpec("int8"), "int4": qz.QuantSpec("int4", group_size=32),
         "fp8": qz.QuantSpec("fp8")}


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


def checkpoint_tensors(method: str, weight: torch.Tensor, group_size: int = 32) -> dict:
    """The checkpoint tensors of one projection (names as in the layer's parameters)."""
    if method == "int8":
        qweight, scale = qz.quantize_int8(weight)
        return {"weight": qweight, "weight_scale": scale}
    if method == "int4":
        qweight, qzeros, scales = qz.quantize_int4(weight, group_size)
        return {"qweight": qweight, "qzeros": qzeros, "scales": scales}
    weight, scale_inv = qz.quantize_fp8_block(weight)
    return {"weight": weight, "weight_scale_inv": scale_inv}


def load_piece(layer, tensors: dict, shard_id) -> None:
    for name, tensor in tensors.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor, shard_id)


def dequantized(method, weight, group_size=32):
    tensors = checkpoint_tensors(method, weight, group_size)
    if method == "int8":
        return qz.dequantize_int8(tensors["weight"], tensors["weight_scale"])
    if method == "int4":
        return qz.dequantize_int4(tensors["qweight"], tensors["qzeros"], tensors["scales"], group_size)
    return qz.dequantize_fp8_block(tensors["weight"], tensors["weight_scale_inv"])


@pytest.mark.hint(5)
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_qkv_pieces_land_in_their_columns(method):
    """Loading quantized q_proj, k_proj, v_proj (in any order) gives the layer the dequantized [q; k; v] weight."""
    float_layer = QKVParallelLinear(hidden_size=64, head_dim=16, total_num_heads=4, total_num_kv_heads=2)
    layer = qz.QuantizedLinear.like(float_layer, SPECS[method])
    pieces = {"q": randn(64, 64, seed=1), "k": randn(32, 64, seed=2), "v": randn(32, 64, seed=3)}
    for shard_id in ("v", "q", "k"):
        load_piece(layer, checkpoint_tensors(method, pieces[shard_id]), shard_id)
    expected = torch.cat([dequantized(method, pieces[s]) for s in "qkv"])
    torch.testing.assert_close(layer.dequantized_weight(), expected, rtol=0, atol=1e-6)


@pytest.mark.hint(5)
def test_fp8_gate_up_pieces_keep_their_blocks():
    """FP8 gate_proj and up_proj (128-row multiples) stack with their scale tables: weight rows and scale rows line up."""
    float_layer = MergedColumnParallelLinear(input_size=256, output_sizes=[256, 256])
    layer = qz.QuantizedLinear.like(float_layer, SPECS["fp8"])
    assert layer.weight_scale_inv.shape == (4, 2)
    gate, up = randn(256, 256, seed=4), randn(256, 256, seed=5) * 10  # very different scales
    load_piece(layer, checkpoint_tensors("fp8", up), 1)
    load_piece(layer, checkpoint_tensors("fp8", gate), 0)
    expected = torch.cat([dequantized("fp8", gate), dequantized("fp8", up)])
    torch.testing.assert_close(layer.dequantized_weight(), expected, rtol=0, atol=0)


@pytest.mark.hint(5)
@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_quantized_linear_forward_equals_dequantized_matmul(method, backend):
    """QuantizedLinear(x) == x @ dequantized(W).T with either backend, for a row-parallel (o_proj-like) layer
    (FP8 with Triton is W8A8: x is the per-token quantized activation)."""
    float_layer = RowParallelLinear(128, 64)
    layer = qz.QuantizedLinear.like(float_layer, SPECS[method], backend=backend)
    w = randn(64, 128, seed=6)
    load_piece(layer, checkpoint_tensors(method, w), None)
    x = randn(3, 128, seed=7) * 20
    if method == "fp8" and backend == "triton":  # W8A8: the kernel quantizes x per token and per 128 inputs too
        xq, x_scale = quant_kernels.quantize_fp8_rows(x)
        x = x_scale.repeat_interleave(128, dim=1)[:, :128] * xq.float()
    expected = x @ dequantized(method, w).T
    if backend == "triton" and torch.cuda.is_available():  # compiled (not interpreted) kernels need GPU tensors
        layer, x, expected = layer.cuda(), x.cuda(), expected.cuda()
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)


def test_quantized_linear_bf16_forward_within_bf16_rounding():
    """In bfloat16 the layer's output stays within bf16 rounding of the float32 x @ dequantized(W).T."""
    float_layer = RowParallelLinear(128, 64)
    layer = qz.QuantizedLinear.like(float_layer, SPECS["int4"], backend="torch")
    w = randn(64, 128, seed=8)
    load_piece(layer, checkpoint_tensors("int4", w), None)
    x = randn(4, 128, seed=9) * 20
    out = layer(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), x @ dequantized("int4", w).T, rtol=2e-2, atol=2e-2)


@pytest.mark.hint(5)
def test_int4_column_parallel_ranks_split_the_output_features():
    """With tensor parallelism each column-parallel rank keeps its own share of the packed output columns."""
    w = randn(128, 64, seed=10)
    tensors = checkpoint_tensors("int4", w)
    halves = []
    for rank in range(2):
        float_layer = MergedColumnParallelLinear(64, [64, 64], tp_rank=rank, tp_size=2)
        layer = qz.QuantizedLinear.like(float_layer, SPECS["int4"])
        for shard_id, rows in ((0, slice(0, 64)), (1, slice(64, 128))):
            load_piece(layer, checkpoint_tensors("int4", w[rows]), shard_id)
        halves.append(layer.dequantized_weight())
    full = dequantized("int4", w)
    assert tensors["qweight"].shape == (64, 16)
    torch.testing.assert_close(halves[0], torch.cat([full[0:32], full[64:96]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(halves[1], torch.cat([full[32:64], full[96:128]]), rtol=0, atol=1e-6)


def test_loading_a_float_tensor_into_packed_weights_is_an_error():
    """A float tensor where the format stores int32 codes is a ValueError naming the dtype."""
    layer = qz.QuantizedLinear.like(RowParallelLinear(64, 32), SPECS["int4"])
    with pytest.raises(ValueError, match="dtype"):
        layer.qweight.weight_loader(layer.qweight, torch.zeros(64, 4), None)
