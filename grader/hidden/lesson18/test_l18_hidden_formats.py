"""Lesson 18 (hidden): the formats on values and shapes the visible tests do not try."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.layers import quantization as qz

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.hint(1)
def test_int8_rounds_to_nearest_not_towards_zero():
    """quantize_int8 rounds W / scale to the nearest code: 0.6 of a step is code 1, -0.6 is -1 (a cast would truncate)."""
    w = torch.tensor([[1.27, 0.006, -0.006, 0.004, 0.0149]])
    qweight, scale = qz.quantize_int8(w)
    assert qweight.tolist() == [[127, 1, -1, 0, 1]]


@pytest.mark.hint(1)
def test_int8_negative_extreme_and_zero_rows():
    """A row whose largest magnitude is negative maps it to -127 (never -128); an all-zero row stays zero, finite scale."""
    w = torch.tensor([[-2.54, 1.0, 0.5], [0.0, 0.0, 0.0]])
    qweight, scale = qz.quantize_int8(w)
    assert qweight[0, 0] == -127 and torch.isfinite(scale).all() and scale[1] > 0
    assert (qz.dequantize_int8(qweight, scale)[1] == 0).all()
    torch.testing.assert_close(scale[0], torch.tensor(0.02))


@pytest.mark.hint(1)
def test_int8_dequantize_computes_in_float32_then_casts():
    """dequantize_int8(..., dtype=bfloat16) is the float32 product rounded once to bf16 (not a product of bf16 values)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=gen)
    qweight, scale = qz.quantize_int8(w)
    expected = (qweight.float() * scale[:, None]).to(torch.bfloat16)
    assert torch.equal(qz.dequantize_int8(qweight, scale, torch.bfloat16), expected)


@pytest.mark.hint(2)
def test_unpack_reads_known_words():
    """0x75316420 unpacks to 0..7; -1 (all bits set) to eight 15s; 0x0000000F puts 15 in column 0 only."""
    packed = torch.tensor([[0x75316420, -1, 0xF]], dtype=torch.int32)
    assert qz.unpack_int4_awq(packed).tolist() == [list(range(8)) + [15] * 8 + [15, 0, 0, 0, 0, 0, 0, 0]]


@pytest.mark.hint(2)
def test_column_one_lives_in_nibble_four():
    """In AWQ's order column 1 of a run of eight is stored in bits 16..19: code 9 there is the word 9 << 16."""
    codes = torch.zeros(2, 16, dtype=torch.int32)
    codes[1, 9] = 9  # second run, column 1
    packed = qz.pack_int4_awq(codes)
    assert packed.tolist() == [[0, 0], [0, 9 << 16]]


@pytest.mark.hint(3)
@SETTINGS
@given(out_features=st.sampled_from([8, 24, 40, 72]), groups=st.integers(1, 5),
       group_size=st.sampled_from([16, 32, 128]), shift=st.floats(-2, 2), spread=st.floats(0.001, 3),
       seed=st.integers(0, 2**16))
def test_int4_round_trip_on_awkward_shapes_and_ranges(out_features, groups, group_size, shift, spread, seed):
    """INT4 round trips within scales/2 for odd widths, many groups and groups far from zero, wide or narrow."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, groups * group_size, generator=gen) * spread + shift
    qweight, qzeros, scales = qz.quantize_int4(w, group_size)
    back = qz.dequantize_int4(qweight, qzeros, scales, group_size)
    step = scales.float().repeat_interleave(group_size, dim=0).t()
    assert ((back - w).abs() <= step * 0.51 + 1e-6).all()


@pytest.mark.hint(3)
def test_int4_keeps_exact_zeros_and_uses_the_whole_grid():
    """0.0 dequantizes to exactly 0.0, and a group spanning [-0.75, 0.75] uses codes 0 and 15 (scale 0.1, zero 7 or 8)."""
    w = torch.zeros(8, 32)
    w[:, 1:] = torch.linspace(-0.75, 0.75, 31)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    back = qz.dequantize_int4(qweight, qzeros, scales, 32)
    assert (back[:, 0] == 0).all()
    codes = qz.unpack_int4_awq(qweight)
    assert codes.min() == 0 and codes.max() == 15
    torch.testing.assert_close(scales.float(), torch.full((1, 8), 0.1), rtol=1e-3, atol=0)


@pytest.mark.hint(3)
def test_int4_each_group_keeps_its_own_scale_and_zero():
    """With four groups of very different ranges, each input block is dequantized with its own group's scale and zero."""
    gen = torch.Generator().manual_seed(1)
    w = torch.cat([torch.randn(16, 16, generator=gen) * s + o for s, o in ((0.01, 0), (1, 3), (0.1, -1), (5, 0))], 1)
    qweight, qzeros, scales = qz.quantize_int4(w, 16)
    back = qz.dequantize_int4(qweight, qzeros, scales, 16)
    for g in range(4):
        block = slice(16 * g, 16 * (g + 1))
        assert ((back[:, block] - w[:, block]).abs() <= scales[g].float()[:, None] * 0.51 + 1e-6).all()


