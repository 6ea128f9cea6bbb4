"""Lesson 18: the three weight formats — quantize, dequantize, and the exact bits they are stored in.

Each round trip is checked against the format's own error bound (half a quantization step
for the integer formats, e4m3's relative rounding for FP8), on shapes hypothesis picks,
and each layout against facts about the real checkpoints (AWQ's nibble order, the FP8
scale table's shape).
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.layers import quantization as qz

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def transformers_fp8_dequantize():
    """transformers' FP8 block dequantization (``_dequantize_fp8_weight``), or None when this version has none."""
    try:
        from transformers.integrations import finegrained_fp8
    except Exception:  # noqa: BLE001 (any import problem means: not available here)
        return None
    return getattr(finegrained_fp8, "_dequantize_fp8_weight", None)


def random_weight(out_features: int, in_features: int, seed: int, scale: float = 0.05) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out_features, in_features, generator=gen) * scale


# ------------------------------------------------------------------ INT8


@pytest.mark.hint(1)
@SETTINGS
@given(out_features=st.integers(1, 40), in_features=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_int8_round_trip_within_half_a_step(out_features, in_features, seed):
    """dequantize_int8(quantize_int8(W)) is within scale/2 of W, element by element; codes stay in -127..127."""
    w = random_weight(out_features, in_features, seed)
    qweight, scale = qz.quantize_int8(w)
    assert qweight.dtype == torch.int8 and qweight.shape == w.shape
    assert scale.shape == (out_features,) and scale.dtype == torch.float32
    assert int(qweight.min()) >= -127 and int(qweight.max()) <= 127
    back = qz.dequantize_int8(qweight, scale)
    assert back.dtype == torch.float32
    assert ((back - w).abs() <= scale[:, None] / 2 * (1 + 1e-5) + 1e-12).all()


@pytest.mark.hint(1)
def test_int8_scale_is_absmax_over_127_per_output_row():
    """scale[o] = max |W[o, :]| / 127 (one per output channel, symmetric), so each row's largest value maps to ±127."""
    w = torch.tensor([[0.5, -1.27, 0.0], [2.54, 1.0, -0.3]])
    qweight, scale = qz.quantize_int8(w)
    torch.testing.assert_close(scale, torch.tensor([0.01, 0.02]))
    assert qweight.tolist() == [[50, -127, 0], [127, 50, -15]]


# ------------------------------------------------------------------ INT4, AWQ layout


@pytest.mark.hint(2)
def test_awq_packing_order_is_interleaved():
    """Eight codes 0..7 pack into 0x75316420: nibble k (bits 4k..4k+3) holds column AWQ_ORDER[k] = 0,2,4,6,1,3,5,7."""
    packed = qz.pack_int4_awq(torch.arange(8, dtype=torch.int32).view(1, 8))
    assert packed.dtype == torch.int32 and packed.shape == (1, 1)
    assert int(packed) == 0x75316420


@pytest.mark.hint(2)
def test_awq_pack_handles_the_sign_bit_and_unpacks_back():
    """Codes of 8..15 in the top nibble make the int32 negative; unpack_int4_awq still gives every code back."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (5, 24), generator=gen, dtype=torch.int32)
    codes[0, 7] = 15  # column 7 sits in the top nibble: the int32 is negative
    packed = qz.pack_int4_awq(codes)
    assert packed.shape == (5, 3) and int(packed[0, 0]) < 0
    assert torch.equal(qz.unpack_int4_awq(packed), codes)


@pytest.mark.hint(3)
@SETTINGS
@given(packs=st.integers(1, 6), groups=st.integers(1, 3), group_size=st.sampled_from([32, 64, 128]),
       seed=st.integers(0, 2**16), offset=st.floats(-0.1, 0.1))
def test_int4_round_trip_within_half_a_step(packs, groups, group_size, seed, offset):
    """dequantize_int4(quantize_int4(W)) is within scales/2 of W (AWQ shapes: qweight [in, out/8], scales [in/g, out])."""
    out_features, in_features = 8 * packs, groups * group_size
    w = random_weight(out_features, in_features, seed) + offset  # groups that are not centred on zero
    qweight, qzeros, scales = qz.quantize_int4(w, group_size)
    assert qweight.shape == (in_features, out_features // 8) and qweight.dtype == torch.int32
    assert qzeros.shape == (groups, out_features // 8) and qzeros.dtype == torch.int32
    assert scales.shape == (groups, out_features) and scales.dtype == torch.float16
    back = qz.dequantize_int4(qweight, qzeros, scales, group_size)
    assert back.shape == w.shape
    step = scales.float().repeat_interleave(group_size, dim=0).t()  # [out, in], each element's own scale
    assert ((back - w).abs() <= step * 0.51 + 1e-6).all()


@pytest.mark.hint(3)
def test_int4_groups_run_along_the_input_features():
    """A group is group_size consecutive *input* features of one output row: a row whose halves differ 100x gets two scales."""
    w = torch.zeros(8, 64)
    w[:, :32] = torch.linspace(-0.01, 0.01, 32)
    w[:, 32:] = torch.linspace(-1.0, 1.0, 32)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    assert scales.shape == (2, 8)
    assert (scales[0].float() < 0.01).all() and (scales[1].float() > 0.1).all()
    back = qz.dequantize_int4(qweight, qzeros, scales, 32)
    assert (back[:, :32] - w[:, :32]).abs().max() < 0.001  # the small half kept its precision


@pytest.mark.hint(3)
def test_int4_zero_points_shift_the_grid():
    """A group of positive values only (min 0, max 1.5) needs zero point 0; a negative-only one zero point 15."""
    w = torch.zeros(8, 32)
    w[0] = torch.linspace(0.0, 1.5, 32)
    w[1] = torch.linspace(-1.5, 0.0, 32)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    zeros = qz.unpack_int4_awq(qzeros)
    assert zeros[0, 0] == 0 and zeros[0, 1] == 15
    torch.testing.assert_close(scales[0, :2].float(), torch.tensor([0.1, 0.1]), rtol=1e-3, atol=0)
    back = qz.dequantize_int4(qweight, qzeros, scales, 32)
    assert (back - w).abs().max() <= 0.05 + 1e-4


def awq_reference_dequantize(qweight, qzeros, scales, group_size):
    """The AWQ 'gemm' layout read bit by bit, written independently of the lesson's code."""
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    in_features, packs = qweight.shape
    out = torch.empty(in_features, packs * 8)
    for pack in range(packs):
        for nibble, column in enumerate(order):
            n = 8 * pack + column
            q = (qweight[:, pack] >> (4 * nibble)) & 0xF
            z = ((qzeros[:, pack] >> (4 * nibble)) & 0xF).repeat_interleave(group_size)
            s = scales[:, n].float().repeat_interleave(group_size)
            out[:, n] = (q - z).float() * s
    return out.t()


@pytest.mark.hint(3)
def test_int4_tensors_read_as_awq_reads_them():
    """quantize_int4's tensors, read bit by bit the way AWQ checkpoints are read, give W back within half a step."""
    w = random_weight(16, 128, seed=3)
    qweight, qzeros, scales = qz.quantize_int4(w, 64)
    reference = awq_reference_dequantize(qweight, qzeros, scales, 64)
    torch.testing.assert_close(qz.dequantize_int4(qweight, qzeros, scales, 64), reference, rtol=0, atol=1e-6)
    assert (reference - w).abs().max() <= scales.float().max() * 0.51


# ------------------------------------------------------------------ FP8 blocks


@pytest.mark.hint(4)
@SETTINGS
@given(out_features=st.integers(1, 300), in_features=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_fp8_block_round_trip_within_e4m3_rounding(out_features, in_features, seed):
    """W -> (e4m3 weight, weight_scale_inv [ceil(out/128), ceil(in/128)]) -> W within e4m3's rounding (1/16 relative)."""
    w = random_weight(out_features, in_features, seed)
    weight, scale_inv = qz.quantize_fp8_block(w)
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == w.shape
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (-(-out_features // 128), -(-in_features // 128))
    back = qz.dequantize_fp8_block(weight, scale_inv)
    per_element = qz.expand_blocks(scale_inv, 128, out_features, in_features)
    assert ((back - w).abs() <= w.abs() / 16 + per_element * 2.0**-9).all()


@pytest.mark.hint(4)
def test_fp8_scale_inv_maps_each_block_max_to_448():
    """weight_scale_inv[i, j] = max |block (i, j)| / 448: the largest value of every block is stored as ±448."""
    w = torch.zeros(200, 130)
    w[5, 7], w[150, 3], w[10, 129], w[199, 128] = 4.48, -8.96, 0.448, 1.0
    weight, scale_inv = qz.quantize_fp8_block(w)
    torch.testing.assert_close(scale_inv, torch.tensor([[0.01, 0.001], [0.02, 1.0 / 448]]))
    assert weight[5, 7].float() == 448 and weight[150, 3].float() == -448


@pytest.mark.skipif(transformers_fp8_dequantize() is None, reason="this transformers has no CPU FP8 dequantization helper")
def test_fp8_dequantize_matches_transformers():
    """Our FP8 dequantization equals transformers' own for Qwen3-FP8-style block scales (skipped without it)."""
    w = random_weight(300, 260, seed=4)
    weight, scale_inv = qz.quantize_fp8_block(w)
    theirs = transformers_fp8_dequantize()(weight.clone(), scale_inv, [128, 128], torch.float32)
    torch.testing.assert_close(qz.dequantize_fp8_block(weight, scale_inv), theirs, rtol=0, atol=0)
