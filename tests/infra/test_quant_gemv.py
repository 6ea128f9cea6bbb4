"""Lesson 18's decode GEMV kernels (reference code, not an exercise: solutions/aios/layers/quant_gemv.py).

Each equals x @ dequantized(W).T for any shape, row count, tile size, split count and conversion
(bit trick or conversion instructions); the dispatchers send decode-sized inputs to them and larger
ones to the lesson's tl.dot kernels. On the CPU the kernels run in Triton's interpreter, so the
shapes stay small; the GPU tests run Qwen3-8B shapes in bf16.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.layers import quant_gemv, quant_kernels
from aios.layers import quantization as qz

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPLITS = st.sampled_from([None, 1, 2, 3, 5])


def weight_and_input(out_features, in_features, tokens, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen) * 0.05
    x = torch.randn(tokens, in_features, generator=gen).to(dtype)
    return w, x


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


@SETTINGS
@given(words=st.integers(1, 10), group=st.sampled_from([16, 32, 64]), groups=st.integers(1, 3),
       tokens=st.integers(1, 8), block_n=st.sampled_from([16, 32, 64]), block_k=st.sampled_from([16, 32, 128]),
       splits=SPLITS, magic=st.booleans(), wide=st.booleans(), fused=st.booleans(), seed=st.integers(0, 99))
def test_int4_gemv_equals_dequantized_matmul(words, group, groups, tokens, block_n, block_k, splits, magic, wide, fused,
                                             seed):
    """int4_gemv == x @ dequantize_int4(...).T: N = 8 * words (ragged against the tile), several groups, M = 1..8."""
    N, K = 8 * words, group * groups
    w, x = weight_and_input(N, K, tokens, seed)
    qweight, qzeros, scales = qz.quantize_int4(w, group)
    cfg = quant_gemv.GemvConfig(block_n=block_n, block_k=block_k, splits=splits, magic=magic, wide_loads=wide,
                                fused_sum=fused)
    out = quant_gemv.int4_gemv(*on_device(x, qweight, qzeros, scales), group, cfg).cpu()
    assert out.shape == (tokens, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, x @ qz.dequantize_int4(qweight, qzeros, scales, group).T, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(N=st.integers(1, 70), K=st.integers(1, 300), tokens=st.integers(1, 8), block_n=st.sampled_from([16, 32]),
       block_k=st.sampled_from([32, 64, 128]), splits=SPLITS, magic=st.booleans(), fused=st.booleans(),
       seed=st.integers(0, 99))
def test_int8_gemv_equals_dequantized_matmul(N, K, tokens, block_n, block_k, splits, magic, fused, seed):
    """int8_gemv == x @ dequantize_int8(...).T for ragged N and K (K % 4 != 0 takes the int8-tile path), M = 1..8."""
    w, x = weight_and_input(N, K, tokens, seed)
    qweight, scale = qz.quantize_int8(w)
    cfg = quant_gemv.GemvConfig(block_n=block_n, block_k=block_k, splits=splits, magic=magic, fused_sum=fused)
    out = quant_gemv.int8_gemv(*on_device(x, qweight, scale), cfg).cpu()
    assert out.shape == (tokens, N) and out.dtype == torch.float32
    torch.testing.assert_close(out, x @ qz.dequantize_int8(qweight, scale).T, rtol=1e-4, atol=1e-4)


def test_int8_magic_conversion_covers_every_code():
    """The bit-trick conversion reads each of the 255 codes -127..127 (and -128) in every byte of a word exactly."""
    codes = torch.arange(-128, 128, dtype=torch.int8).reshape(1, 256).repeat(4, 1)
    codes[1] = codes[1].roll(1)  # each code in another byte of its word
    codes[2] = codes[2].roll(2)
    codes[3] = codes[3].roll(3)
    scale = torch.ones(4)
    x = torch.eye(256)  # row m picks column m: out[m, n] = code[n, m]
    out = quant_gemv.int8_gemv(*on_device(x, codes, scale), quant_gemv.GemvConfig(block_n=16, block_k=256)).cpu()
    torch.testing.assert_close(out, codes.T.float(), rtol=0, atol=0)


def test_int4_magic_conversion_covers_every_code_and_zero_point():
    """Every code 0..15 against every zero point 0..15 in every nibble: (q - z) * s exactly."""
    K, N, group = 16, 128, 16
    q = torch.arange(16).repeat(N, 1).T.contiguous()  # [K, N]: row k holds code k
    z = torch.arange(N).remainder(16).reshape(1, N)  # column n has zero point n % 16, in all 8 nibble places
    qweight, qzeros = qz.pack_int4_awq(q), qz.pack_int4_awq(z)
    scales = torch.full((1, N), 0.5, dtype=torch.float16)
    x = torch.eye(K)
    out = quant_gemv.int4_gemv(*on_device(x, qweight, qzeros, scales), group, quant_gemv.GemvConfig(block_n=32)).cpu()
    torch.testing.assert_close(out, (q - z).float() * 0.5, rtol=0, atol=0)


def test_gemv_half_precision_and_strided_input():
    """bf16 in and out within bf16 rounding of the float32 reference; a strided x (a column slice) is read correctly."""
    w, x_wide = weight_and_input(64, 256, 2, seed=3)
    x = x_wide.to(torch.bfloat16)
    qweight, qzeros, scales = qz.quantize_int4(w, 64)
    ref4 = x.float() @ qz.dequantize_int4(qweight, qzeros, scales, 64).T
    out = quant_gemv.int4_gemv(*on_device(x, qweight, qzeros, scales), 64).cpu()
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref4, rtol=2e-2, atol=2e-2)
    q8, s8 = qz.quantize_int8(w[:, :128])
    strided = torch.randn(2, 300)[:, 10:138]  # row stride 300
    out8 = quant_gemv.int8_gemv(*on_device(strided, q8, s8)).cpu()
    torch.testing.assert_close(out8, strided @ qz.dequantize_int8(q8, s8).T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
def test_split_k_sums_are_deterministic(fused):
    """The split-K partial sums are added in a fixed order (by a second kernel, or by the last program of a
    tile): two calls give the same bits, and the tile counters are back at zero after each call."""
    w, x = weight_and_input(48, 256, 2, seed=5)
    qweight, qzeros, scales = on_device(*qz.quantize_int4(w, 32))
    cfg = quant_gemv.GemvConfig(block_n=16, block_k=32, splits=4, fused_sum=fused)
    first = quant_gemv.int4_gemv(x.to(DEVICE), qweight, qzeros, scales, 32, cfg)
    assert torch.equal(first, quant_gemv.int4_gemv(x.to(DEVICE), qweight, qzeros, scales, 32, cfg))
    torch.testing.assert_close(first.cpu(), x @ qz.dequantize_int4(*[t.cpu() for t in (qweight, qzeros, scales)], 32).T,
                               rtol=1e-4, atol=1e-4)
    if fused:
        assert quant_gemv._COUNTERS[str(first.device)].count_nonzero() == 0


def test_gemv_rejects_bad_groups_and_tiles():
    """Clear errors: a group size that does not divide K, a block_n that is not a multiple of 8."""
    w, x = weight_and_input(16, 64, 1, seed=1)
    qweight, qzeros, scales = qz.quantize_int4(w, 32)
    with pytest.raises(ValueError, match="group size"):
        quant_gemv.int4_gemv(x, qweight, qzeros, scales, 48)
    with pytest.raises(ValueError, match="block_n"):
        quant_gemv.int4_gemv(x, qweight, qzeros, scales, 32, quant_gemv.GemvConfig(block_n=12))


def test_dispatch_sends_decode_rows_to_the_gemv(monkeypatch):
    """int4_linear / int8_linear: a few rows run the GEMV, many rows the lesson's tl.dot kernels (untuned on the CPU)."""
    calls = []
    for name in ("int4_gemv", "int8_gemv"):
        real = getattr(quant_gemv, name)
        monkeypatch.setattr(quant_gemv, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for name in ("int4_matmul", "int8_matmul"):
        real = getattr(quant_kernels, name)
        monkeypatch.setattr(quant_kernels, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: False)
    w = weight_and_input(32, 128, 1, seed=2)[0]
    q4 = on_device(*qz.quantize_int4(w, 64))
    q8 = on_device(*qz.quantize_int8(w))
    for rows, expected in ((1, ["int4_gemv", "int8_gemv"]), (quant_gemv.GEMV_MAX_M + 1, ["int4_matmul", "int8_matmul"])):
        calls.clear()
        x = torch.randn(rows, 128).to(DEVICE)
        torch.testing.assert_close(quant_gemv.int4_linear(x, *q4, 64).cpu(),
                                   x.cpu() @ qz.dequantize_int4(*[t.cpu() for t in q4], 64).T, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(quant_gemv.int8_linear(x, *q8).cpu(),
                                   x.cpu() @ qz.dequantize_int8(*[t.cpu() for t in q8]).T, rtol=1e-4, atol=1e-4)
        assert calls == expected


def test_quantized_linear_triton_backend_decodes_with_the_gemv(monkeypatch):
    """QuantizedLinear(backend="triton") on one token row goes through quant_gemv.int4_linear and gets the right answer."""
    from aios.layers.linear import RowParallelLinear

    seen = []
    real = quant_gemv.int4_linear
    monkeypatch.setattr(quant_gemv, "int4_linear", lambda *a: seen.append(a[0].shape) or real(*a))
    float_layer = RowParallelLinear(128, 64)
    w = weight_and_input(64, 128, 1, seed=4)[0]
    float_layer.weight.data.copy_(w)
    model = torch.nn.Module()
    model.proj, model.fused_layers = float_layer, True
    qz.quantize_model(model, qz.QuantSpec("int4", group_size=64), backend="triton")
    layer = model.proj.to(DEVICE)
    x = torch.randn(1, 128).to(DEVICE)
    torch.testing.assert_close(layer(x).cpu(), x.cpu() @ layer.dequantized_weight().cpu().T, rtol=1e-4, atol=1e-4)
    assert seen == [(1, 128)]


def test_first_call_tuning_keeps_the_fastest_correct_kernel(monkeypatch):
    """The tuner times the tl.dot kernel and each candidate once per shape, drops candidates that fail or
    disagree with the tl.dot kernel's output, keeps the fastest, and reuses the choice for later calls."""
    good, wrong, broken = (quant_gemv.GemvConfig(block_n=16), quant_gemv.GemvConfig(block_n=32),
                           quant_gemv.GemvConfig(block_n=64))
    fake_us = {"dot": 50.0, good.label: 20.0, wrong.label: 5.0}
    timed = []

    def fake_time(fn, flush, reps=10):
        label = fn().label
        timed.append(label)
        return fake_us[label]

    monkeypatch.setattr(quant_gemv, "_time_us", fake_time)
    monkeypatch.setattr(quant_gemv, "autotune_enabled", lambda x: True)
    monkeypatch.setattr(quant_gemv, "_CHOICES", {})
    monkeypatch.setattr(quant_gemv, "TUNING_LOG", [])
    monkeypatch.setattr(torch, "empty", lambda *a, **k: torch.zeros(1))  # no 128 MB flush buffer on the CPU
    answer = torch.ones(1, 8)

    def output(label, value):
        out = value.clone()
        out.label = label  # which kernel made it, for fake_time
        return out

    def run_dot():
        return output("dot", answer)

    def run_gemv(cfg):
        if cfg is broken:
            raise RuntimeError("out of resources")
        return output(cfg.label, answer * (2 if cfg is wrong else 1))

    x = torch.zeros(1, 4)
    for _ in range(2):
        choice = quant_gemv._choose("int4", x, 8, run_dot, run_gemv, (good, wrong, broken), good)
        assert choice is good
    assert timed == ["dot", good.label]  # the wrong one is never timed, the second call is not tuned again
    (entry,) = quant_gemv.TUNING_LOG
    assert entry["choice"] == good.label and entry["us"][wrong.label] is None and entry["us"][broken.label] is None
    fake_us["dot"] = 10.0
    assert quant_gemv._choose("int4", torch.zeros(2, 4), 8, run_dot, run_gemv, (good,), good) == quant_gemv.DOT
    assert quant_gemv._choose("int4", torch.zeros(quant_gemv.GEMV_MAX_M + 1, 4), 8, run_dot, run_gemv, (good,),
                              good) == quant_gemv.DOT


# ------------------------------------------------------------------ GPU: Qwen3-8B shapes

SHAPES_8B = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 24576, 4096), ("down", 4096, 12288)]