@pytest.mark.hint(3)
def test_int4_dequantize_computes_in_float32_then_casts():
    """dequantize_int4(..., dtype=bfloat16) equals the float32 result rounded once to bf16."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(16, 64, generator=gen) + 4
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    expected = qz.dequantize_int4(qweight, qzeros, scales, 32).to(torch.bfloat16)
    assert torch.equal(qz.dequantize_int4(qweight, qzeros, scales, 32, torch.bfloat16), expected)


@pytest.mark.hint(4)
@pytest.mark.parametrize("shape", [(129, 257), (1, 1), (128, 128), (300, 5)])
def test_fp8_blocks_on_ragged_edges(shape):
    """FP8 scale tables cover partial edge blocks: each block's max maps to ±448 and the round trip holds."""
    gen = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=gen) * torch.logspace(-3, 1, shape[1])[None, :]
    weight, scale_inv = qz.quantize_fp8_block(w)
    assert scale_inv.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            block = w[128 * i: 128 * (i + 1), 128 * j: 128 * (j + 1)]
            torch.testing.assert_close(scale_inv[i, j], block.abs().max() / 448)
    back = qz.dequantize_fp8_block(weight, scale_inv)
    per_element = qz.expand_blocks(scale_inv, 128, *shape)
    assert ((back - w).abs() <= w.abs() / 16 + per_element * 2.0**-9).all()


@pytest.mark.hint(4)
def test_fp8_an_all_zero_block_stays_zero():
    """A block of zeros gets a finite, positive scale and dequantizes to zeros (no 0/0)."""
    w = torch.zeros(256, 128)
    w[:128] = 1.0
    weight, scale_inv = qz.quantize_fp8_block(w)
    assert torch.isfinite(scale_inv).all() and (scale_inv > 0).all()
    back = qz.dequantize_fp8_block(weight, scale_inv)
    assert (back[128:] == 0).all() and (back[:128] == 1).all()


@pytest.mark.hint(5)
@pytest.mark.parametrize("method", ["int8", "int4", "fp8"])
def test_row_parallel_ranks_keep_their_input_features(method):
    """Split over two row-parallel ranks (o_proj, down_proj), each rank's weight is its half of the input features."""
    from aios.layers.linear import RowParallelLinear

    spec = qz.QuantSpec(method, group_size=32)
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(64, 256, generator=gen) * 0.05
    if method == "int8":
        tensors = dict(zip(("weight", "weight_scale"), qz.quantize_int8(w)))
        full = qz.dequantize_int8(tensors["weight"], tensors["weight_scale"])
    elif method == "int4":
        tensors = dict(zip(("qweight", "qzeros", "scales"), qz.quantize_int4(w, 32)))
        full = qz.dequantize_int4(tensors["qweight"], tensors["qzeros"], tensors["scales"], 32)
    else:
        tensors = dict(zip(("weight", "weight_scale_inv"), qz.quantize_fp8_block(w)))
        full = qz.dequantize_fp8_block(tensors["weight"], tensors["weight_scale_inv"])
    for rank in range(2):
        layer = qz.QuantizedLinear.like(RowParallelLinear(256, 64, tp_rank=rank, tp_size=2), spec)
        for name, tensor in tensors.items():
            param = getattr(layer, name)
            param.weight_loader(param, tensor, None)
        torch.testing.assert_close(layer.dequantized_weight(), full[:, 128 * rank: 128 * (rank + 1)], rtol=0, atol=1e-6)