@pytest.mark.gpu
@pytest.mark.parametrize("name,N,K", SHAPES_8B)
@pytest.mark.parametrize("tokens", [1, 8])
def test_gemv_at_8b_shapes_in_bf16(name, N, K, tokens):
    """Every GEMV candidate setting (and the dispatcher, tuned) equals the float32 x @ dequantized(W).T within bf16 rounding."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(N, K, device="cuda", generator=gen) * 0.02
    x = torch.randn(tokens, K, device="cuda", generator=gen).to(torch.bfloat16)
    q4, z4, s4 = qz.quantize_int4(w, 128)
    q8, s8 = qz.quantize_int8(w)
    ref4 = x.float() @ qz.dequantize_int4(q4, z4, s4, 128).T
    ref8 = x.float() @ qz.dequantize_int8(q8, s8).T
    for cfg in quant_gemv.INT4_CANDIDATES + quant_gemv.INT4_SWEEP_EXTRA:
        out = quant_gemv.int4_gemv(x, q4, z4, s4, 128, cfg).float()
        assert (out - ref4).abs().max() <= 1e-2 * ref4.abs().max(), cfg.label
    for cfg in quant_gemv.INT8_CANDIDATES + quant_gemv.INT8_SWEEP_EXTRA:
        out = quant_gemv.int8_gemv(x, q8, s8, cfg).float()
        assert (out - ref8).abs().max() <= 1e-2 * ref8.abs().max(), cfg.label
    assert (quant_gemv.int4_linear(x, q4, z4, s4, 128).float() - ref4).abs().max() <= 1e-2 * ref4.abs().max()
    assert (quant_gemv.int8_linear(x, q8, s8).float() - ref8).abs().max() <= 1e-2 * ref8.abs().max()


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_gemv_replays_in_a_cuda_graph(fused):
    """A captured GEMV (split-K, partial sums added by a second kernel or by each tile's last program) gives the
    eager result on every replay with new inputs, and leaves the tile counters at zero."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(4096, 4096, device="cuda", generator=gen) * 0.02
    q4, z4, s4 = qz.quantize_int4(w, 128)
    q8, s8 = qz.quantize_int8(w)
    x = torch.randn(1, 4096, device="cuda", generator=gen).to(torch.bfloat16)
    cfg4 = quant_gemv.GemvConfig(block_n=1024, block_k=16, splits=8, fused_sum=fused)
    cfg8 = quant_gemv.GemvConfig(block_n=128, block_k=128, splits=8, fused_sum=fused)

    def both():
        return quant_gemv.int4_gemv(x, q4, z4, s4, 128, cfg4), quant_gemv.int8_gemv(x, q8, s8, cfg8)

    both()  # compile, and allocate the counters outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out4, out8 = both()
    for seed in range(3):
        x.copy_(torch.randn(1, 4096, device="cuda", generator=gen.manual_seed(seed)).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        eager4, eager8 = both()
        assert torch.equal(out4, eager4) and torch.equal(out8, eager8)
    if fused:
        assert quant_gemv._COUNTERS[str(x.device)].count_nonzero() == 0
